"""Tokenizers in Hugging Face layout: encoding, decoding, chat templates, streaming detokenisation.

A :class:`Tokenizer` wraps a ``tokenizers.Tokenizer`` built from ``tokenizer.json`` and reads the
special tokens and the chat template from ``tokenizer_config.json`` (plus ``generation_config.json``
for extra end-of-sequence ids). Chat templates are jinja2, rendered in a sandbox with the same
conventions as Hugging Face transformers so that real checkpoints' templates work unchanged.

:func:`train_tokenizer` trains a small byte-level BPE tokenizer offline on an embedded corpus; the
test suite and ``lazarus models create`` use it to make tiny checkpoints in real HF layout.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from lazarus.errors import LazarusError

__all__ = ["StreamingDetokenizer", "Tokenizer", "train_tokenizer", "render_chat_template"]


# -- config helpers --------------------------------------------------------------------------------
def _read_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except json.JSONDecodeError as exc:
        raise LazarusError(f"{path}: not valid JSON (line {exc.lineno}): {exc.msg}; "
                           "fix or re-download the file") from None
    except OSError as exc:
        raise LazarusError(f"{path}: cannot read ({exc.strerror})") from None
    if not isinstance(data, dict):
        raise LazarusError(f"{path}: expected a JSON object at the top level")
    return data


def _token_text(value: Any) -> str | None:
    """A special token as written in tokenizer_config.json: a string or an AddedToken dict."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    return None


def _as_id_list(value: Any) -> list[int]:
    if value is None:
        return []
    if isinstance(value, int):
        return [value]
    if isinstance(value, (list, tuple)):
        return [v for v in value if isinstance(v, int)]
    return []


# -- chat templates --------------------------------------------------------------------------------
def _generation_block():
    """The ``{% generation %}...{% endgeneration %}`` tag some templates use to mark assistant text
    for training masks (a transformers extension); rendered here as its plain body."""
    from jinja2 import nodes
    from jinja2.ext import Extension

    class GenerationBlock(Extension):
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller):
            return caller()

    return GenerationBlock


def _template_environment():
    """A sandboxed jinja2 environment with the globals and filters HF chat templates expect."""
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        # HF's variant: keeps non-ASCII text readable and does not HTML-escape like jinja's own
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                          sort_keys=sort_keys)

    def strftime_now(fmt):
        return datetime.now().strftime(fmt)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=["jinja2.ext.loopcontrols", _generation_block()])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env


def render_chat_template(template: str, messages: Sequence[dict], *, add_generation_prompt: bool = True,
                         tools: list | None = None, **variables: Any) -> str:
    """Render a jinja2 chat ``template`` for ``messages`` (a list of ``{"role", "content"}`` dicts).

    ``variables`` are passed to the template as-is (``bos_token``, ``eos_token``, or template-specific
    switches such as ``enable_thinking``). Returns the prompt text. A template that rejects the
    messages (``raise_exception``) or fails to render raises :class:`LazarusError`.
    """
    import jinja2

    try:
        compiled = _template_environment().from_string(template)
        return compiled.render(messages=list(messages), add_generation_prompt=add_generation_prompt,
                               tools=tools, **variables)
    except jinja2.exceptions.TemplateSyntaxError as exc:
        raise LazarusError(f"chat template has a syntax error at line {exc.lineno}: {exc.message}") from None
    except jinja2.exceptions.TemplateError as exc:
        raise LazarusError(f"chat template rejected the messages: {exc}") from None


def _select_template(raw: Any, name: str | None, tools: list | None, source: str) -> str | None:
    """``chat_template`` may be a string or a list of ``{"name", "template"}``; pick one."""
    if raw is None:
        return None
    if isinstance(raw, str):
        if name not in (None, "default"):
            raise LazarusError(f"{source}: has a single chat template, no template named {name!r}")
        return raw
    if isinstance(raw, list):
        named = {t.get("name"): t.get("template") for t in raw if isinstance(t, dict)}
        if name is None:
            name = "tool_use" if tools and "tool_use" in named else "default"
        if name not in named:
            if name == "default" and len(named) == 1:
                return next(iter(named.values()))
            raise LazarusError(f"{source}: no chat template named {name!r}; "
                               f"available: {', '.join(str(n) for n in named)}")
        return named[name]
    raise LazarusError(f"{source}: chat_template must be a string or a list of named templates")


# -- the tokenizer ---------------------------------------------------------------------------------
class Tokenizer:
    """A Hugging Face tokenizer directory: ``tokenizer.json`` + ``tokenizer_config.json``.

    Attributes: ``bos_token``/``bos_token_id`` (None when the checkpoint has none), ``eos_token``,
    ``eos_token_ids`` (a set: the tokenizer's EOS plus every id in generation_config.json),
    ``pad_token_id``, ``vocab_size``, ``chat_template`` (None when the checkpoint has none),
    ``add_bos_token`` (whether ``encode`` prepends BOS), ``backend`` (the ``tokenizers.Tokenizer``).
    """

    def __init__(self, backend, config: dict | None = None, generation_config: dict | None = None,
                 source: str = "<tokenizer>"):
        self.backend = backend
        self.config = dict(config or {})
        self.source = source
        self._added_special_from_config()

        cfg = self.config
        self.bos_token = _token_text(cfg.get("bos_token"))
        self.eos_token = _token_text(cfg.get("eos_token"))
        self.pad_token = _token_text(cfg.get("pad_token"))
        self.unk_token = _token_text(cfg.get("unk_token"))
        self.bos_token_id = self._id_of(self.bos_token)
        eos_id = self._id_of(self.eos_token)
        self.pad_token_id = self._id_of(self.pad_token)
        self.unk_token_id = self._id_of(self.unk_token)

        gen = generation_config or {}
        if self.bos_token_id is None and isinstance(gen.get("bos_token_id"), int):
            self.bos_token_id = gen["bos_token_id"]
            self.bos_token = backend.id_to_token(self.bos_token_id)
        eos_ids = set(_as_id_list(gen.get("eos_token_id")))
        if eos_id is not None:
            eos_ids.add(eos_id)
        self.eos_token_ids: set[int] = eos_ids
        self.eos_token_id = eos_id if eos_id is not None else (min(eos_ids) if eos_ids else None)
        if self.eos_token is None and self.eos_token_id is not None:
            self.eos_token = backend.id_to_token(self.eos_token_id)
        if self.pad_token_id is None and isinstance(gen.get("pad_token_id"), int):
            self.pad_token_id = gen["pad_token_id"]

        # None: trust tokenizer.json's post-processor; True/False: the config overrides it
        self._add_bos_config = cfg.get("add_bos_token")
        self._add_eos_config = cfg.get("add_eos_token")
        self._raw_templates = cfg.get("chat_template")
        self.chat_template = (_select_template(self._raw_templates, None, None, source)
                              if self._raw_templates is not None else None)

    # -- construction --
    @classmethod
    def from_dir(cls, path: str | os.PathLike) -> Tokenizer:
        """Load the tokenizer of a model directory in Hugging Face layout."""
        from tokenizers import Tokenizer as BackendTokenizer

        path = Path(path)
        tok_file = path / "tokenizer.json"
        if not tok_file.is_file():
            hint = (" (it has only a SentencePiece tokenizer.model; convert the checkpoint with "
                    "transformers to get tokenizer.json)" if (path / "tokenizer.model").is_file() else "")
            raise LazarusError(f"{path}: no tokenizer.json{hint}")
        try:
            backend = BackendTokenizer.from_file(str(tok_file))
        except Exception as exc:  # the Rust side raises plain Exception for malformed files
            raise LazarusError(f"{tok_file}: cannot be loaded by `tokenizers`: {exc}") from None
        config = _read_json(path / "tokenizer_config.json") if (path / "tokenizer_config.json").is_file() else {}
        # newer checkpoints keep the template in its own file
        if "chat_template" not in config:
            if (path / "chat_template.jinja").is_file():
                config["chat_template"] = (path / "chat_template.jinja").read_text(encoding="utf-8")
            elif (path / "chat_template.json").is_file():
                config["chat_template"] = _read_json(path / "chat_template.json").get("chat_template")
        # some checkpoints only name special tokens in special_tokens_map.json
        if (path / "special_tokens_map.json").is_file():
            for key, value in _read_json(path / "special_tokens_map.json").items():
                config.setdefault(key, value)
        gen = _read_json(path / "generation_config.json") if (path / "generation_config.json").is_file() else {}
        return cls(backend, config, gen, source=str(path))

    def _added_special_from_config(self) -> None:
        """Register special tokens listed in added_tokens_decoder that tokenizer.json lacks."""
        from tokenizers import AddedToken

        missing = []
        for entry in (self.config.get("added_tokens_decoder") or {}).values():
            content = _token_text(entry)
            if content is not None and self.backend.token_to_id(content) is None:
                missing.append(AddedToken(content, special=bool(entry.get("special", True)),
                                          normalized=bool(entry.get("normalized", False))))
        if missing:
            self.backend.add_special_tokens(missing)

    def _id_of(self, token: str | None) -> int | None:
        return None if token is None else self.backend.token_to_id(token)

    # -- properties --
    @property
    def vocab_size(self) -> int:
        """Number of ids, added tokens included."""
        return self.backend.get_vocab_size(with_added_tokens=True)

    @property
    def add_bos_token(self) -> bool:
        """Whether ``encode(text)`` starts with BOS."""
        if self.bos_token_id is None:
            return False
        if self._add_bos_config is not None:
            return bool(self._add_bos_config)
        probe = self.backend.encode("a", add_special_tokens=True).ids
        return bool(probe) and probe[0] == self.bos_token_id

    # -- encode / decode --
    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of ``text``.

        With ``add_special_tokens`` the checkpoint's BOS/EOS rules apply (tokenizer.json's
        post-processor, overridden by ``add_bos_token``/``add_eos_token`` in tokenizer_config.json).
        Without it nothing is added: the ids of the text alone ("raw" mode). Special-token strings
        written in ``text`` (e.g. ``<|im_start|>``) are always read as those tokens.
        """
        if not isinstance(text, str):
            raise LazarusError(f"encode expects a string, got {type(text).__name__}")
        from lazarus.options import utf8_problem

        problem = utf8_problem(text)
        if problem:
            raise LazarusError(f"the text to encode is not UTF-8 ({problem}): {text[:40]!r}")
        if not add_special_tokens:
            return self.backend.encode(text, add_special_tokens=False).ids
        ids = self.backend.encode(text, add_special_tokens=True).ids
        if self._add_bos_config is None and self._add_eos_config is None:
            return ids
        bare = self.backend.encode(text, add_special_tokens=False).ids
        bos, eos = self.bos_token_id, self.eos_token_id
        # the post-processor only adds tokens around the text: ids = added prefix + bare + added suffix
        # (so a "<s>" written in the text is the text's own token, as in transformers)
        extra = len(ids) - len(bare)
        prefix = next((p for p in range(extra + 1) if ids[p:p + len(bare)] == bare), 0) if bare else (
            extra if ids[:1] == [bos] else 0)
        post_added_bos = prefix > 0 and ids[0] == bos
        post_added_eos = extra - prefix > 0 and ids[-1] == eos
        if self._add_bos_config is not None and bos is not None:
            if self._add_bos_config and not post_added_bos:
                ids = [bos, *ids]
            elif not self._add_bos_config and post_added_bos:
                ids = ids[1:]
        if self._add_eos_config is not None and eos is not None:
            if self._add_eos_config and not post_added_eos:
                ids = [*ids, eos]
            elif not self._add_eos_config and post_added_eos:
                ids = ids[:-1]
        return ids

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        """Text of ``ids``; special tokens are left out unless ``skip_special_tokens=False``."""
        return self.backend.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self.backend.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self.backend.id_to_token(int(token_id))

    # -- chat --
    def has_chat_template(self) -> bool:
        return self.chat_template is not None

    def apply_chat_template(self, messages: Sequence[dict], add_generation_prompt: bool = True,
                            tools: list | None = None, template_name: str | None = None,
                            **extra: Any) -> str:
        """Render the checkpoint's chat template for ``messages``; returns the prompt text.

        ``messages`` is a list of ``{"role": ..., "content": ...}``. ``tools`` (JSON-schema tool
        descriptions) and ``extra`` keywords are passed to the template. Encode the result with
        ``encode(text, add_special_tokens=False)`` (or use :meth:`encode_chat`): templates write
        their own BOS. Raises :class:`LazarusError` when the checkpoint has no chat template.
        """
        if self._raw_templates is None:
            raise LazarusError(f"{self.source}: the tokenizer has no chat template (no chat_template in "
                               "tokenizer_config.json); drop --chat and write the prompt yourself")
        template = _select_template(self._raw_templates, template_name, tools, self.source)
        for i, message in enumerate(messages):
            if not isinstance(message, dict) or "role" not in message:
                raise LazarusError(f"chat message {i} must be a dict with 'role' and 'content'")
        variables = {key: _token_text(self.config.get(key)) for key in
                     ("bos_token", "eos_token", "pad_token", "unk_token")}
        for key, value in self.config.items():
            if key.endswith("_token") and key not in variables and _token_text(value) is not None:
                variables[key] = _token_text(value)
        variables.update(extra)
        return render_chat_template(template, messages, add_generation_prompt=add_generation_prompt,
                                    tools=tools, **variables)

    def encode_chat(self, messages: Sequence[dict], add_generation_prompt: bool = True,
                    tools: list | None = None, **extra: Any) -> list[int]:
        """Ids of the rendered chat prompt (the template's own special tokens, none added twice)."""
        text = self.apply_chat_template(messages, add_generation_prompt=add_generation_prompt,
                                        tools=tools, **extra)
        return self.encode(text, add_special_tokens=False)

    def detokenizer(self, skip_special_tokens: bool = True) -> StreamingDetokenizer:
        """A fresh :class:`StreamingDetokenizer` for one generated sequence."""
        return StreamingDetokenizer(self, skip_special_tokens=skip_special_tokens)

    def __repr__(self) -> str:
        return (f"Tokenizer({self.source!r}, vocab_size={self.vocab_size}, bos={self.bos_token!r}, "
                f"eos_ids={sorted(self.eos_token_ids)}, chat_template={self.chat_template is not None})")


class StreamingDetokenizer:
    """Turns a stream of token ids into text pieces as soon as they are stable.

    Decoding tokens one at a time is wrong for byte-level BPE (one character may span tokens, so a
    lone token decodes to U+FFFD) and for SentencePiece (a leading "▁" is dropped at the start of a
    decode). So this decodes a short window of recent tokens that starts one token before the
    unreleased ones; the text past the already-released part is emitted once it no longer ends in
    an incomplete character. ``add(id)`` returns the new text (possibly ""), ``finish()`` the rest.
    The concatenation of all pieces equals ``tokenizer.decode(all_ids)``.
    """

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = True):
        self._decode = tokenizer.backend.decode
        self._skip = skip_special_tokens
        self.ids: list[int] = []
        self._prefix_start = 0  # window start: context token(s) before the unreleased ones
        self._read_start = 0  # first token whose text has not been released
        self._prefix_text = ""  # decode(ids[_prefix_start:_read_start]), cached
        self.text = ""  # everything released so far

    def add(self, token_id: int) -> str:
        self.ids.append(int(token_id))
        window = self._decode(self.ids[self._prefix_start:], skip_special_tokens=self._skip)
        if len(window) <= len(self._prefix_text) or window.endswith("\ufffd"):
            return ""  # nothing new, or a multi-byte character is still incomplete
        piece = window[len(self._prefix_text):]
        # next window starts at the first unreleased token, so the text it carries is context only
        self._prefix_start = self._read_start
        self._read_start = len(self.ids)
        self._prefix_text = self._decode(self.ids[self._prefix_start:self._read_start],
                                         skip_special_tokens=self._skip)
        self.text += piece
        return piece

    def finish(self) -> str:
        """Release whatever is held back (e.g. a truncated multi-byte character at the end)."""
        window = self._decode(self.ids[self._prefix_start:], skip_special_tokens=self._skip)
        piece = window[len(self._prefix_text):] if len(window) > len(self._prefix_text) else ""
        self._prefix_start = self._read_start = len(self.ids)
        self._prefix_text = ""
        self.text += piece
        return piece


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
    return Tokenizer.from_dir(out)
