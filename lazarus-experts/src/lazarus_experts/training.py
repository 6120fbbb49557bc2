"""Training experts with PPO in an environment, and evaluating them against a random policy.

One update (``--steps`` counts them): reset ``num_envs`` copies of the environment (one
:class:`~lazarus_experts.environments.VectorEnv` batch), run the expert until every episode has
ended, then ``epochs`` passes of the clipped PPO loss over the whole batch of episodes. Advantages
(GAE), whitening and the clipped policy/value loss come from :mod:`lazarus.training.rl`, the module
grpo and ppo use too; episodes are the masked rows there (the value after the last step is 0).

Rollout randomness comes from ``(seed, step)`` alone, so a resumed run repeats the straight one.
Each environment copy draws its actions from its own key, so under ``mlx.launch -n N`` every rank
runs ``num_envs / N`` of the copies and the ranks together collect the episodes one process would;
gradients, whitening and the logged figures are summed over ranks and rank 0 alone writes.
Output directory: the expert (``expert_config.json``, ``expert.safetensors``, ``lazarus.json``),
``metrics.jsonl``, ``return.png`` and ``checkpoints/step-N/`` (as the LLM trainers lay them out).
"""

from __future__ import annotations

import json
import math
import random
import shutil
import time
from pathlib import Path
from typing import Any, cast

import attrs
import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten, tree_unflatten

from lazarus.errors import LazarusError, TrainingDiverged
from lazarus.training import checkpoint as ckpt
from lazarus.training import rl
from lazarus.training.metrics import MetricsLog, read_metrics
from lazarus_experts.config import ExpertTrainConfig
from lazarus_experts.environments import VectorEnv, check_trainable, make_environment, to_env_actions
from lazarus_experts.experts import ExpertConfig, create_expert, load_expert, save_expert, write_expert_files
from lazarus_experts.spaces import Discrete

METRICS_FILE = "metrics.jsonl"
RETURN_PNG = "return.png"
TRAINER = "experts-ppo"


@attrs.define
class TrainResult:
    output: Path
    step: int
    first_return: float | None
    last_return: float | None


@attrs.define
class Episodes:
    """A batch of complete episodes, (N, T) per-step arrays; ``mask`` 1 while the episode runs."""

    obs: np.ndarray
    raw: np.ndarray
    logp: np.ndarray
    values: np.ndarray
    rewards: np.ndarray
    mask: np.ndarray

    @property
    def returns(self) -> np.ndarray:
        """Undiscounted return of each episode (N,)."""
        return (self.rewards * self.mask).sum(axis=1)


def collect_episodes(expert, venv: VectorEnv, *, seed: int, key: mx.array | None = None,
                     deterministic: bool = False, max_steps: int = 200, rows: tuple[int, int] | None = None) -> Episodes:
    """Run ``expert`` in every copy of ``venv`` (reset with ``seed``) until all episodes end or
    ``max_steps`` pass (those that have not ended are cut there).

    With ``key``, copy ``i`` samples from its own key at every step. ``rows`` ``(first, total)``
    says that ``venv`` holds copies ``first ..`` of a batch of ``total`` (a rank's share): they get
    the keys, and the reset seeds (``seed + first + i``), those copies get in the whole batch."""
    first, total = rows if rows is not None else (0, venv.num_envs)
    obs = venv.reset(seed + first)
    state = expert.reset(venv.num_envs)
    columns: dict[str, list] = {k: [] for k in ("obs", "raw", "logp", "values", "rewards", "mask")}
    for _ in range(max_steps):
        running = ~venv.done
        if not running.any():
            break
        x = mx.array(obs)
        dist, value, state = expert.step(x, state)
        if deterministic:
            raw = dist.mode() if isinstance(venv.action_space, Discrete) else dist.mean
        else:
            key, sub = (None, None) if key is None else mx.random.split(key)
            if sub is not None:  # one key per copy of the whole batch; this venv's share of them
                sub = mx.random.split(sub, total)[first:first + venv.num_envs]
            raw = dist.sample(sub)[1]
        logp = dist.log_prob(raw)
        action = dist.to_action(raw)
        mx.eval(raw, logp, action, state, *(() if value is None else (value,)))
        columns["obs"].append(obs)
        columns["raw"].append(np.array(raw))
        columns["logp"].append(np.array(logp))
        columns["values"].append(np.zeros(venv.num_envs, np.float32) if value is None else np.array(value))
        obs, rewards, _, _ = venv.step(to_env_actions(venv.action_space, np.array(action)))
        columns["rewards"].append(rewards)
        columns["mask"].append(running.astype(np.float32))
    stacked = {k: np.stack(v, axis=1) for k, v in columns.items()}
    return Episodes(**stacked)


def random_returns(env_name: str, episodes: int, seed: int, env_options: dict | None = None,
                   max_steps: int = 200) -> np.ndarray:
    """Returns of a uniformly random policy over ``episodes`` episodes (seeds ``seed``, ``seed+1``...)."""
    venv = VectorEnv(lambda: make_environment(env_name, env_options), episodes)
    rng = random.Random(seed)
    venv.reset(seed)
    total = np.zeros(episodes, dtype=np.float64)
    for _ in range(max_steps):
        if venv.done.all():
            break
        _, rewards, _, _ = venv.step([venv.action_space.sample(rng) for _ in range(episodes)])
        total += rewards
    return total


def expert_returns(expert, env_name: str, episodes: int, seed: int, env_options: dict | None = None,
                   deterministic: bool = True, max_steps: int = 200) -> np.ndarray:
    """Returns of ``expert`` over ``episodes`` episodes (seeds ``seed``, ``seed+1``...), all in one batch."""
    venv = VectorEnv(lambda: make_environment(env_name, env_options), episodes)
    key = mx.random.key(seed)
    return collect_episodes(expert, venv, seed=seed, key=key, deterministic=deterministic,
                            max_steps=max_steps).returns.astype(np.float64)


def mean_and_interval(values) -> tuple[float, float]:
    """Mean and the half-width of its 95% normal interval."""
    values = np.asarray(values, dtype=np.float64)
    half = 1.96 * values.std(ddof=1) / math.sqrt(len(values)) if len(values) > 1 else 0.0
    return float(values.mean()), float(half)


class ExpertTrainer:
    """PPO for one expert in one environment; ``train()`` runs it and returns a :class:`TrainResult`."""

    def __init__(self, config: ExpertTrainConfig, console=None, show_progress: bool = True, world=None) -> None:
        from lazarus.training.distributed import init_world

        self.config = config
        self.world = world or init_world()
        self.console = console if self.world.is_main else None
        self.show_progress = show_progress and self.console is not None
        self.output = Path(config.output)

    def log(self, message: str) -> None:
        if self.console is not None:
            self.console.print(message, soft_wrap=True)

    def _check(self) -> None:
        c = self.config
        for name in ("steps", "num_envs", "epochs", "max_episode_steps"):
            if getattr(c, name) < 1:
                raise LazarusError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(c, name)}")
        if not 0 < c.gamma <= 1 or not 0 <= c.lam <= 1:
            raise LazarusError(f"--gamma must be in (0, 1] and --lam in [0, 1], got {c.gamma} and {c.lam}")
        if c.num_envs % self.world.size:
            raise LazarusError(f"--num-envs {c.num_envs} is the whole batch and must divide evenly over "
                               f"{self.world.size} ranks")

    def train(self) -> TrainResult:
        """Train (or resume) to ``steps`` updates, holding the output's lock: one live run per output
        directory, a dead run's lock taken over with a note, --overwrite never deletes a live run's files."""
        from lazarus.paths import OutputLock

        self._check()
        c = self.config
        check_trainable(make_environment(c.env, c.env_options), c.env)  # bad --env-option: nothing written
        if not self.world.is_main:
            return self._train()
        with OutputLock(self.output) as lock:
            if lock.note and self.console is not None:
                self.console.print(f"Note: {lock.note}", markup=False, highlight=False)
            return self._train()

    def _train(self) -> TrainResult:
        c = self.config
        env = make_environment(c.env, c.env_options)
        check_trainable(env, c.env)
        world = self.world
        share = c.num_envs // world.size  # this rank's copies: share * rank ... share * (rank + 1) - 1
        rows = (share * world.rank, c.num_envs)
        venv = VectorEnv(lambda: make_environment(c.env, c.env_options), share)
        mx.random.seed(c.seed)
        expert = create_expert(c.expert, ExpertConfig(
            observation_size=venv.observation_size, action_space=venv.action_space, hidden_size=c.hidden_size,
            num_layers=c.num_layers, value_head=c.value_head))
        optimizer = optim.Adam(learning_rate=c.learning_rate)
        metrics = MetricsLog(self.output / METRICS_FILE, enabled=world.is_main)
        start = 0
        if c.resume:
            start = self._resume(expert, optimizer, metrics)
        elif world.is_main:
            self._fresh_output()
        world.barrier()
        mx.eval(expert.parameters())
        sums = world.sum_floats if world.distributed else None

        def loss_fn(model, obs, raw, old_logp, adv, old_values, returns, mask, count):
            # count: steps of every rank's episodes, so the rank gradients add up to the batch's
            dist, values, _ = model.sequence(obs)
            values = values if values is not None else mx.zeros_like(old_values)
            total, _, parts = rl.ppo_loss(
                dist.log_prob(raw), old_logp, adv, values, old_values, returns, mask, dist.entropy(),
                epsilon=c.clip, value_coef=c.value_coef if c.value_head else 0.0, entropy_coef=c.entropy_coef)
            return total / count, {k: v / count for k, v in parts.items()}

        grad_fn = nn.value_and_grad(expert, loss_fn)
        self.log(f"Training a [bold]{c.expert}[/] expert (hidden {c.hidden_size}, {c.num_layers} layer(s)) on "
                 f"[bold]{c.env}[/]: {c.steps} PPO updates of {c.num_envs} episodes, {c.epochs} epochs each")
        first = last = None
        saved = Path(c.resume) if c.resume else None  # the last good checkpoint
        with self._progress() as progress:
            task = progress.add_task("experts ppo", total=c.steps, completed=start, ret="-")
            for step in range(start + 1, c.steps + 1):
                began = time.perf_counter()
                key = mx.random.key(c.seed * 1_000_003 + step)
                batch = collect_episodes(expert, venv, seed=c.seed * 1_000_003 + step * c.num_envs, key=key,
                                         max_steps=c.max_episode_steps, rows=rows)
                adv, returns = rl.gae(batch.rewards, batch.values, batch.mask, gamma=c.gamma, lam=c.lam)
                adv = rl.whiten(adv, batch.mask, sum_over_ranks=sums)
                ret = batch.returns.astype(np.float64)
                totals = [float(batch.mask.sum()), float(ret.sum()), float(np.square(ret).sum()),
                          float((batch.rewards * batch.mask).sum())]
                env_steps, return_sum, return_sq, reward_sum = world.sum_floats(totals)
                arrays = [mx.array(a) for a in (batch.obs, batch.raw, batch.logp, adv, batch.values, returns,
                                                batch.mask)] + [mx.array(max(env_steps, 1.0))]
                for _ in range(c.epochs):
                    (loss, parts), grads = grad_fn(expert, *arrays)
                    if world.distributed:
                        loss, parts, grads = world.all_sum((loss, parts, grads))
                    optimizer.update(expert, grads)
                    mx.eval(expert.parameters(), optimizer.state, loss, parts)
                episode_return = return_sum / c.num_envs
                first = episode_return if first is None else first
                last = episode_return
                row: dict[str, Any] = {"split": "train", "step": step, "loss": float(loss), "learning_rate": c.learning_rate,
                       "return": episode_return,
                       "return_std": float(np.sqrt(max(return_sq / c.num_envs - episode_return ** 2, 0.0))),
                       "reward_mean": reward_sum / max(env_steps, 1),
                       "episode_length": env_steps / c.num_envs,
                       "env_steps_per_second": env_steps / max(time.perf_counter() - began, 1e-9),
                       **{k: float(v) for k, v in parts.items()}}
                metrics.write(row)
                self._guard(expert, step, row["loss"], saved)
                progress.update(task, advance=1, ret=f"{episode_return:.3f}")
                if c.save_interval and step % c.save_interval == 0 and step < c.steps:
                    self._checkpoint(expert, optimizer, step)
                    saved = self.output / ckpt.CHECKPOINTS_DIR / ckpt.checkpoint_name(step)
        if world.is_main:
            save_expert(expert, self.output, **prov_extra(c, last))
            plot_returns(self.output / METRICS_FILE, self.output / RETURN_PNG, title=f"{c.expert} on {c.env}")
        self._checkpoint(expert, optimizer, c.steps)
        self.log(f"[green]Done:[/] {c.steps} updates; expert in {self.output}; mean return "
                 f"{first if first is None else round(first, 3)} -> {last if last is None else round(last, 3)}; "
                 f"metrics: {self.output / METRICS_FILE}, curve: {self.output / RETURN_PNG}")
        return TrainResult(self.output, c.steps, first, last)

    def _guard(self, expert, step: int, loss: float, saved) -> None:
        """The divergence guard of ``lazarus train``: a non-finite loss or weights stop the run before
        anything is saved (the last good checkpoint stays), one line, exit 2."""
        finite = all(bool(mx.all(mx.isfinite(v)).item())
                     for _, v in cast("list[tuple[str, mx.array]]", tree_flatten(expert.parameters())))
        if math.isfinite(loss) and finite:
            return
        what = f"the loss is {loss}" if not math.isfinite(loss) else "the expert's weights are no longer finite"
        kept = f"; the last good checkpoint is {saved}" if saved else "; no checkpoint was written"
        raise TrainingDiverged(f"training diverged at step {step}: {what} -- lower --learning-rate "
                               f"(now {self.config.learning_rate:g}){kept}", step=step, checkpoint=saved)

    def _fresh_output(self) -> None:
        """Refuse to mix a fresh run into an earlier run's output unless ``overwrite`` is set (as
        ``lazarus train`` does); with it, the earlier checkpoints, metrics and curve go first."""
        previous = self.output / ckpt.CHECKPOINTS_DIR
        if previous.exists():
            if not self.config.overwrite:
                raise LazarusError(f"{self.output} already holds a training run ({previous}); continue it with "
                                   f"--resume {self.output}, start afresh there with --overwrite, or choose "
                                   "another --output")
            shutil.rmtree(previous)
            for name in (METRICS_FILE, RETURN_PNG):
                (self.output / name).unlink(missing_ok=True)
        self.output.mkdir(parents=True, exist_ok=True)
        (self.output / METRICS_FILE).unlink(missing_ok=True)

    def _progress(self):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("return {task.fields[ret]}"), TimeRemainingColumn(),
                        console=self.console, disable=not self.show_progress, transient=False)

    def _checkpoint(self, expert, optimizer, step: int) -> None:
        """Rank 0 writes the checkpoint; every rank waits for it."""
        c = self.config
        if self.world.is_main:
            ckpt.save_checkpoint(
                self.output, step, write_weights=lambda d: write_expert_files(expert, d, **prov_extra(c, None)),
                optimizer_state=dict(tree_flatten(optimizer.state)),
                state={"step": step, "trainer": TRAINER, "config": c.to_dict()}, keep=c.keep_checkpoints)
        self.world.barrier()

    def _resume(self, expert, optimizer, metrics: MetricsLog) -> int:
        c = self.config
        assert c.resume is not None  # (_train calls this with --resume only)
        where = ckpt.find_checkpoint(c.resume)
        state = ckpt.read_state(where)
        if state["trainer"] != TRAINER:
            raise LazarusError(f"--resume {c.resume}: a checkpoint of {state['trainer']!r}, not of expert training")
        saved = state["config"]
        for key in ("expert", "env", "env_options", "hidden_size", "num_layers", "value_head", "num_envs", "seed"):
            if saved.get(key) != getattr(c, key):
                raise LazarusError(f"--resume {c.resume}: the checkpoint was trained with {key}={saved.get(key)!r}, "
                                   f"this run has {getattr(c, key)!r}; use the same value to resume")
        loaded = load_expert(where)
        expert.update(loaded.parameters())
        optimizer.state = tree_unflatten(list(ckpt.read_optimizer_state(where).items()))
        step = int(state["step"])
        previous = Path(where).parent.parent / METRICS_FILE
        if self.world.is_main and previous.is_file() and previous.resolve() != metrics.path.resolve():
            metrics.path.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(previous, metrics.path)
        metrics.drop_after(step)
        self.log(f"Resuming from {where} (step {step})")
        return step


def prov_extra(c: ExpertTrainConfig, last_return: float | None) -> dict[str, Any]:
    return {"command": "experts train", "trainer": TRAINER, "environment": c.env,
            "environment_options": c.env_options, "training": c.to_dict(), "final_return": last_return}


def plot_returns(metrics_path: Path, png_path: Path, title: str = "") -> Path:
    """Draw the mean episode return against the update step into ``png_path`` (temp + rename)."""

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in read_metrics(metrics_path) if "return" in r]
    figure, axes = plt.subplots(figsize=(7, 4.2), dpi=110)
    if rows:
        steps = [r["step"] for r in rows]
        mean = np.array([r["return"] for r in rows])
        std = np.array([r.get("return_std", 0.0) for r in rows])
        axes.plot(steps, mean, color="tab:blue", linewidth=1.5, label="mean episode return")
        axes.fill_between(steps, mean - std, mean + std, color="tab:blue", alpha=0.15, label="± 1 std")
        axes.legend()
    axes.set_xlabel("PPO update")
    axes.set_ylabel("episode return")
    axes.set_title(title or "Expert training")
    axes.grid(alpha=0.3)
    figure.tight_layout()
    from lazarus.io import atomic_path

    try:
        with atomic_path(png_path, suffix=png_path.suffix) as tmp:
            figure.savefig(tmp)
    finally:
        plt.close(figure)
    return png_path


def read_training_env(expert_dir: str | Path) -> tuple[str | None, dict]:
    """The environment (name, options) an expert directory was trained in, from its lazarus.json."""
    path = Path(expert_dir) / "lazarus.json"
    if not path.is_file():
        return None, {}
    record = json.loads(path.read_text())
    return record.get("environment"), record.get("environment_options") or {}
