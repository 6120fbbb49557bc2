"""``lazarus sae train``: train a sparse autoencoder on a model's activations, streamed from a dataset.

Texts are read one record at a time (:mod:`lazarus_introspect.sae_data`), packed into windows of
``--seq-len`` tokens and run through the (frozen) model in small batches; the activations at ``--hook`` go into a shuffle buffer of
``--buffer-size`` rows, from which the SAE trains on ``--batch-size`` rows per step, so memory
holds the buffer, never the dataset. Activations are scaled by one constant so their mean
squared norm is ``d_in`` (fixed from the first buffer) and the scale is folded back into the
weights when the SAE is written, as SAELens does.

- ``--architecture topk``: ``k`` features per token, loss = ``||x - x_hat||^2``;
- ``--architecture standard``: ReLU, loss = ``||x - x_hat||^2 + l1 * sum_i f_i ||W_dec_i||``.

After every step the decoder rows are set back to unit norm. A feature that has not fired in the
last ``--dead-steps`` steps is dead; every ``--resample-interval`` steps dead features are
resampled: their decoder row becomes the normalised reconstruction error of an input drawn with
probability proportional to its squared error, the encoder column that direction at 0.2 times
the live features' mean encoder norm, their bias and Adam moments zero.

Progress shows the loss, explained variance, L0 (mean active features per token) and the dead
fraction; ``metrics.jsonl`` has them per ``--log-interval``. Checkpoints go to
``OUTPUT/checkpoints/step-N`` (the SAE in SAELens layout plus the training state) and
``--resume OUTPUT`` continues from the latest one at the next unread record of the dataset (the
activations that were buffered but not yet used are skipped). The finished SAE is ``OUTPUT``
itself (``cfg.json`` + ``sae_weights.safetensors`` + ``lazarus.json``).
"""

from __future__ import annotations

import math
import signal
import threading
import time
from pathlib import Path
from typing import Any, cast

import attrs
import click

from lazarus.errors import LazarusError
from lazarus.training.config import build_config, click_options, setting
from lazarus_introspect.sae_data import ActivationStream, read_texts  # noqa: F401 - read_texts: public here too

TRAINER_NAME = "sae"
TRAINING_WEIGHTS = "sae_training.safetensors"


@attrs.define(kw_only=True)
class SAETrainConfig:
    """Settings of ``lazarus sae train`` (CLI options and ``--config`` keys)."""

    model: str | None = setting(None, "Model directory in Hugging Face layout (or a hub id, or lazarus:NAME).",
                                metavar="M")
    adapter: str | None = setting(None, "Adapter directory to load on top of the model.", metavar="DIR")
    hook: str | None = setting(None, "Hook point to read, e.g. blocks.1.hook_resid_post.", metavar="HOOK")
    data: str | None = setting(None, "Text file (one document per line), JSONL file or folder with train.jsonl.",
                               metavar="D")
    output: str | None = setting(None, "Folder for the SAE, its metrics and checkpoints.", metavar="DIR")
    width: int = setting(512, "Number of SAE features (d_sae).", minimum=1)
    architecture: str = setting("topk", "topk (k features per token) or standard (ReLU + L1).",
                                choices=("topk", "standard"))
    k: int = setting(32, "Features active per token (topk).", minimum=1)
    l1_coefficient: float = setting(5.0, "L1 penalty on f_i ||W_dec_i|| (standard).", minimum=0)
    learning_rate: float = setting(4e-4, "Adam learning rate (linear warm-up over 5% of the steps, decay over the "
                                   "last 20%).", minimum=0)
    max_steps: int = setting(2000, "Optimizer steps.", minimum=1)
    batch_size: int = setting(1024, "Activations (tokens) per step.", minimum=1)
    seq_len: int = setting(128, "Tokens per window the model reads.", minimum=2)
    model_batch: int = setting(8, "Windows per model forward pass.", minimum=1)
    buffer_size: int = setting(16384, "Activations held in the shuffle buffer.", minimum=1)
    dead_steps: int = setting(200, "A feature that has not fired in this many steps is dead.", minimum=1)
    resample_interval: int = setting(250, "Resample dead features every this many steps (0: never).", minimum=0)
    log_interval: int = setting(25, "Steps per metrics row and progress update.", minimum=1)
    save_interval: int = setting(500, "Steps between checkpoints (0: only at the end).", minimum=0)
    seed: int = setting(0, "Random seed (initialisation, shuffling, resampling).", minimum=0)
    resume: str | None = setting(None, "Continue a run from its output folder or a checkpoint.", metavar="DIR")


# -- the SAE being trained ------------------------------------------------------------------------
def init_sae(config: SAETrainConfig, d_in: int, mean, model_name: str | None):
    """A fresh SAE: unit-norm random decoder rows, encoder = decoder transposed, b_dec = the data mean."""
    import mlx.core as mx

    from lazarus_introspect.sae import SAE, sae_config

    assert config.hook is not None  # (train_sae checks it)
    mx.random.seed(config.seed)
    w_dec = mx.random.normal((config.width, d_in))
    w_dec = w_dec / mx.linalg.norm(w_dec, axis=1, keepdims=True)
    cfg = sae_config(architecture=config.architecture, d_in=d_in, d_sae=config.width, hook_name=config.hook,
                     k=config.k if config.architecture == "topk" else None, model_name=model_name,
                     context_size=config.seq_len, dataset_path=str(config.data))
    return SAE(w_dec.T, w_dec, mx.zeros((config.width,)), mx.array(mean, dtype=mx.float32), cfg)


def folded(sae, scale: float):
    """The SAE for raw activations, from one trained on activations times ``scale``."""
    from lazarus_introspect.sae import SAE

    return SAE(sae.W_enc * scale, sae.W_dec / scale, sae.b_enc, sae.b_dec / scale, sae.cfg,
               getattr(sae, "threshold", None))


def sae_loss(sae, x, architecture: str, l1_coefficient: float):
    """``(loss, (sum of squared errors, features))`` of a batch ``x`` (N, d_in)."""
    import mlx.core as mx

    features = sae.encode(x)
    error = ((sae.decode(features) - x) ** 2).sum(axis=-1)
    loss = error.mean()
    if architecture == "standard":
        loss = loss + l1_coefficient * (features * mx.linalg.norm(sae.W_dec, axis=1)).sum(axis=-1).mean()
    return loss, (error.sum(), features)


def resample_dead(sae, optimizer, x, dead, rng) -> int:
    """Re-initialise the ``dead`` features (indices) from inputs of ``x`` with large reconstruction
    error (see the module docstring); returns how many were resampled."""
    import mlx.core as mx
    import numpy as np

    if len(dead) == 0:
        return 0
    error = x - sae.decode(sae.encode(x))
    weights = np.array((error ** 2).sum(axis=-1))
    if weights.sum() <= 0:
        return 0
    picks = rng.choice(len(weights), size=len(dead), replace=len(dead) > len(weights), p=weights / weights.sum())
    directions = error[mx.array(picks)]
    directions = directions / mx.maximum(mx.linalg.norm(directions, axis=1, keepdims=True), 1e-8)
    index = mx.array(np.asarray(dead), dtype=mx.int32)
    alive = np.setdiff1d(np.arange(sae.d_sae), dead)
    enc_norm = mx.linalg.norm(sae.W_enc[:, mx.array(alive)], axis=0).mean() if len(alive) else mx.array(1.0)
    w_dec, w_enc, b_enc = sae.W_dec, sae.W_enc, sae.b_enc
    w_dec[index] = directions
    w_enc[:, index] = directions.T * 0.2 * enc_norm
    b_enc[index] = 0.0
    sae.update({"W_dec": w_dec, "W_enc": w_enc, "b_enc": b_enc})
    for key, rows in (("W_dec", True), ("W_enc", False), ("b_enc", True)):
        for moment in ("m", "v"):
            state = optimizer.state.get(key, {}).get(moment)
            if state is not None:
                if rows:
                    state[index] = 0.0
                else:
                    state[:, index] = 0.0
                optimizer.state[key][moment] = state
    return len(dead)


def _schedule(learning_rate: float, steps: int):
    import mlx.optimizers as optim

    warmup = max(1, steps // 20)
    decay = max(1, steps // 5)
    flat = max(1, steps - warmup - decay)
    return optim.join_schedules([optim.linear_schedule(0.0, learning_rate, warmup),
                                 optim.linear_schedule(learning_rate, learning_rate, flat),
                                 optim.linear_schedule(learning_rate, learning_rate * 0.01, decay)],
                                [warmup, warmup + flat])


class _Stop:
    """Ctrl-C asks the loop to stop after the current step (and save a checkpoint)."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True


@attrs.define
class SAETrainResult:
    """What a run produced: the folder, the steps done and the last logged metrics."""

    output: Path
    step: int
    total_steps: int
    metrics: dict = attrs.Factory(dict)
    checkpoint: Path | None = None
    interrupted: bool = False


def train_sae(config: SAETrainConfig, *, model=None, tokenizer=None, console=None) -> SAETrainResult:
    """Train (or resume) an SAE as ``config`` says; returns :class:`SAETrainResult`."""
    import mlx.core as mx
    import mlx.optimizers as optim
    import numpy as np
    from mlx.utils import tree_flatten, tree_unflatten

    from lazarus import provenance
    from lazarus.errors import TrainingDiverged
    from lazarus.paths import check_output_path
    from lazarus.training import checkpoint as ckpt
    from lazarus.training.metrics import MetricsLog
    from lazarus_introspect.sae import load_sae, save_sae

    for name in ("model", "hook", "data", "output"):
        if getattr(config, name) is None:
            raise LazarusError(f"--{name} is required")
    assert config.output is not None  # (checked just above)
    output = check_output_path(config.output)
    # the saved config names files absolutely, so --resume works from any directory
    absolute: dict[str, Any] = {
        name: str(Path(getattr(config, name)).absolute()) for name in ("model", "adapter", "data")
        if getattr(config, name) and Path(getattr(config, name)).exists()}
    config = attrs.evolve(config, output=str(output), **absolute)
    assert config.model is not None and config.hook is not None and config.data is not None  # (checked above)
    resume_from = ckpt.find_checkpoint(config.resume) if config.resume else None
    state = ckpt.read_state(resume_from) if resume_from else {}
    if state and state["trainer"] != TRAINER_NAME:
        raise LazarusError(f"--resume {resume_from}: written by the {state['trainer']!r} trainer, not `lazarus sae train`")
    if resume_from is None and ((output / ckpt.CHECKPOINTS_DIR).exists() or (output / "cfg.json").exists()):
        raise LazarusError(f"--output {config.output} already holds an SAE run; continue it with --resume "
                           f"{config.output}, or choose another --output")
    if model is None:
        from lazarus_introspect.cli_common import load

        model, tokenizer, _ = load(config.model, config.adapter)
    if config.hook not in set(model.hook_names()):
        raise LazarusError(f"--hook {config.hook}: this model does not fire it; hook names look like "
                           f"blocks.0.hook_resid_post (this model has {len(model.blocks)} layers)")
    if config.architecture == "topk" and config.k > config.width:
        raise LazarusError(f"--k {config.k} is more than --width {config.width}")

    stream = ActivationStream(model, tokenizer, config.hook, config.data, seq_len=config.seq_len,
                              model_batch=config.model_batch, batch_size=config.batch_size,
                              buffer_size=config.buffer_size, seed=config.seed + int(state.get("step", 0)),
                              position=state.get("data_position"))
    batches = iter(stream)
    rng = np.random.default_rng(config.seed + 7919 + int(state.get("step", 0)))
    model_name = str(config.model)
    if resume_from is not None:
        start_step, scale = int(state["step"]), float(state["scale"])
        trained = load_sae(resume_from)  # folded; the exact training weights are in TRAINING_WEIGHTS
        raw = cast("dict[str, mx.array]", mx.load(str(resume_from / TRAINING_WEIGHTS)))  # (safetensors: a dict)
        sae = trained
        sae.update({k: raw[k] for k in ("W_enc", "W_dec", "b_enc", "b_dec")})
        last_fired = np.array(raw["last_fired"]).astype(np.int64)
    else:
        start_step = 0
        first = next(batches)
        scale = math.sqrt(first.shape[1] / max(float((first ** 2).sum(axis=1).mean()), 1e-12))
        sae = init_sae(config, first.shape[1], first.mean(axis=0) * scale, model_name)
        last_fired = np.zeros(config.width, dtype=np.int64)

    optimizer = optim.Adam(learning_rate=_schedule(config.learning_rate, config.max_steps))
    optimizer.init(sae.trainable_parameters())
    if resume_from is not None:
        optimizer.state = tree_unflatten(list(ckpt.read_optimizer_state(resume_from).items()))
    mx.eval(sae.parameters(), optimizer.state)
    loss_and_grad = nn_value_and_grad(sae, config)

    def save_checkpoint(step: int) -> Path:
        def write(directory: Path) -> None:
            save_sae(folded(sae, scale), directory)
            mx.save_safetensors(str(directory / TRAINING_WEIGHTS),
                                {**dict(cast("list[tuple[str, mx.array]]", tree_flatten(sae.parameters()))),
                                 "last_fired": mx.array(last_fired.astype(np.int32))})

        record = {"step": step, "trainer": TRAINER_NAME, "config": attrs.asdict(config), "scale": scale,
                  "data_position": dict(stream.position), "rng": ckpt.rng_state()}
        return ckpt.save_checkpoint(output, step, write_weights=write,
                                    optimizer_state=dict(tree_flatten(optimizer.state)), state=record)

    from rich.markup import escape

    from lazarus.paths import OutputLock

    # one live run per output folder (a dead run's lock is taken over, with a note)
    with OutputLock(output) as lock:
        output.mkdir(parents=True, exist_ok=True)
        metrics = MetricsLog(output / "metrics.jsonl")
        if resume_from is not None:
            metrics.drop_after(start_step)
        else:
            (output / "metrics.jsonl").unlink(missing_ok=True)
        result = SAETrainResult(output=output, step=start_step, total_steps=config.max_steps, checkpoint=resume_from)
        log = console.print if console is not None else (lambda *a, **k: None)
        if lock.note:
            log(f"[yellow]Note: {escape(lock.note)}[/]")
        if resume_from is not None:
            log(f"Resuming from {resume_from} at step {start_step}/{config.max_steps}")
        log(f"Training a {config.architecture} SAE ({config.width} features"
            f"{f', k={config.k}' if config.architecture == 'topk' else f', l1={config.l1_coefficient:g}'}) on "
            f"{config.hook} of {config.model}")

        window = {"loss": 0.0, "sse": 0.0, "var": 0.0, "l0": 0.0, "steps": 0, "seconds": 0.0, "resampled": 0}
        step = start_step
        progress = _progress(console)
        with _Stop() as stop, progress:
            task = progress.add_task("sae", total=config.max_steps, completed=start_step, stats="")
            while step < config.max_steps:
                started = time.perf_counter()
                x = mx.array(next(batches)) * scale
                (loss, (sse, features)), grads = loss_and_grad(sae, x)
                optimizer.update(sae, grads)
                sae.W_dec = sae.W_dec / mx.maximum(mx.linalg.norm(sae.W_dec, axis=1, keepdims=True), 1e-8)
                fired = (features > 0).any(axis=0)
                l0 = (features > 0).sum(axis=-1).astype(mx.float32).mean()
                variance = ((x - x.mean(axis=0)) ** 2).sum()
                mx.eval(sae.parameters(), optimizer.state, loss, sse, l0, fired, variance)
                step += 1
                loss_value = float(loss.item())
                if not math.isfinite(loss_value):
                    raise TrainingDiverged(f"training diverged at step {step}: the loss is {loss_value} -- lower "
                                           f"--learning-rate (now {config.learning_rate:g})", step=step,
                                           checkpoint=result.checkpoint)
                last_fired[np.array(fired)] = step
                if config.resample_interval and step % config.resample_interval == 0 and step < config.max_steps * 0.9:
                    dead = np.nonzero(step - last_fired > config.dead_steps)[0]
                    count = resample_dead(sae, optimizer, x, dead, rng)
                    last_fired[dead] = step
                    window["resampled"] += count
                    mx.eval(sae.parameters(), optimizer.state)
                window["loss"] += loss_value
                window["sse"] += float(sse.item())
                window["var"] += float(variance.item())  # type: ignore[arg-type]  # mlx's stub: item() may be complex
                window["l0"] += float(l0.item())
                window["steps"] += 1
                window["seconds"] += time.perf_counter() - started
                if step % config.log_interval == 0 or step == config.max_steps:
                    row = {"split": "train", "step": step, "loss": window["loss"] / window["steps"],
                           "explained_variance": 1 - window["sse"] / max(window["var"], 1e-12),
                           "l0": window["l0"] / window["steps"],
                           "dead_fraction": float((step - last_fired > config.dead_steps).mean()),
                           "resampled": window["resampled"], "learning_rate": float(optimizer.learning_rate.item()),
                           "tokens_per_second": window["steps"] * config.batch_size / max(window["seconds"], 1e-9)}
                    metrics.write(row)
                    result.metrics = row
                    progress.update(task, stats=f"loss {row['loss']:.4g}  EV {row['explained_variance']:.3f}  "
                                                f"L0 {row['l0']:.1f}  dead {row['dead_fraction']:.1%}")
                    window = {k: 0.0 if k != "resampled" else 0 for k in window}
                    window["steps"] = 0
                progress.update(task, completed=step)
                if stop.requested and step < config.max_steps:
                    result.checkpoint = save_checkpoint(step)
                    result.interrupted = True
                    break
                if config.save_interval and step % config.save_interval == 0 and step < config.max_steps:
                    result.checkpoint = save_checkpoint(step)
        result.step = step
        if result.interrupted:
            log(f"[yellow]Interrupted at step {step}/{config.max_steps}.[/] Checkpoint: {result.checkpoint}")
            log(f"Resume with: lazarus sae train --resume {output}", markup=False)
            return result
        result.checkpoint = save_checkpoint(step)
        assert config.data is not None  # (checked above)
        record = provenance.for_model(model, data_files=[p for p in [Path(config.data)] if p.is_file()],
                                      trainer=TRAINER_NAME, hook=config.hook, steps=step)
        save_sae(folded(sae, scale), output, provenance=record)
        final = result.metrics
        log(f"Wrote the SAE to {output}: explained variance {final.get('explained_variance', float('nan')):.3f}, "
            f"L0 {final.get('l0', float('nan')):.1f}, dead {final.get('dead_fraction', float('nan')):.1%}")
        return result


def nn_value_and_grad(sae, config: SAETrainConfig):
    """``fn(sae, x) -> ((loss, (sse, features)), grads)`` for the config's architecture."""
    import mlx.nn as nn

    def loss(module, x):
        return sae_loss(module, x, config.architecture, config.l1_coefficient)

    value_and_grad = nn.value_and_grad(sae, loss)
    return lambda module, x: value_and_grad(module, x)


def _progress(console):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("[bold]sae[/]"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    TextColumn("{task.fields[stats]}"), console=console, disable=console is None)


@click.command("train")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None, metavar="FILE",
              help="TOML/YAML file of settings (keys as the options, e.g. learning_rate).")
def train_command(config_file, **values):
    """Train a sparse autoencoder on a model's activations at --hook (SAELens layout output)."""
    from rich.console import Console

    from lazarus.training import checkpoint as ckpt

    saved = None
    if values.get("resume"):
        saved = ckpt.read_state(ckpt.find_checkpoint(values["resume"]))["config"]
        saved.pop("resume", None)
        if values.get("output") is None:
            values["output"] = saved.get("output") or values["resume"]
    config = build_config(SAETrainConfig, cli_values=values, config_file=config_file, saved=saved)
    train_sae(config, console=Console())


train_command.params[:0] = click_options(SAETrainConfig)
