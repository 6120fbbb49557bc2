"""Training a tiny byte-level BPE tokenizer offline (``lazarus models create``, the test suite, the
embedded model's build): the embedded corpus, the ChatML template and :func:`train_tokenizer`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from lazarus.errors import LazarusError

if TYPE_CHECKING:  # pragma: no cover
    from lazarus.tokenizer import Tokenizer

# -- training a tiny tokenizer ---------------------------------------------------------------------
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", "<|im_start|>", "<|im_end|>"]

#: ChatML-style template: system/user/assistant turns; a BOS first; an open assistant turn on request
CHATML_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant', 'tool'] %}"
    "{{ raise_exception('unknown role: ' + message['role']) }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

_SENTENCES = """\
The quick brown fox jumps over the lazy dog.
A small model can still learn the shape of a sentence.
She opened the window and the cold air filled the room.
Rivers carry sand from the mountains down to the sea.
He wrote the numbers on the board and asked the class to add them.
The library closes at six, so we should leave before then.
Bread rises because yeast turns sugar into gas.
Every morning the baker lights the oven before sunrise.
The train was late, but nobody seemed to mind.
Water boils at one hundred degrees at sea level.
My grandmother keeps her recipes in a blue notebook.
They planted tomatoes, beans and three rows of carrots.
If you heat ice, it melts; if you cool steam, it condenses.
The committee will meet again on Thursday afternoon.
Light from the sun takes about eight minutes to reach the earth.
Please write your name at the top of the page.
The cat slept on the warm stones by the door.
Learning to play the violin takes patience and practice.
A good question is often more useful than a quick answer.
The museum has a room full of old clocks and maps.
We counted the birds: there were twelve sparrows and four crows.
The road turns left after the bridge and climbs the hill.
Children laughed as the kite rose above the trees.
Numbers can be even or odd, prime or composite.
Some people prefer tea, while others drink coffee all day.
The ship's captain checked the weather before leaving port.
Snow covered the fields and the village was very quiet.
She solved the puzzle in less than ten minutes.
Doctors wash their hands carefully between patients.
The answer is correct, but the explanation is missing a step.
Hello! How are you today? I am fine, thank you.
What time is it? It is half past three.
Can you help me with my homework? Of course, show me the question.
The assistant answered politely and kept the reply short.
Tell me a story about a dragon who loved to read books.
Once upon a time, a curious robot wanted to understand the stars.
Summarise the text in one sentence, please.
Translate "good morning" into French: bonjour.
The café served crème brûlée and naïve jokes — déjà vu, señor!
Temperatures reached 35°C; the forecast said “sunny” all week.
"""


def _arithmetic_lines() -> list[str]:
    """Deterministic arithmetic questions and answers (no RNG, so training is reproducible)."""
    lines = []
    for i in range(60):
        a, b = (7 * i + 3) % 50, (11 * i + 5) % 40
        op = "+-*"[i % 3]
        answer = a + b if op == "+" else a - b if op == "-" else a * b
        lines.append(f"What is {a} {op} {b}? {answer}")
        if i % 4 == 0:
            lines.append(f"Q: {a} {op} {b} = ? A: {answer}")
    lines += [f"{n} + {n} = {2 * n}" for n in range(0, 30, 3)]
    return lines


def default_corpus() -> list[str]:
    """The embedded training corpus: plain English sentences, chat phrases and arithmetic lines."""
    return [line for line in _SENTENCES.splitlines() if line] + _arithmetic_lines()


def _write_atomic(path: Path, text: str) -> None:
    from lazarus.io import write_text

    write_text(path, text)


def _fill_vocab(backend, vocab_size: int):
    """Pad the vocabulary to exactly ``vocab_size`` with ``<reserved_N>`` entries.

    A small corpus runs out of merges long before a large ``vocab_size``; checkpoints still want the
    tokenizer to cover every id of the model's embedding (as Llama 3's reserved tokens do). The
    fillers are ordinary vocabulary entries: never produced by encoding, decoded as their name.
    """
    from tokenizers import Tokenizer as BackendTokenizer

    have = backend.get_vocab_size(with_added_tokens=True)
    if have >= vocab_size:
        return backend
    data = json.loads(backend.to_str())
    vocab = data["model"]["vocab"]
    for i in range(vocab_size - have):
        vocab[f"<reserved_{i}>"] = have + i
    return BackendTokenizer.from_str(json.dumps(data))


def train_tokenizer(output_dir: str | os.PathLike, vocab_size: int = 512,
                    corpus: Iterable[str] | None = None, model_max_length: int = 4096,
                    split_digits: bool = False) -> Tokenizer:
    """Train a byte-level BPE tokenizer offline and write it to ``output_dir`` in HF layout.

    ``corpus``: lines of text (default: :func:`default_corpus`). ``vocab_size`` is exact: it counts
    the special tokens ``<unk> <s> </s> <pad> <|im_start|> <|im_end|>`` (ids 0-5), the 256 byte
    symbols and the learned merges, and is topped up with ``<reserved_N>`` entries when the corpus
    has too few merges to offer. ``split_digits``: every digit is its own token (numbers are
    never merged), which lets a small model learn arithmetic digit by digit.
    Writes ``tokenizer.json`` (BOS added by its post-processor), ``tokenizer_config.json`` (special
    tokens, ``add_bos_token``, ``model_max_length``, a ChatML ``chat_template``) and
    ``special_tokens_map.json``; other files in ``output_dir`` are left alone. Each file is written
    to a temporary name first. Returns the loaded :class:`Tokenizer`. The files also load with
    transformers' ``PreTrainedTokenizerFast``.
    """
    from tokenizers import Tokenizer as BackendTokenizer
    from tokenizers import decoders, models, pre_tokenizers, processors, trainers

    minimum = 256 + len(SPECIAL_TOKENS)
    if vocab_size < minimum:
        raise LazarusError(f"vocab_size must be at least {minimum} (256 bytes + {len(SPECIAL_TOKENS)} "
                           f"special tokens), got {vocab_size}")
    lines = list(default_corpus() if corpus is None else corpus)
    if not any(line.strip() for line in lines):
        raise LazarusError("train_tokenizer: the corpus is empty; give some lines of text")

    backend = BackendTokenizer(models.BPE(unk_token=None))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.pre_tokenizer = (pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
                             if split_digits else byte_level)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    backend.train_from_iterator(lines, trainer=trainer, length=len(lines))
    backend = _fill_vocab(backend, vocab_size)
    bos_id = backend.token_to_id("<s>")
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos_id)])

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    added = {str(backend.token_to_id(tok)): {"content": tok, "lstrip": False, "normalized": False,
                                             "rstrip": False, "single_word": False, "special": True}
             for tok in SPECIAL_TOKENS}
    special_map = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>",
                   "additional_special_tokens": ["<|im_start|>", "<|im_end|>"]}
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "added_tokens_decoder": added,
              **special_map, "add_bos_token": True, "add_eos_token": False,
              "clean_up_tokenization_spaces": False, "model_max_length": model_max_length,
              "chat_template": CHATML_TEMPLATE}
    _write_atomic(out / "tokenizer.json", backend.to_str(pretty=True))
    _write_atomic(out / "tokenizer_config.json", json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    _write_atomic(out / "special_tokens_map.json", json.dumps(special_map, indent=2) + "\n")
    from lazarus.tokenizer import Tokenizer

    return Tokenizer.from_dir(out)
