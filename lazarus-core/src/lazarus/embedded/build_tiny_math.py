"""Rebuild the embedded model ``lazarus:tiny-math`` from nothing, with Lazarus's own tools.

    python -m lazarus.embedded.build_tiny_math --output tiny-math [--work build-tiny-math]

The model is built to know arithmetic as *equations* ("74 * 5 = 370.") without ever having been
taught to *answer questions*, so that SFT visibly unlocks what pretraining put in and RL sharpens it.

1. Text (``{"text": ...}`` records, fixed seed; :mod:`lazarus.embedded.tiny_math_data`):
   documents of worked equations in the number ranges of :mod:`lazarus.data.math` (every two-digit
   sum and difference, every one-digit-times-two-digit product and exact division, sampled two-step
   problems and word-problem stories each followed by its equation), and *exercise sheets*:
   questions in the generator's phrasings, one after the other, never followed by an answer. The
   held-out questions (the last fifth of ``lazarus data generate math --seed 0 --count N`` for the
   counts in ``HELD_OUT_COUNTS``: every valid and test split the quickstart and the docs use)
   appear in neither. Asked a question, the pretrained model writes another question; given
   ``74 * 5 =`` it writes the result.
2. A byte-level BPE tokenizer (``lazarus.tokenizer.train_tokenizer``, digits split) on that text.
3. A randomly initialised Llama (``lazarus.models.create.random_weights``), pretrained with the
   ``sft`` trainer on the text records with every weight trainable (embeddings and head too).
   ``--time-budget`` first times a few steps and lowers the step count to fit.
3b. Phase 2 (:func:`~lazarus.embedded.tiny_math_data.phase2_records`, ``PHASE2_TRAINING``: 100
   steps): documents where questions and *unrelated* equations mix, equations often followed by
   "The answer is N.", never a question by its own answer. Phase 1 alone ties arithmetic to equation-only documents so tightly that
   after a question the model stays in "next question" mode and a short SFT cannot reach its
   arithmetic; phase 2 keeps the model from answering questions but lets it compute after one.
   ``--continue-from DIR`` runs phase 2 alone from a phase-1 model (the shipped model was made
   that way: phase 1 on one GPU, phase 2 on a CPU; its ``lazarus.json`` records both).
4. Weights stored in float32 (14 MB). Measured on the quickstart's held-out test questions (``lazarus data
   generate math --count 2000 --seed 0``, its last 200): question accuracy counting a correct final
   number in any form (the answer sentence or an equation's result), answer-sentence format, and
   equation accuracy (the same problems given as ``EXPR =``), all written to ``lazarus.json`` with
   the data hash, the settings and this command.

Fixed seeds throughout; the same mlx version on the same kind of machine gives the same weights.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from lazarus.embedded.tiny_math_data import (
    DATA_SEED,
    DOCUMENTS,
    HELD_OUT_COUNTS,
    HELD_OUT_FRACTION,
    PHASE2_DOCUMENTS,
    PHASE2_SEED,
    SHEET_FRACTION,
    phase2_records,
    plain_text_lines,
    write_corpus,
    write_records,
)

VOCAB_SIZE = 512
MAX_SEQ_LENGTH = 128
STORE_DTYPE = "float32"  # float16 overflows in full fine-tuning and runs slower on CPUs

CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "vocab_size": VOCAB_SIZE,
    "hidden_size": 256,
    "intermediate_size": 768,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
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
    "warmup_steps": 200,
    "min_learning_rate": 5e-5,
    "weight_decay": 0.01,
    "batch_size": 128,
    "max_steps": 16_000,
    "max_seq_length": MAX_SEQ_LENGTH,
    "mask_prompt": False,
    "seed": 0,
    "log_interval": 100,
    "eval_interval": 2000,
    "eval_batches": 4,
    "save_interval": 0,
    "keep_checkpoints": 1,
}
PROBE_STEPS = 60

#: phase 2's training: 100 steps at a lower rate from the phase-1 model
PHASE2_TRAINING = {**TRAINING, "learning_rate": 5e-4, "warmup_steps": 10, "min_learning_rate": 5e-5,
                   "batch_size": 32, "max_steps": 100, "log_interval": 10, "eval_interval": 0,
                   "eval_batches": 2, "save_interval": 0}


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

    class Pretrainer(sft):  # type: ignore[misc, valid-type]  # (a base class found in the registry at run time)
        def apply_adapter(self) -> None:
            super().apply_adapter()
            self.model.unfreeze()  # embeddings, final norm and (tied) head learn too
            self._count_trainable()

    return Pretrainer


def pretrain(init: Path, corpus: Path, work: Path, settings: dict, name: str = "pretrained") -> Path:
    trainer_cls = pretrainer_class()
    config = trainer_cls.config_class(model=str(init), data=str(corpus), output=str(work / name),
                                      overwrite=True, **settings)
    trainer_cls(config).train()
    return work / name


def fit_steps(init: Path, corpus: Path, work: Path, settings: dict, budget: float) -> tuple[int, float]:
    """Time ``PROBE_STEPS`` steps (after the first logging window, which compiles) and return the
    step count that fits ``budget`` seconds of training (at most the configured one) and s/step."""
    probe = {**settings, "max_steps": PROBE_STEPS, "log_interval": PROBE_STEPS // 3, "eval_interval": 0,
             "warmup_steps": 10}
    out = pretrain(init, corpus, work, probe, name="probe")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r.get("split") == "train"][1:]
    seconds = sum(r["seconds"] for r in train) / max(1, PROBE_STEPS - PROBE_STEPS // 3)
    steps = int(budget / (seconds * 1.08 + 1e-9))  # a little margin for evals and logging
    return max(PROBE_STEPS, min(settings["max_steps"], steps)), seconds


# -- 4. store and measure --------------------------------------------------------------------------
def store(trained: Path, init: Path, output: Path) -> None:
    """Copy the trained checkpoint to ``output`` with float16 weights and the tokenizer files."""
    import mlx.core as mx

    if output.exists():
        shutil.rmtree(output)
    output.mkdir(parents=True)
    loaded = mx.load(str(trained / "model.safetensors"))
    assert isinstance(loaded, dict)  # a .safetensors file loads as {name: array}
    weights = {k: v.astype(getattr(mx, STORE_DTYPE)) for k, v in sorted(loaded.items())}
    mx.save_safetensors(str(output / "model.safetensors"), weights, metadata={"format": "pt"})
    config = json.loads((init / "config.json").read_text())
    config["torch_dtype"] = STORE_DTYPE
    (output / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    for name in ("generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(init / name, output / name)


#: the held-out questions measured: the quickstart's test split of `--count 2000 --seed 0`
EVAL_COUNT, EVAL_PROMPTS = 2000, 200


def held_out_problems() -> list:
    from lazarus.data import math

    return math.generate(EVAL_COUNT, seed=0)[-EVAL_PROMPTS:]


def equation_prompt(problem) -> str:
    """The problem as the start of an equation: ``"74 * 5 ="``, or a story's statement."""
    if problem.kind == "word":
        return problem.prompt.rsplit(". ", 1)[0] + "."
    return f"{problem.expression} ="


def _equation_result(text: str, kind: str) -> int | None:
    import re

    pattern = r"=\s*(-?\d+)" if kind == "word" else r"^\s*(-?\d+)"
    match = re.search(pattern, text)
    return int(match.group(1)) if match else None


def measure(model_dir: str | Path, problems: list, adapter: str | Path | None = None, batch: int = 50,
            max_tokens: int = 48) -> dict:
    """Greedy decoding on held-out problems: question accuracy (a correct final number in any form),
    the share answered with "The answer is N.", and equation accuracy, overall and per kind."""
    from lazarus.data.math import extract_answer, extract_final_number
    from lazarus.generation import batch_generate
    from lazarus.loader import load_model

    model, tokenizer, _ = load_model(model_dir, adapter_path=adapter)
    tallies: dict[str, dict[str, list[int]]] = {"question": {}, "equation": {}}
    formatted = 0
    samples: list[dict[str, str]] = []

    def tally(which: str, kind: str, ok: bool) -> None:
        cell = tallies[which].setdefault(kind, [0, 0])
        cell[0] += ok
        cell[1] += 1

    for start in range(0, len(problems), batch):
        chunk = problems[start:start + batch]
        asked = batch_generate(model, tokenizer, [p.prompt for p in chunk], max_tokens=max_tokens)
        stated = batch_generate(model, tokenizer, [equation_prompt(p) for p in chunk], max_tokens=16)
        for problem, answer, equation in zip(chunk, asked, stated, strict=True):
            tally("question", problem.kind, extract_final_number(answer.text) == problem.answer)
            tally("equation", problem.kind, _equation_result(equation.text, problem.kind) == problem.answer)
            formatted += extract_answer(answer.text) is not None
            if len(samples) < 6:
                samples.append({"prompt": problem.prompt, "answer": answer.text,
                                "equation_prompt": equation_prompt(problem), "equation": equation.text})

    def overall(which: str) -> float:
        cells = tallies[which].values()
        return round(sum(c for c, _ in cells) / max(1, sum(n for _, n in cells)), 3)

    return {"accuracy": overall("question"), "answered_with_answer_sentence": round(formatted / len(problems), 3),
            "equation_accuracy": overall("equation"), "prompts": len(problems),
            "by_kind": {k: round(c / n, 3) for k, (c, n) in sorted(tallies["question"].items())},
            "equation_by_kind": {k: round(c / n, 3) for k, (c, n) in sorted(tallies["equation"].items())},
            "samples": samples}


def _phase2_record(data_hash: str, **extra) -> dict:
    return {"data": {"seed": PHASE2_SEED, "documents": PHASE2_DOCUMENTS, "sha256": data_hash,
                     "what": "45% equation documents, 35% questions mixed with unrelated equations, 20% "
                             "exercise sheets; half the equations followed by 'The answer is N.'; no "
                             "question is followed by its own answer"},
            "training": {**PHASE2_TRAINING, "trainer": "sft (every weight trainable)"}, **extra}


def continue_build(args, trained: Path | None = None) -> int:
    """Phase 2 alone, from a phase-1 model (its record is kept, its measurements under
    ``phase1_greedy_accuracy``). ``trained``: a phase-2 run already made (only stored and measured)."""
    from lazarus import provenance

    started = time.time()
    source = args.continue_from
    phase1_record = json.loads((source / "lazarus.json").read_text())
    args.work.mkdir(parents=True, exist_ok=True)
    data_hash = write_records(args.work / "phase2-data", phase2_records())
    if trained is None:
        trained = pretrain(source, args.work / "phase2-data", args.work, PHASE2_TRAINING, name="phase2")
    seconds = time.time() - started
    store(trained, source, args.output)
    accuracy = measure(args.output, held_out_problems())
    print(json.dumps(accuracy, indent=2), flush=True)
    record = {k: v for k, v in phase1_record.items() if k not in ("files", "greedy_accuracy")}
    record["phase1_greedy_accuracy"] = phase1_record.get("greedy_accuracy")
    command = "python -m lazarus.embedded.build_tiny_math " + " ".join(args.argv)
    provenance.write(args.output, {
        **record,
        **{k: v for k, v in provenance.collect(config=args.output / "config.json").items()
           if k in ("created", "git_sha", "git_dirty", "mlx_version", "lazarus_version", "config_sha256")},
        "phase2": _phase2_record(data_hash, command=command, seconds=round(seconds), built_on=_machine()),
        "greedy_accuracy": {"data": phase1_record.get("greedy_accuracy", {}).get("data"),
                            "scoring": phase1_record.get("greedy_accuracy", {}).get("scoring"),
                            "max_tokens": 48, **accuracy},
        "files": {p.name: provenance.sha256_file(p) for p in sorted(args.output.iterdir()) if p.is_file()},
    })
    print(f"wrote {args.output} in {time.time() - started:.0f} s")
    return 0


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
    parser.add_argument("--time-budget", type=float, default=None, metavar="SECONDS",
                        help="time a few steps first and train at most this long (fewer steps if needed)")
    parser.add_argument("--no-compile", action="store_true", help="train without mx.compile")
    parser.add_argument("--documents", type=int, default=DOCUMENTS,
                        help=f"pretraining documents generated (default {DOCUMENTS})")
    parser.add_argument("--continue-from", type=Path, default=None, metavar="DIR",
                        help="run phase 2 only, from this phase-1 model (its lazarus.json is kept in the record)")
    args = parser.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else list(argv)
    if args.continue_from is not None:
        return continue_build(args)

    from lazarus import provenance

    started = time.time()
    args.work.mkdir(parents=True, exist_ok=True)
    corpus, data_hash = write_corpus(args.work, args.documents)
    print(f"corpus written in {time.time() - started:.0f} s", flush=True)
    init = random_checkpoint(args.work, corpus)
    settings = {**TRAINING, **({"max_steps": args.max_steps} if args.max_steps else {}),
                **({"compile": False} if args.no_compile else {})}
    timing = {}
    if args.time_budget:
        steps, per_step = fit_steps(init, corpus, args.work, settings, args.time_budget)
        timing = {"time_budget_seconds": args.time_budget, "seconds_per_step": round(per_step, 5),
                  "steps_fitted": steps}
        print(f"probe: {per_step * 1000:.1f} ms/step -> {steps} steps", flush=True)
        settings["max_steps"] = steps
    trained = pretrain(init, corpus, args.work, settings)
    phase1 = args.work / "phase1"
    store(trained, init, phase1)
    phase2_hash = write_records(args.work / "phase2-data", phase2_records())
    trained = pretrain(phase1, args.work / "phase2-data", args.work, PHASE2_TRAINING, name="phase2")
    train_seconds = time.time() - started
    store(trained, init, args.output)
    accuracy = measure(args.output, held_out_problems())
    print(json.dumps(accuracy, indent=2), flush=True)
    rows = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if r.get("split") == "eval"]
    provenance.write(args.output, provenance.collect(
        config=args.output / "config.json", created_by="lazarus.embedded.build_tiny_math",
        model_family="llama",
        command="python -m lazarus.embedded.build_tiny_math " + " ".join(sys.argv[1:] if argv is None else argv),
        data={"generator": "lazarus.embedded.build_tiny_math (problems of lazarus.data.math)",
              "seed": DATA_SEED, "documents": args.documents,
              "equation_documents": "every two-digit sum/difference, one-digit x two-digit product and exact "
                                    "division; sampled two-step problems (result or worked) and stories "
                                    "with their equation; three-digit +/- two-digit sums",
              "question_sheets": f"{SHEET_FRACTION:.0%} of documents: questions only, never answered",
              "held_out": f"the last {HELD_OUT_FRACTION:.0%} (valid + test) of `lazarus data generate math "
                          f"--seed 0 --count N` for N in {list(HELD_OUT_COUNTS)}",
              "train_records": sum(1 for _ in (corpus / "train.jsonl").open()),
              "sha256": data_hash},
        training={**settings, "trainer": "sft (every weight trainable)",
                  "initial_weights": "random_weights(seed=0)", **timing},
        phase2=_phase2_record(phase2_hash),
        eval_loss={"first": evals[0]["loss"] if evals else None, "last": evals[-1]["loss"] if evals else None},
        build_seconds=round(train_seconds),
        built_on=_machine(),
        greedy_accuracy={"data": f"held-out questions: the last {EVAL_PROMPTS} of `lazarus data generate math "
                                 f"--count {EVAL_COUNT} --seed 0` (the quickstart's test split)",
                         "scoring": "accuracy: the final number in any form (the 'The answer is N' sentence, "
                                    "else the last equation's result) equals the answer; equation_accuracy: "
                                    "the same problems given as 'EXPR =' (stories: their statement)",
                         "max_tokens": 48, **accuracy},
        files={p.name: provenance.sha256_file(p) for p in sorted(args.output.iterdir()) if p.is_file()},
    ))
    print(f"wrote {args.output} in {time.time() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
