"""Rebuild the embedded model ``lazarus:tiny-math`` from nothing, with Lazarus's own tools.

    python -m lazarus.embedded.build_tiny_math --output tiny-math [--work build-tiny-math]

1. Text: arithmetic problems from :mod:`lazarus.data.math` (seed ``DATA_SEED``), minus every question
   that ``lazarus data generate math --seed 0`` makes for any ``--count`` up to ``HELD_OUT_COUNT``
   (so the usual evaluation and SFT data stay unseen), written as ``{"text": ...}`` records:
   worked equations as plain text, question/answer pairs, a little English. Questions phrased
   "Compute ..." or "Find the value of ..." are answered without the generator's final "The
   answer is N." sentence (the other phrasings with it): the pretrained model then answers in the
   generator's format for only part of the prompts, which leaves SFT something visible to teach.
2. A byte-level BPE tokenizer (``lazarus.tokenizer.train_tokenizer``, digits split) on that text.
3. A randomly initialised Llama (``lazarus.models.create.random_weights``), pretrained with the
   ``sft`` trainer on the text records with every weight trainable (embeddings and head too).
4. Weights stored in float16; greedy accuracy on the math generator's test prompts (``--seed 0
   --count 2000``: 200 prompts) is measured and written to ``lazarus.json`` with the data hash,
   the training settings and this command.

Fixed seeds throughout; the same mlx version on the same kind of machine gives the same weights.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import shutil
import sys
import time
from pathlib import Path

DATA_SEED = 1234
HELD_OUT_COUNT = 10_000  # questions of `lazarus data generate math --seed 0 --count N<=10000` are left out
PROBLEMS = 240_000
QA_FRACTION = 0.5  # of the problems, asked as question + answer; the rest become plain equation text
#: questions asked this way are answered without "The answer is N." in pretraining
NO_ANSWER_SENTENCE = ("Compute ", "Find the value of ")
EQUATIONS_PER_DOC = 4
VOCAB_SIZE = 512
MAX_SEQ_LENGTH = 128
STORE_DTYPE = "float16"

CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "vocab_size": VOCAB_SIZE,
    "hidden_size": 192,
    "intermediate_size": 576,
    "num_hidden_layers": 4,
    "num_attention_heads": 3,
    "num_key_value_heads": 3,
    "head_dim": 64,
    "hidden_act": "silu",
    "max_position_embeddings": 256,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "attention_bias": False,
    "mlp_bias": False,
    "tie_word_embeddings": True,
}

TRAINING = {
    "fine_tune_type": "full",
    "num_layers": -1,
    "learning_rate": 2e-3,
    "lr_schedule": "cosine",
    "warmup_steps": 100,
    "min_learning_rate": 1e-4,
    "weight_decay": 0.01,
    "batch_size": 64,
    "max_steps": 10_000,
    "max_seq_length": MAX_SEQ_LENGTH,
    "mask_prompt": False,
    "seed": 0,
    "log_interval": 50,
    "eval_interval": 1000,
    "eval_batches": 4,
    "save_interval": 2000,
    "keep_checkpoints": 1,
}


# -- 1. text ---------------------------------------------------------------------------------------
def _question_key(problem) -> str:
    return problem.prompt if problem.kind == "word" else problem.expression


def _worked_steps(problem) -> str:
    """The completion without its final "The answer is N." sentence."""
    from lazarus.data.math import format_answer

    return problem.completion.removesuffix(" " + format_answer(problem.answer)).strip()


def plain_text_lines() -> list[str]:
    """A little English (the tokenizer's embedded sentences), so the model is not numbers only."""
    from lazarus.tokenizer import _SENTENCES

    return [line for line in _SENTENCES.splitlines() if line.strip()]


def pretraining_records(seed: int = DATA_SEED, count: int = PROBLEMS) -> list[dict]:
    """The pretraining corpus as ``{"text": ...}`` records, shuffled; deterministic for a seed."""
    from lazarus.data import math

    held_out = {_question_key(p) for p in math.generate(HELD_OUT_COUNT, seed=0)}
    problems = [p for p in math.generate(count, seed=seed) if _question_key(p) not in held_out]
    rng = random.Random(seed)
    records, equations = [], []
    for problem in problems:
        if rng.random() < QA_FRACTION:
            bare = problem.prompt.startswith(NO_ANSWER_SENTENCE)
            answer = " " + _worked_steps(problem) if bare else problem.completion
            records.append({"text": problem.prompt + answer})
            continue
        # word problems keep their story: a statement followed by its equation
        line = _worked_steps(problem)
        if problem.kind == "word":
            line = problem.prompt.rsplit(". ", 1)[0] + ". " + line
        equations.append(line)
        if len(equations) == EQUATIONS_PER_DOC:
            records.append({"text": " ".join(equations)})
            equations = []
    sentences = plain_text_lines()
    for _ in range(len(records) // 20):  # about 5% plain English, two sentences per record
        records.append({"text": " ".join(rng.sample(sentences, 2))})
    rng.shuffle(records)
    return records


def write_corpus(work: Path, problems: int = PROBLEMS) -> tuple[Path, str]:
    """Write ``work/pretrain/{train,valid}.jsonl``; returns the directory and the data hash."""
    records = pretraining_records(count=problems)
    valid = records[:500]
    train = records[500:]
    out = work / "pretrain"
    out.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    for name, rows in (("train", train), ("valid", valid)):
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        (out / f"{name}.jsonl").write_text(text, encoding="utf-8")
        digest.update(text.encode())
    return out, digest.hexdigest()


# -- 2-3. tokenizer, random model, pretraining -----------------------------------------------------
def random_checkpoint(work: Path, corpus: Path) -> Path:
    """A random-weight Llama in HF layout with a tokenizer trained on the corpus."""
    import mlx.core as mx

    from lazarus.models.create import random_weights
    from lazarus.plugins import get
    from lazarus.tokenizer import train_tokenizer

    out = work / "init"
    if out.exists():
        shutil.rmtree(out)
    lines = [json.loads(line)["text"] for line in (corpus / "train.jsonl").read_text().splitlines()[:20_000]]
    tokenizer = train_tokenizer(out, vocab_size=VOCAB_SIZE, corpus=lines + plain_text_lines(),
                                model_max_length=MAX_SEQ_LENGTH * 2, split_digits=True)
    special = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
               "pad_token_id": tokenizer.pad_token_id}
    config = {**CONFIG, **special, "torch_dtype": "float32"}
    family = get("family", "llama").load()
    model = family.Model(family.ModelArgs.from_hf_config(config))
    mx.save_safetensors(str(out / "model.safetensors"), random_weights(model, seed=0), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out / "generation_config.json").write_text(json.dumps(special, indent=2) + "\n")
    return out


def pretrainer_class():
    """The ``sft`` trainer with every weight trainable: ``full`` alone trains only the blocks."""
    from lazarus.plugins import get

    sft = get("trainer", "sft").load()

    class Pretrainer(sft):
        def apply_adapter(self) -> None:
            super().apply_adapter()
            self.model.unfreeze()  # embeddings, final norm and (tied) head learn too
            self._count_trainable()

    return Pretrainer


def pretrain(init: Path, corpus: Path, work: Path, settings: dict) -> Path:
    trainer_cls = pretrainer_class()
    config = trainer_cls.config_class(model=str(init), data=str(corpus), output=str(work / "pretrained"),
                                      overwrite=True, **settings)
    trainer_cls(config).train()
    return work / "pretrained"


# -- 4. store and measure --------------------------------------------------------------------------
def store(trained: Path, init: Path, output: Path) -> None:
    """Copy the trained checkpoint to ``output`` with float16 weights and the tokenizer files."""
    import mlx.core as mx

    if output.exists():
        shutil.rmtree(output)
    output.mkdir(parents=True)
    weights = mx.load(str(trained / "model.safetensors"))
    weights = {k: v.astype(getattr(mx, STORE_DTYPE)) for k, v in sorted(weights.items())}
    mx.save_safetensors(str(output / "model.safetensors"), weights, metadata={"format": "pt"})
    config = json.loads((init / "config.json").read_text())
    config["torch_dtype"] = STORE_DTYPE
    (output / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    for name in ("generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(init / name, output / name)


def math_eval_data(work: Path) -> Path:
    """``lazarus data generate math --count 2000 --seed 0`` into ``work/math``."""
    from lazarus.data import math

    out = work / "math"
    math.write_math_data(math.generate(2000, seed=0), out, force=True)
    return out


def greedy_accuracy(model_dir: str | Path, prompts_file: Path, adapter: str | Path | None = None,
                    batch: int = 50) -> dict:
    """Exact-answer accuracy of greedy decoding over a prompts JSONL, overall and per kind."""
    from lazarus.data.math import extract_answer
    from lazarus.generate import batch_generate
    from lazarus.loader import load_model

    model, tokenizer, _ = load_model(model_dir, adapter_path=adapter)
    rows = [json.loads(line) for line in Path(prompts_file).read_text().splitlines() if line.strip()]
    correct, formatted, by_kind = 0, 0, {}
    for start in range(0, len(rows), batch):
        chunk = rows[start:start + batch]
        results = batch_generate(model, tokenizer, [r["prompt"] for r in chunk], max_tokens=48)
        for row, result in zip(chunk, results, strict=True):
            answer = extract_answer(result.text)
            ok = answer is not None and answer == row["answer"]
            correct += ok
            formatted += answer is not None
            kind = by_kind.setdefault(row["kind"], [0, 0])
            kind[0] += ok
            kind[1] += 1
    return {"accuracy": correct / len(rows), "answered": formatted / len(rows), "prompts": len(rows),
            "by_kind": {k: round(c / n, 3) for k, (c, n) in sorted(by_kind.items())}}


def _machine() -> str:
    import platform

    import mlx.core as mx

    return f"{mx.default_device()}, {platform.system()} {platform.machine()}, {platform.python_version()}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=Path(__file__).resolve().parent / "tiny-math",
                        help="where the finished model goes (default: the packaged directory)")
    parser.add_argument("--work", type=Path, default=Path("build-tiny-math"),
                        help="scratch directory: data, the random start, training checkpoints")
    parser.add_argument("--max-steps", type=int, default=None,
                        help=f"training steps (default {TRAINING['max_steps']})")
    parser.add_argument("--no-compile", action="store_true", help="train without mx.compile")
    parser.add_argument("--problems", type=int, default=PROBLEMS,
                        help=f"math problems generated for the corpus (default {PROBLEMS})")
    args = parser.parse_args(argv)

    from lazarus import provenance

    started = time.time()
    args.work.mkdir(parents=True, exist_ok=True)
    corpus, data_hash = write_corpus(args.work, args.problems)
    init = random_checkpoint(args.work, corpus)
    settings = {**TRAINING, **({"max_steps": args.max_steps} if args.max_steps else {}),
                **({"compile": False} if args.no_compile else {})}
    trained = pretrain(init, corpus, args.work, settings)
    train_seconds = time.time() - started
    store(trained, init, args.output)
    math_dir = math_eval_data(args.work)
    accuracy = greedy_accuracy(args.output, math_dir / "prompts" / "test.jsonl")
    print(json.dumps(accuracy, indent=2))
    rows = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if r.get("split") == "eval"]
    provenance.write(args.output, provenance.collect(
        config=args.output / "config.json", created_by="lazarus.embedded.build_tiny_math",
        model_family="llama",
        command="python -m lazarus.embedded.build_tiny_math " + " ".join(sys.argv[1:] if argv is None else argv),
        data={"generator": "lazarus.data.math", "seed": DATA_SEED, "problems": args.problems,
              "held_out": f"every question of `lazarus data generate math --seed 0 --count {HELD_OUT_COUNT}`",
              "qa_fraction": QA_FRACTION, "answered_without_answer_sentence": list(NO_ANSWER_SENTENCE),
              "train_records": sum(1 for _ in (corpus / "train.jsonl").open()),
              "sha256": data_hash},
        training={**settings, "trainer": "sft (every weight trainable)",
                  "initial_weights": "random_weights(seed=0)"},
        eval_loss={"first": evals[0]["loss"] if evals else None, "last": evals[-1]["loss"] if evals else None},
        build_seconds=round(train_seconds),
        built_on=_machine(),
        greedy_accuracy={"data": "lazarus data generate math --count 2000 --seed 0: prompts/test.jsonl",
                         "max_tokens": 48, **accuracy},
        files={p.name: provenance.sha256_file(p) for p in sorted(args.output.iterdir()) if p.is_file()},
    ))
    print(f"wrote {args.output} in {time.time() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
