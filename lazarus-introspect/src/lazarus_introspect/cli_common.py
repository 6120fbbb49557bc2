"""What every probe command shares: --model/--adapter/--json/--report, loading, input files, tokens.

Imported by probe modules only when a probe runs (never by ``lazarus --help``).
"""

from __future__ import annotations

import functools
from pathlib import Path

import click

from lazarus.errors import LazarusError


def probe_options(command):
    """Add ``--model``, ``--adapter``, ``--json`` and ``--report`` to a probe command."""
    options = [
        click.option("--model", "-m", "model_path", required=True, metavar="M",
                     help="Model directory in Hugging Face layout (or a hub id)."),
        click.option("--adapter", "adapter_path", type=click.Path(file_okay=False), default=None,
                     metavar="DIR", help="Adapter directory (mlx-lm layout) to load on top of the model."),
        click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None, metavar="FILE",
                     callback=_writable("file"), help="Also write the numbers shown in the table to FILE as JSON."),
        click.option("--report", "report_dir", type=click.Path(file_okay=False), default=None, metavar="DIR",
                     callback=_writable("dir"), help="Write DIR/report.html (self-contained), PNG heatmaps and report.json."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _writable(kind: str):
    """A click callback that checks an output path before the model loads (one line, exit 2)."""
    def check(ctx, param, value):
        from lazarus.paths import check_output_path

        if value is not None:
            check_output_path(value, kind=kind, option=f"--{param.name.split('_')[0]}")
        return value

    return check


@functools.lru_cache(maxsize=2)
def _load_cached(model_path: str, adapter_path: str | None, signature: tuple):
    from lazarus import load_model

    return load_model(model_path, adapter_path=adapter_path)


def _files_signature(*paths: str | None) -> tuple:
    """Names, sizes and modification times of the files in ``paths`` (so a changed checkpoint reloads)."""
    signature = []
    for path in paths:
        if path and Path(path).is_dir():
            signature += [(str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in sorted(Path(path).iterdir())
                          if f.is_file()]
    return tuple(signature)


def load(model_path: str, adapter_path: str | None = None):
    """``(model, tokenizer, config)`` through the core loader (cached within one process while the
    files are unchanged, so several probes in one session load a model once)."""
    model_path, adapter_path = str(model_path), str(adapter_path) if adapter_path else None
    return _load_cached(model_path, adapter_path, _files_signature(model_path, adapter_path))


def emit(report, json_path: str | None, report_dir: str | None, *, quiet: bool = False) -> None:
    """Print the report's tables, then write ``--json`` and ``--report`` if asked."""
    from rich.console import Console

    from lazarus_introspect.report import write_json

    console = Console()
    if not quiet:
        report.print(console)
    if json_path:
        write_json(json_path, report.data)
        console.print(f"wrote {json_path}", highlight=False)
    if report_dir:
        report.write_dir(report_dir)
        console.print(f"wrote {Path(report_dir) / 'report.html'}", highlight=False)


def run_meta(probe: str, model_path: str, adapter_path: str | None, model) -> dict:
    """The header every probe's JSON starts with."""
    return {"probe": probe, "model": str(model_path), "adapter": str(adapter_path) if adapter_path else None,
            "family": getattr(model, "family", None), "num_layers": len(model.blocks)}


# -- inputs ---------------------------------------------------------------------------------------
def encode(tokenizer, text: str, what: str = "prompt"):
    """Token ids of ``text`` as an ``mx.array`` (1, T); an empty encoding is a LazarusError."""
    import mlx.core as mx

    ids = tokenizer.encode(text)
    if not ids:
        raise LazarusError(f"the {what} {text!r} encodes to no tokens; give a non-empty {what}")
    return mx.array([ids], dtype=mx.int32)


def token_strings(tokenizer, ids) -> list[str]:
    """Each token id as text, for table labels (special tokens kept, so positions line up)."""
    return [tokenizer.decode([int(i)], skip_special_tokens=False) for i in ids]


def single_token(tokenizer, text: str, option: str) -> tuple[int, str]:
    """The id of a token given as text (or as ``#ID``); returns ``(id, note)``.

    Text that encodes to several tokens uses the first one and says so in the note.
    """
    vocab = tokenizer.vocab_size
    if text.startswith("#") and text[1:].isdigit():
        token_id = int(text[1:])
        if token_id >= vocab:
            raise LazarusError(f"{option} {text}: token id out of range (vocabulary has {vocab} tokens)")
        return token_id, ""
    ids = tokenizer.encode(text, add_special_tokens=False)
    if not ids:
        raise LazarusError(f"{option} {text!r} encodes to no tokens; give a word or #ID")
    note = ""
    if len(ids) > 1:
        pieces = token_strings(tokenizer, ids)
        note = f"{option} {text!r} is {len(ids)} tokens {pieces}; using the first, {pieces[0]!r}"
    return ids[0], note


def target_tokens(tokenizer, text: str, option: str) -> tuple[list[int], str]:
    """The token ids of a target string (``--track``, ``--answer``, ``--wrong``), all of them, as
    TransformerLens users expect; ``#ID`` is one token. Returns ``(ids, note)``; the note shows the
    tokenisation when it is more than one token."""
    if text.startswith("#") and text[1:].isdigit():
        return [single_token(tokenizer, text, option)[0]], ""
    ids = tokenizer.encode(text, add_special_tokens=False)
    if not ids:
        raise LazarusError(f"{option} {text!r} encodes to no tokens; give a word or #ID")
    note = f"{option} {text!r} is {len(ids)} tokens {token_strings(tokenizer, ids)}" if len(ids) > 1 else ""
    return ids, note


def continuation_logprob(logits, start: int, target: list[int]):
    """Sum over ``target`` of log p(token | what precedes it), per batch row (B,), from ``logits``
    (B, S, vocab) of the prompt followed by ``target[:-1]``; ``start`` is the prompt's length."""
    import mlx.core as mx

    span = logits[:, start - 1:start - 1 + len(target)].astype(mx.float32)
    logprobs = span - mx.logsumexp(span, axis=-1, keepdims=True)
    index = mx.array(target, dtype=mx.int32)[None, :, None]
    return mx.take_along_axis(logprobs, mx.broadcast_to(index, (span.shape[0], len(target), 1)), axis=-1).sum(axis=(1, 2))


def with_continuation(ids, target: list[int]):
    """``ids`` (B, T) followed by ``target[:-1]`` (teacher forcing: every target token is predicted)."""
    import mlx.core as mx

    if len(target) <= 1:
        return ids
    tail = mx.broadcast_to(mx.array([target[:-1]], dtype=ids.dtype), (ids.shape[0], len(target) - 1))
    return mx.concatenate([ids, tail], axis=1)


def read_lines(path: str | Path, option: str) -> list[str]:
    """Non-empty lines of a text file (one prompt per line)."""
    path = Path(path)
    try:
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    except OSError as exc:
        raise LazarusError(f"{option} {path}: cannot read ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise LazarusError(f"{option} {path}: not UTF-8 text") from None
    lines = [line for line in lines if line]
    if not lines:
        raise LazarusError(f"{option} {path}: no non-empty lines; put one prompt per line")
    return lines


def read_labelled(path: str | Path, option: str = "--data") -> list[dict]:
    """Records ``{"text": str, "label": str|int|bool}`` from a JSONL file; errors name the line."""
    from lazarus.data.records import read_jsonl

    records = []
    for number, record in read_jsonl(path):
        text, label = record.get("text"), record.get("label")
        if not isinstance(text, str) or not text:
            raise LazarusError(f"{path}:{number}: key 'text' must be a non-empty string")
        if not isinstance(label, (str, int, bool)):
            raise LazarusError(f"{path}:{number}: key 'label' must be a string, integer or boolean")
        records.append({"text": text, "label": str(label)})
    if not records:
        raise LazarusError(f"{option} {path}: no records; write one JSON object per line")
    return records


def read_saved(directory: str | Path, weights_file: str, meta_file: str, how_to_make: str):
    """``(tensors, meta)`` of a folder a probe saved (safetensors + json); errors say how to make one."""
    import json

    import mlx.core as mx

    directory = Path(directory)
    weights_path, meta_path = directory / weights_file, directory / meta_file
    for path in (weights_path, meta_path):
        if not path.is_file():
            raise LazarusError(f"{path} not found; {how_to_make}")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise LazarusError(f"{meta_path}: not valid JSON (line {exc.lineno}): {exc.msg}") from None
    try:
        tensors = mx.load(str(weights_path))
    except Exception as exc:  # mlx raises plain exceptions for corrupt files
        raise LazarusError(f"{weights_path}: cannot read safetensors ({exc}); {how_to_make}") from None
    return tensors, meta


def parse_layers(spec: str | None, count: int, option: str = "--layers") -> list[int]:
    """``"all"``/None, ``"3"``, ``"0,2,-1"`` or ``"1-3"`` as sorted layer indices in range."""
    if spec is None or spec.strip() in {"", "all"}:
        return list(range(count))
    layers: set[int] = set()
    for part in spec.split(","):
        part = part.strip()
        values: range | list[int]
        try:
            if "-" in part[1:]:
                start, end = part[0] + part[1:].split("-", 1)[0], part[1:].split("-", 1)[1]
                values = range(int(start), int(end) + 1)
            else:
                values = [int(part)]
        except ValueError:
            raise LazarusError(f"{option} {spec!r}: use 'all', numbers like 0,2,-1 or a range like 1-3") from None
        for value in values:
            index = value + count if value < 0 else value
            if not 0 <= index < count:
                raise LazarusError(f"{option}: layer {value} is out of range; the model has {count} layers "
                                   f"(0..{count - 1})")
            layers.add(index)
    return sorted(layers)


def resolve_positions(positions, length: int, option: str = "--position") -> list[int]:
    """Token positions (negative counts from the end) as indices in ``range(length)``."""
    resolved = []
    for position in positions:
        index = position + length if position < 0 else position
        if not 0 <= index < length:
            raise LazarusError(f"{option} {position} is out of range for a prompt of {length} tokens")
        resolved.append(index)
    return resolved


def generate_text(model, tokenizer, prompt: str, max_tokens: int, hooks=()) -> dict:
    """Greedy generation through ``lazarus.generate`` with ``hooks`` attached; ``{"text", "token_ids"}``."""
    from lazarus.generation import generate
    from lazarus_introspect import activations

    with activations.attached(model, hooks):
        result = generate(model, tokenizer, prompt, max_tokens=max_tokens, temperature=0.0)
    return {"text": result.text, "token_ids": list(result.token_ids)}
