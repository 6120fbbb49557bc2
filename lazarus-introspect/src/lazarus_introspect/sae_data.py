"""The activations ``lazarus sae train`` learns from, streamed from a dataset.

:func:`read_texts` reads a dataset one record at a time (a text file, a JSONL file or a folder with
``train.jsonl``); :class:`ActivationStream` packs the texts into windows of ``seq_len`` tokens, runs
them through the frozen model ``model_batch`` windows at a time, and hands out shuffled batches of
the activations at one hook from a buffer of ``buffer_size`` rows, so memory holds the buffer,
never the dataset. Its ``position`` is where a resumed run continues.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from lazarus.errors import LazarusError


def read_texts(path: str | Path) -> Iterator[str]:
    """The texts of a dataset, one record at a time: a text file (one document per non-empty line),
    a JSONL file (``text``, ``prompt`` + ``completion``, ``messages`` or ``prompt`` + ``chosen``
    records) or a folder with ``train.jsonl``."""
    from lazarus.data.records import read_jsonl

    path = Path(path)
    if path.is_dir():
        if not (path / "train.jsonl").is_file():
            raise LazarusError(f"--data {path}: a folder must hold train.jsonl")
        path = path / "train.jsonl"
    if not path.is_file():
        raise LazarusError(f"--data {path}: no such file")
    if path.suffix == ".jsonl":
        for number, record in read_jsonl(path):
            yield _record_text(record, f"{path}:{number}")
        return
    try:
        with path.open(encoding="utf-8") as handle:
            for line in handle:
                if line.strip():
                    yield line.rstrip("\n")
    except UnicodeDecodeError:
        raise LazarusError(f"--data {path}: not UTF-8 text") from None


def _record_text(record: dict, where: str) -> str:
    if isinstance(record.get("text"), str):
        return record["text"]
    if isinstance(record.get("messages"), list):
        return "\n".join(str(m.get("content", "")) for m in record["messages"] if isinstance(m, dict))
    if isinstance(record.get("prompt"), str):
        tail = record.get("completion", record.get("chosen", ""))
        return record["prompt"] + (tail if isinstance(tail, str) else "")
    raise LazarusError(f"{where}: no text; records need 'text', 'messages' or 'prompt' (+ 'completion')")


class ActivationStream:
    """Shuffled batches (batch_size, d_in) float32 of a model's activations at ``hook`` over a dataset.

    ``position`` (``{"epoch", "record"}``) is the next record to read; a stream made with it
    continues there (the dataset repeats when it runs out).
    """

    def __init__(self, model, tokenizer, hook: str, data: str, *, seq_len: int, model_batch: int,
                 batch_size: int, buffer_size: int, seed: int, position: dict | None = None):
        import numpy as np

        self.model, self.tokenizer, self.hook, self.data = model, tokenizer, hook, data
        self.seq_len, self.model_batch, self.batch_size = seq_len, model_batch, batch_size
        self.buffer_size = max(buffer_size, batch_size)
        self.rng = np.random.default_rng(seed)
        self.position = dict(position or {"epoch": 0, "record": 0})
        self.tokens_read = 0

    def _texts(self) -> Iterator[str]:
        while True:
            seen = 0
            for index, text in enumerate(read_texts(self.data)):
                seen += 1
                if index < self.position["record"]:
                    continue
                self.position["record"] = index + 1
                yield text
            if seen == 0:
                raise LazarusError(f"--data {self.data}: no records")
            self.position = {"epoch": self.position["epoch"] + 1, "record": 0}

    def _windows(self) -> Iterator[list[int]]:
        pending: list[int] = []
        for text in self._texts():
            pending += self.tokenizer.encode(text)
            while len(pending) >= self.seq_len:
                yield pending[: self.seq_len]
                pending = pending[self.seq_len:]

    def _activations(self):
        import mlx.core as mx
        import numpy as np

        from lazarus_introspect import activations

        windows = self._windows()
        while True:
            batch = [next(windows) for _ in range(self.model_batch)]
            _, cache = activations.run_with_cache(self.model, mx.array(batch, dtype=mx.int32), [self.hook])
            acts = cache[self.hook].astype(mx.float32)
            self.tokens_read += acts.shape[0] * acts.shape[1]
            yield np.array(acts.reshape(-1, acts.shape[-1]))

    def __iter__(self):
        import numpy as np

        source = self._activations()
        buffer = np.zeros((0, 0), dtype=np.float32)
        while True:
            chunks = [buffer] if buffer.size else []
            rows = len(buffer)
            while rows < self.buffer_size:
                chunk = next(source)
                chunks.append(chunk)
                rows += len(chunk)
            buffer = np.concatenate(chunks)
            buffer = buffer[self.rng.permutation(len(buffer))]
            # hand out half the buffer, keep the rest to mix with fresh activations
            while len(buffer) >= max(self.buffer_size // 2, self.batch_size):
                yield buffer[: self.batch_size]
                buffer = buffer[self.batch_size:]

