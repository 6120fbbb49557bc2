"""Tokenizers in Hugging Face layout: encoding, decoding, chat templates, streaming detokenisation.

A :class:`Tokenizer` wraps a ``tokenizers.Tokenizer`` built from ``tokenizer.json`` and reads the
special tokens and the chat template from ``tokenizer_config.json`` (plus ``generation_config.json``
for extra end-of-sequence ids). Chat templates are jinja2, rendered in a sandbox with the same
conventions as Hugging Face transformers so that real checkpoints' templates work unchanged.

:func:`train_tokenizer` (in :mod:`lazarus.tokenizer_training`, importable from here too) trains a
small byte-level BPE tokenizer offline on an embedded corpus; the test suite and ``lazarus models
create`` use it to make tiny checkpoints in real HF layout.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from lazarus.errors import LazarusError

__all__ = ["StreamingDetokenizer", "Tokenizer", "render_chat_template"]


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
        if template is None:  # a named entry without its "template"
            raise LazarusError(f"{self.source}: the chosen chat template in tokenizer_config.json has no text")
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


#: names of :mod:`lazarus.tokenizer_training`, still importable from here (loaded on first use, so
#: the two modules do not import each other at import time)
_TRAINING = ("CHATML_TEMPLATE", "SPECIAL_TOKENS", "_SENTENCES", "default_corpus", "train_tokenizer")


def __getattr__(name: str):
    if name in _TRAINING:
        import importlib

        return getattr(importlib.import_module("lazarus.tokenizer_training"), name)
    raise AttributeError(f"module 'lazarus.tokenizer' has no attribute {name!r}")
