"""What keeps a training run safe (part of :class:`~lazarus.training.trainer.Trainer`): the
divergence guard (a non-finite loss, gradient norm or weights, or an eval loss far above the
first, stops the run before anything is saved or pruned), the output checks and lock (one live
run per output; an earlier run is kept unless ``--overwrite``), the same-base check of a resume,
and memory checks."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, cast

import mlx.core as mx
from mlx.utils import tree_flatten

from lazarus.errors import LazarusError, TrainingDiverged
from lazarus.training import checkpoint as ckpt
from lazarus.training.display import LOSS_PNG, METRICS_FILE
from lazarus.training.metrics import MetricsLog
from lazarus.training.parts import TrainerParts

if TYPE_CHECKING:
    from lazarus.training.run_state import TrainResult


class RunGuard(TrainerParts):
    """The divergence guard and the output checks; mixed into the trainer base."""

    def _diverged(self, step: int, what: str, result: TrainResult | None = None) -> TrainingDiverged:
        """The error that stops a diverged run: the step, what was seen, the setting to lower and
        the last good checkpoint (nothing is saved or pruned for the bad step)."""
        checkpoint = result.checkpoint if result is not None else None
        kept = f"; the last good checkpoint is {checkpoint}" if checkpoint else "; no checkpoint was written"
        return TrainingDiverged(f"training diverged at step {step}: {what} -- lower --learning-rate "
                                f"(now {self.config.learning_rate:g}){kept}", step=step, checkpoint=checkpoint)

    def _guard_step(self, step: int, total, count, norm, metrics: MetricsLog, result: TrainResult) -> None:
        """Stop when this step's gradient norm (summed over ranks, so every rank agrees) or, on one
        process, its loss is not finite: the update has already spoiled the weights in memory."""
        grad_norm = float(norm.item())
        loss = float(total.item()) / max(float(count.item()), 1.0)
        if math.isfinite(grad_norm) and (self.world.distributed or math.isfinite(loss)):
            return
        metrics.write({"split": "train", "step": step, "loss": loss, "grad_norm": grad_norm, "diverged": True})
        what = f"the loss is {loss}" if not math.isfinite(loss) else f"the gradient norm is {grad_norm}"
        raise self._diverged(step, what, result)

    def _guard_eval(self, step: int, loss: float | None, first: float | None, result: TrainResult) -> None:
        """Stop when an eval loss is not finite, or rises above max(1.5 x first, first + rise)."""
        if loss is None:
            return
        if not math.isfinite(loss):
            raise self._diverged(step, f"the eval loss is {loss}", result)
        rise = self.config.max_eval_loss_rise
        if first is None or not math.isfinite(first) or not rise:
            return
        limit = max(1.5 * first, first + rise)
        if loss > limit:
            raise self._diverged(step, f"eval loss {loss:.4f} rose from {first:.4f} at the start, above "
                                       f"{limit:.4f} (max(1.5 x first, first + --max-eval-loss-rise {rise:g}))",
                                 result)

    def _guard_weights(self, step: int) -> None:
        """Refuse to save weights that are not all finite (an update that overflowed)."""
        finite = mx.array(True)
        trainable = cast("list[tuple[str, mx.array]]", tree_flatten(self.model.trainable_parameters()))
        for _, value in trainable:
            finite = mx.logical_and(finite, mx.all(mx.isfinite(value)))
        if not bool(finite.item()):
            raise self._diverged(step, "the trained weights are no longer finite", self._result)

    def _check_same_base(self, checkpoint: Path) -> None:
        """Refuse to resume a run on another base model than the one its checkpoint was trained on."""
        from lazarus.loader import resolve_model_path, weight_files
        from lazarus.models.transformer import ModelSource
        from lazarus.provenance import recorded_base_differs

        model = self.config.model
        if not model:
            return
        if self.model is not None:
            source = getattr(self.model, "source", None)
        else:
            path = resolve_model_path(model)
            source = ModelSource(model=str(model), path=str(path), family="",
                                 weight_files=tuple(str(f) for f in weight_files(path)))
        other = recorded_base_differs(checkpoint, source)
        if other is not None:
            raise LazarusError(f"--resume {checkpoint}: this run was trained on {other}, not on --model {model}; "
                               f"resume it on its own base, or start a new run on {model} with --adapter "
                               f"{checkpoint} (a warning says when its shapes fit another base)")

    def check_memory(self, needed: int, what: str, lower: str) -> None:
        """Refuse up front what cannot fit in the device's memory (rather than be killed for it)."""
        available = device_memory_bytes()
        if available and needed > available:
            raise LazarusError(f"{what} needs at least {needed / 1e9:.1f} GB, more than the {available / 1e9:.1f} GB "
                               f"of this device; lower {lower}")

    def _check_not_model(self, output: Path) -> None:
        """Refuse an output directory that is a model this run reads (its files would be replaced)."""
        for option in ("model", "ref_model"):
            value = getattr(self.config, option, None)
            if not value or not Path(value).expanduser().is_dir():
                continue
            if Path(value).expanduser().resolve() == output.resolve():
                raise LazarusError(f"--output {output} is the --{option.replace('_', '-')} directory; training "
                                   "would overwrite that model's files: choose another --output")

    def _check_output(self, resuming: bool) -> None:
        """Before the model loads, without writing anything: refuse an output that cannot be written,
        that is a model this run reads, that a live run holds, or that holds an earlier run (its
        checkpoints would be pruned and its metrics lost) unless ``overwrite`` is set. An output an
        interrupted save left hidden is restored first."""
        from lazarus.io import recover_output
        from lazarus.paths import OutputLock, check_output_path

        check_output_path(self.output, kind="dir", option="--output")
        self._check_not_model(self.output)
        recover_output(self.output, "--output")
        if self.world.is_main:
            OutputLock(self.output).check()
        previous = self.output / ckpt.CHECKPOINTS_DIR
        if resuming or not previous.exists() or self.config.overwrite:
            return
        raise LazarusError(f"{self.output} already holds a training run ({previous}); continue it with "
                           f"--resume {self.output}, start afresh there with --overwrite, or choose "
                           "another --output")

    def _claim_output(self, resuming: bool) -> None:
        """Once the model and data are ready: take the output's lock (one live run per output
        directory; a dead run's lock is taken over with a note), then, for --overwrite, delete the
        earlier run's checkpoints and metrics (never a live run's: its lock is refused first)."""
        if self.world.is_main:
            from rich.markup import escape

            from lazarus.paths import OutputLock

            self._lock = OutputLock(self.output)
            note = self._lock.acquire()
            if note:
                self.log(f"[yellow]Note: {escape(note)}[/]")
        previous = self.output / ckpt.CHECKPOINTS_DIR
        if not resuming and previous.exists() and self.config.overwrite:
            if self.world.is_main:
                import shutil

                shutil.rmtree(previous)
                for name in (METRICS_FILE, LOSS_PNG):
                    (self.output / name).unlink(missing_ok=True)
            self.world.barrier()


def device_memory_bytes() -> int | None:
    """Memory the default device can use: the GPU's (mlx's device_info) or the machine's RAM."""
    try:
        info = mx.device_info()
        sizes = [v for k, v in info.items() if "memory" in k and isinstance(v, int) and v > 0]
        if sizes:
            return max(sizes)
    except Exception:  # an older mlx: fall back to the RAM size
        pass
    try:
        import os

        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def generation_bytes(model, rows: int, tokens: int) -> int:
    """A lower bound of the memory that generating ``tokens`` tokens for ``rows`` rows at once takes:
    the KV cache of every block plus one step's logits in float32."""
    args = getattr(model, "args", None)
    heads = getattr(args, "num_attention_heads", None) or 1
    kv_heads = getattr(args, "num_key_value_heads", None) or heads
    hidden = getattr(args, "hidden_size", None) or 0
    head_dim = getattr(args, "head_dim", None) or (hidden // heads if hidden else 0)
    vocab = getattr(args, "vocab_size", None) or 0
    blocks = len(getattr(model, "blocks", ()) or ())
    parameters = cast("list[tuple[str, mx.array]]", tree_flatten(model.parameters()))
    itemsize = next((v.dtype.size for _, v in parameters
                     if mx.issubdtype(v.dtype, mx.floating)), 4)
    return rows * tokens * blocks * 2 * kv_heads * head_dim * itemsize + rows * vocab * 4
