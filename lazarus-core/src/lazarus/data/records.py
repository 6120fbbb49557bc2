"""JSONL records: read, validate and classify training data.

Five record kinds, told apart by their keys:

=============  ===============================================  ===========
kind           keys                                             format
=============  ===============================================  ===========
``completion`` ``{"prompt": str, "completion": str}``           ``sft``
``chat``       ``{"messages": [{"role", "content"}, ...]}``     ``sft``
``text``       ``{"text": str}``                                ``sft``
``preference`` ``{"prompt", "chosen", "rejected"}``             ``preference``
``prompt``     ``{"prompt", ...any other fields}``              ``prompt``
=============  ===============================================  ===========

A *format* is what a trainer asks for (``TrainerSpec.data_format``): ``sft`` accepts the first
three kinds, ``preference`` and ``prompt`` one each. In ``preference`` records the prompt may be a
string or a message list, and ``chosen``/``rejected`` may be strings or message lists. ``prompt``
records (for RL) keep every other field (``answer``, ``expression`` ...) in ``extra`` for reward
functions. All records in one file must be of one kind.

Input is a single ``.jsonl`` file or a directory holding ``train.jsonl`` and optionally
``valid.jsonl`` and ``test.jsonl``. Every problem raises :class:`~lazarus.errors.LazarusError`
naming ``FILE:LINE``. Blank lines are skipped.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import attrs

from lazarus.errors import LazarusError

#: a chat message as found in JSONL: ``{"role": "user", "content": "..."}``
Message = dict
#: a prompt/answer is either plain text or a list of chat messages
TextOrMessages = str | tuple

FORMATS = ("sft", "preference", "prompt")
KINDS = ("completion", "chat", "text", "preference", "prompt")
#: which record kinds each format accepts
FORMAT_KINDS: dict[str, tuple[str, ...]] = {
    "sft": ("completion", "chat", "text"),
    "preference": ("preference",),
    "prompt": ("prompt",),
}
#: required keys per kind, as shown in error messages
KIND_KEYS: dict[str, tuple[str, ...]] = {
    "completion": ("prompt", "completion"),
    "chat": ("messages",),
    "text": ("text",),
    "preference": ("prompt", "chosen", "rejected"),
    "prompt": ("prompt",),
}
SPLITS = ("train", "valid", "test")


@attrs.frozen(eq=False)
class CompletionRecord:
    """``{"prompt", "completion"}``: loss on the completion only (unless prompt masking is off)."""

    prompt: str
    completion: str
    source: str = ""  #: ``FILE:LINE`` the record came from, for error messages


@attrs.frozen(eq=False)
class ChatRecord:
    """``{"messages"}``: the last message is the assistant turn that carries the loss."""

    messages: tuple[Message, ...]
    source: str = ""


@attrs.frozen(eq=False)
class TextRecord:
    """``{"text"}``: plain text, every token carries loss."""

    text: str
    source: str = ""


@attrs.frozen(eq=False)
class PreferenceRecord:
    """``{"prompt", "chosen", "rejected"}``; each field is a string or a tuple of messages."""

    prompt: TextOrMessages
    chosen: TextOrMessages
    rejected: TextOrMessages
    source: str = ""


@attrs.frozen(eq=False)
class PromptRecord:
    """``{"prompt", ...}`` for RL: ``extra`` holds every other field (e.g. ``answer``) for rewards."""

    prompt: TextOrMessages
    extra: dict[str, Any] = attrs.field(factory=dict)
    source: str = ""

    @property
    def answer(self) -> Any:
        """The record's ``answer`` field, or None."""
        return self.extra.get("answer")


Record = CompletionRecord | ChatRecord | TextRecord | PreferenceRecord | PromptRecord


@attrs.frozen(eq=False)
class Dataset:
    """The records of one JSONL file, all of one ``kind`` (None when the file has no records)."""

    records: tuple[Record, ...]
    kind: str | None
    path: Path | None = None

    @property
    def format(self) -> str | None:
        """``sft``, ``preference`` or ``prompt``: which trainers can consume this data."""
        return next((f for f, kinds in FORMAT_KINDS.items() if self.kind in kinds), None)

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[Record]:
        return iter(self.records)

    def __getitem__(self, index: int) -> Record:
        return self.records[index]


@attrs.frozen(eq=False)
class DataSplits:
    """``train`` / ``valid`` / ``test`` datasets read from one directory (or one file as train)."""

    train: Dataset
    valid: Dataset | None = None
    test: Dataset | None = None
    path: Path | None = None

    @property
    def kind(self) -> str | None:
        return self.train.kind

    @property
    def format(self) -> str | None:
        return self.train.format

    def items(self) -> list[tuple[str, Dataset]]:
        """``[(split name, dataset), ...]`` for the splits that exist."""
        return [(name, ds) for name in SPLITS if (ds := getattr(self, name)) is not None]


# -- reading ---------------------------------------------------------------------------------------
def read_jsonl(path: str | Path) -> Iterator[tuple[int, dict]]:
    """Yield ``(line_number, object)`` for each non-blank line of a JSONL file (numbers from 1).

    Raises LazarusError naming ``FILE:LINE`` for a line that is not UTF-8, not JSON, or not an object.
    """
    path = Path(path)
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        raise LazarusError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise LazarusError(f"{path}: is a directory, expected a .jsonl file") from None
    with handle:
        for line_number, raw in enumerate(handle, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise LazarusError(f"{path}:{line_number}: not valid UTF-8 ({exc.reason}); "
                                   "save the file as UTF-8") from None
            if line_number == 1:
                line = line.lstrip("\ufeff")  # a byte-order mark written by some editors
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise LazarusError(f"{path}:{line_number}: invalid JSON: {exc.msg} at column {exc.colno}; "
                                   "each line must be one JSON object") from None
            if not isinstance(obj, dict):
                raise LazarusError(f"{path}:{line_number}: expected a JSON object, got "
                                   f"{type(obj).__name__}")
            yield line_number, obj


def detect_kind(obj: dict, format: str | None = None) -> str | None:
    """The record kind of a JSON object from its keys, or None when no kind of ``format`` fits.

    ``format`` (``sft``, ``preference``, ``prompt`` or None for any) restricts the candidates.
    """
    kinds = FORMAT_KINDS[format] if format else KINDS
    keys = set(obj)
    # the most specific kind first: a preference record also has a "prompt"
    for kind in ("chat", "preference", "completion", "text", "prompt"):
        if kind in kinds and set(KIND_KEYS[kind]) <= keys:
            return kind
    return None


def _expected_keys(kinds: Iterable[str]) -> str:
    return " or ".join("{" + ", ".join(KIND_KEYS[k]) + "}" for k in kinds)


def _got_keys(obj: dict) -> str:
    return "{" + ", ".join(sorted(obj)) + "}"


def _text(obj: dict, key: str, where: str) -> str:
    value = obj[key]
    if not isinstance(value, str):
        raise LazarusError(f"{where}: {key!r} must be a string, got {type(value).__name__}")
    return value


def _messages(value: Any, key: str, where: str) -> tuple[Message, ...]:
    if not isinstance(value, list) or not value:
        raise LazarusError(f"{where}: {key!r} must be a non-empty list of "
                           '{"role": ..., "content": ...} messages')
    for i, message in enumerate(value):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str) or not isinstance(
                message.get("content"), str):
            raise LazarusError(f"{where}: {key}[{i}] must be an object with string 'role' and "
                               f"'content', got {json.dumps(message)[:80]}")
    return tuple(value)


def _text_or_messages(obj: dict, key: str, where: str) -> TextOrMessages:
    value = obj[key]
    return value if isinstance(value, str) else _messages(value, key, where)


def parse_record(obj: dict, kind: str, source: str = "") -> Record:
    """Build the record of ``kind`` from a JSON object; ``source`` (``FILE:LINE``) goes into errors."""
    where = source or "record"
    if kind == "completion":
        return CompletionRecord(_text(obj, "prompt", where), _text(obj, "completion", where), source)
    if kind == "text":
        return TextRecord(_text(obj, "text", where), source)
    if kind == "chat":
        messages = _messages(obj["messages"], "messages", where)
        if messages[-1]["role"] != "assistant":
            raise LazarusError(f"{where}: the last message must be the assistant turn to learn, "
                               f"got role {messages[-1]['role']!r}")
        return ChatRecord(messages, source)
    if kind == "preference":
        return PreferenceRecord(_text_or_messages(obj, "prompt", where),
                                _text_or_messages(obj, "chosen", where),
                                _text_or_messages(obj, "rejected", where), source)
    if kind == "prompt":
        extra = {k: v for k, v in obj.items() if k != "prompt"}
        return PromptRecord(_text_or_messages(obj, "prompt", where), extra, source)
    raise ValueError(f"unknown record kind {kind!r}; known: {', '.join(KINDS)}")


def read_dataset(path: str | Path, format: str | None = None) -> Dataset:
    """Read one JSONL file into a :class:`Dataset`.

    ``format`` is what the caller can consume (``sft``, ``preference``, ``prompt``) or None to
    accept any kind. The first record fixes the kind; a later record of another kind, or one that
    fits no kind of ``format``, raises LazarusError "FILE:LINE: expected keys ... got ...".
    An empty file gives a dataset with no records and ``kind=None``.
    """
    if format is not None and format not in FORMATS:
        raise LazarusError(f"unknown data format {format!r}; known: {', '.join(FORMATS)}")
    path = Path(path)
    records: list[Record] = []
    kind: str | None = None
    first_line = 0
    for line_number, obj in read_jsonl(path):
        source = f"{path}:{line_number}"
        if kind is None:
            kind = detect_kind(obj, format)
            first_line = line_number
            if kind is None:
                allowed = FORMAT_KINDS[format] if format else KINDS
                what = f" for {format} data" if format else ""
                raise LazarusError(f"{source}: expected keys {_expected_keys(allowed)}{what}, "
                                   f"got {_got_keys(obj)}")
        elif detect_kind(obj, format) != kind:
            missing = [k for k in KIND_KEYS[kind] if k not in obj]
            lacks = f"missing {', '.join(map(repr, missing))}: " if missing else ""
            raise LazarusError(f"{source}: {lacks}expected keys {_expected_keys([kind])} like line {first_line} "
                               f"({kind} records), got {_got_keys(obj)}; one file holds one kind of record")
        records.append(parse_record(obj, kind, source))
    return Dataset(tuple(records), kind, path)


def load_splits(path: str | Path, format: str | None = None,
                splits: Iterable[str] = SPLITS) -> DataSplits:
    """Read training data: a directory with ``train.jsonl`` (and optional ``valid.jsonl``,
    ``test.jsonl``), or a single JSONL file, which becomes the train split.

    Raises LazarusError when the path is missing, the directory has no ``train.jsonl``, the train
    split has no records, or splits disagree on the record kind.
    """
    path = Path(path)
    if not path.exists():
        raise LazarusError(f"{path}: no such file or directory; pass a .jsonl file or a directory "
                           "holding train.jsonl / valid.jsonl / test.jsonl")
    if path.is_file():
        train = read_dataset(path, format)
        found: dict[str, Dataset] = {"train": train}
    else:
        wanted = [s for s in SPLITS if s in set(splits)]
        if not (path / "train.jsonl").is_file():
            present = ", ".join(sorted(p.name for p in path.glob("*.jsonl"))) or "no .jsonl files"
            raise LazarusError(f"{path}: no train.jsonl in this directory (found: {present})")
        found = {s: read_dataset(path / f"{s}.jsonl", format) for s in wanted
                 if (path / f"{s}.jsonl").is_file()}
        train = found.get("train") or read_dataset(path / "train.jsonl", format)
    if not len(train):
        raise LazarusError(f"{train.path}: no records (the file is empty)")
    for dataset in found.values():
        if dataset.kind is not None and dataset.kind != train.kind:
            raise LazarusError(f"{dataset.path}: holds {dataset.kind} records but {train.path} holds "
                               f"{train.kind} records; all splits must be of one kind")
    return DataSplits(train=train, valid=found.get("valid"), test=found.get("test"), path=path)


# -- writing ---------------------------------------------------------------------------------------
def dumps_jsonl(rows: Iterable[dict]) -> str:
    """JSONL text for ``rows``: one compact JSON object per line, key order kept, ``\\n`` endings."""
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` through a temporary file in the same directory and a
    rename, so a crash never leaves a half-written file and an old file survives a failed write
    (:func:`lazarus.io.write_text`)."""
    from lazarus.io import write_text

    write_text(path, text)


def write_jsonl(path: str | Path, rows: Iterable[dict], force: bool = False) -> int:
    """Write ``rows`` as JSONL atomically; refuse to replace an existing file unless ``force``.

    Returns the number of rows written.
    """
    path = Path(path)
    if path.exists() and not force:
        raise LazarusError(f"{path} already exists; pass --force to overwrite it")
    rows = list(rows)
    write_text_atomic(path, dumps_jsonl(rows))
    return len(rows)
