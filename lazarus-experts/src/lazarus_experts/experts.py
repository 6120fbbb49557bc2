"""Recurrent experts (GRU, LSTM): small batched policies an LLM can delegate to.

Contract of an expert class (what ``ExpertSpec.entry`` names; see docs/experts.md):

- ``cls(config: ExpertConfig)`` builds it, an ``mlx.nn.Module``;
- ``reset(batch_size) -> state``;
- ``step(obs (B, observation_size), state) -> (distribution, value (B,) or None, state)``, the
  distribution one of :mod:`lazarus_experts.distributions` for ``config.action_space``;
- ``sequence(obs (B, T, observation_size), state=None) -> (distribution over (B, T), values (B, T)
  or None, state)``: the same as ``T`` calls of ``step``, used for training.

Saved as a directory: ``expert_config.json`` (the expert's registered name and its config),
``expert.safetensors`` and ``lazarus.json``. :class:`ExpertRegistry` keeps named *instances*
(``adder``, ``controller``...) and saves them together.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, cast

import attrs
import mlx.core as mx
import mlx.nn as nn

from lazarus.errors import LazarusError
from lazarus.specs import KEBAB_CASE
from lazarus_experts.distributions import Categorical, SquashedNormal
from lazarus_experts.spaces import Box, Discrete, as_space

CONFIG_FILE = "expert_config.json"
WEIGHTS_FILE = "expert.safetensors"
REGISTRY_FILE = "experts.json"
FORMAT = 1
_NAME = KEBAB_CASE  # the one kebab-case rule (lazarus.specs)


def _positive(instance, attribute, value):
    if value < 1:
        raise LazarusError(f"expert {attribute.name} must be >= 1, got {value}")


def _action_space(value):
    space = as_space(value, "action_space")
    if isinstance(space, Box) and not space.bounded:
        raise LazarusError(f"a continuous action space needs finite bounds, got low={space.low} high={space.high}")
    return space


@attrs.frozen(kw_only=True)
class ExpertConfig:
    """What an expert is built from: its input size, the actions it takes and its size."""

    observation_size: int = attrs.field(converter=int, validator=_positive)
    action_space: Discrete | Box = attrs.field(converter=_action_space)
    hidden_size: int = attrs.field(default=64, converter=int, validator=_positive)
    num_layers: int = attrs.field(default=1, converter=int, validator=_positive)
    value_head: bool = True

    def to_dict(self) -> dict:
        return {"observation_size": self.observation_size, "action_space": self.action_space.to_dict(),
                "hidden_size": self.hidden_size, "num_layers": self.num_layers, "value_head": self.value_head}

    @classmethod
    def from_dict(cls, data: dict, where: str = "expert config") -> ExpertConfig:
        known = {f.name for f in attrs.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise LazarusError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        try:
            return cls(**data)
        except TypeError as exc:
            raise LazarusError(f"{where}: {exc}") from None


class RecurrentExpert(nn.Module):
    """Shared body of the GRU and LSTM experts: stacked recurrent layers, a policy head for the
    action space and an optional value head. Subclasses set ``cell`` ("gru" or "lstm")."""

    cell = "gru"

    def __init__(self, config: ExpertConfig) -> None:
        super().__init__()
        self.config = config
        layer = nn.GRU if self.cell == "gru" else nn.LSTM
        sizes = [config.observation_size] + [config.hidden_size] * config.num_layers
        self.layers = [layer(sizes[i], sizes[i + 1]) for i in range(config.num_layers)]
        space = config.action_space
        self.policy = nn.Linear(config.hidden_size, space.n if isinstance(space, Discrete) else space.size)
        if isinstance(space, Box):
            self.log_std = mx.full((space.size,), -0.5)
        if config.value_head:
            self.value = nn.Linear(config.hidden_size, 1)

    # -- state ---------------------------------------------------------------------------------
    def reset(self, batch_size: int = 1) -> list:
        """The initial recurrent state for ``batch_size`` rows: one entry per layer (an array
        (B, hidden) for a GRU, a pair ``(hidden, cell)`` for an LSTM)."""
        zeros = mx.zeros((batch_size, self.config.hidden_size))
        return [zeros if self.cell == "gru" else (zeros, zeros) for _ in self.layers]

    # -- forward -------------------------------------------------------------------------------
    def _body(self, x: mx.array, state: list | None) -> tuple[mx.array, list]:
        state = state if state is not None else self.reset(x.shape[0])
        new_state: list = []
        for layer, layer_state in zip(self.layers, state, strict=True):
            if self.cell == "gru":
                x = layer(x, hidden=layer_state)
                new_state.append(x[:, -1])
            else:
                x, cells = cast(nn.LSTM, layer)(x, hidden=layer_state[0], cell=layer_state[1])  # (cell "lstm")
                new_state.append((x[:, -1], cells[:, -1]))
        return x, new_state

    def _heads(self, h: mx.array):
        space = self.config.action_space
        out = self.policy(h)
        dist: Categorical | SquashedNormal
        if isinstance(space, Discrete):
            dist = Categorical(out)
        else:
            dist = SquashedNormal(out, self.log_std, space.low, space.high)
        value = self.value(h)[..., 0] if self.config.value_head else None
        return dist, value

    def step(self, obs: mx.array, state: list | None = None):
        """One step for a batch: ``obs`` (B, observation_size) -> ``(distribution, value (B,) or
        None, new state)``."""
        self._check(obs, 2)
        h, state = self._body(obs.astype(mx.float32)[:, None, :], state)
        dist, value = self._heads(h[:, 0])
        return dist, value, state

    def sequence(self, obs: mx.array, state: list | None = None):
        """``T`` steps at once: ``obs`` (B, T, observation_size) -> ``(distribution over (B, T),
        values (B, T) or None, state after the last step)``."""
        self._check(obs, 3)
        h, state = self._body(obs.astype(mx.float32), state)
        dist, value = self._heads(h)
        return dist, value, state

    def _check(self, obs: mx.array, ndim: int) -> None:
        if obs.ndim != ndim or obs.shape[-1] != self.config.observation_size:
            want = "(B, observation_size)" if ndim == 2 else "(B, T, observation_size)"
            raise LazarusError(f"{self.cell} expert: observations must be {want} with observation_size "
                               f"{self.config.observation_size}, got shape {tuple(obs.shape)}")

    def __call__(self, obs: mx.array, state: list | None = None):
        return self.sequence(obs, state)


class GRUExpert(RecurrentExpert):
    """A GRU expert (``--expert gru``)."""

    cell = "gru"


class LSTMExpert(RecurrentExpert):
    """An LSTM expert (``--expert lstm``)."""

    cell = "lstm"


# -- building, saving, loading -------------------------------------------------------------------
def expert_class(kind: str) -> type:
    """The class registered under expert name ``kind`` (``gru``, ``lstm`` or a plugin's)."""
    from lazarus.plugins import get

    return get("expert", kind).load()


def create_expert(kind: str, config: ExpertConfig | dict) -> nn.Module:
    """A fresh expert of the registered kind ``kind``, tagged with that name for saving."""
    if isinstance(config, dict):
        config = ExpertConfig.from_dict(config)
    expert = expert_class(kind)(config)
    expert.kind = kind
    return expert


def act(expert, observations, deterministic: bool = True) -> list:
    """Run ``expert`` over one episode's observations (a list of vectors, batch 1) and return its
    actions as plain Python values (an int per step, or a list of floats): what a delegation gets."""
    obs = mx.array([[list(map(float, o)) for o in observations]], dtype=mx.float32)
    dist, _, _ = expert.sequence(obs)
    actions = dist.mode() if deterministic else dist.sample()[0]
    return actions[0].tolist()


def save_expert(expert, path: str | Path, **provenance: Any) -> Path:
    """Write ``expert`` to directory ``path`` atomically: config, weights and ``lazarus.json``
    (``provenance`` keys are added to it, e.g. ``environment``, ``steps``). Other files already in
    ``path`` (a training log) are kept."""
    from lazarus.io import atomic_directory
    from lazarus.provenance import FILENAME

    path = Path(path)
    owned = {CONFIG_FILE, WEIGHTS_FILE, FILENAME}
    with atomic_directory(path, owned=lambda name: name in owned) as tmp:
        write_expert_files(expert, tmp, **provenance)
    return path


def write_expert_files(expert, directory: Path, **provenance: Any) -> None:
    """The files of :func:`save_expert`, written into an existing ``directory`` (not atomic)."""
    from mlx.utils import tree_flatten

    from lazarus import provenance as prov

    kind = getattr(expert, "kind", None) or getattr(expert, "cell", None)
    if kind is None:
        raise LazarusError("save_expert: the expert has no registered name; build it with create_expert(kind, config)")
    directory = Path(directory)
    weights = dict(tree_flatten(expert.parameters()))
    mx.eval(list(weights.values()))
    mx.save_safetensors(str(directory / WEIGHTS_FILE), weights)
    config = {"format": FORMAT, "expert": kind, "config": expert.config.to_dict()}
    (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    prov.write(directory, prov.collect(config=directory / CONFIG_FILE, expert=kind, **provenance))


def load_expert(path: str | Path) -> nn.Module:
    """An expert saved by :func:`save_expert` (its class is looked up by the saved name)."""
    path = Path(path)
    config_path = path / CONFIG_FILE
    if not config_path.is_file():
        raise LazarusError(f"{path}: not an expert directory (no {CONFIG_FILE})")
    try:
        saved = json.loads(config_path.read_text())
    except json.JSONDecodeError as exc:
        raise LazarusError(f"{config_path}: line {exc.lineno}: not valid JSON ({exc.msg})") from None
    for key in ("expert", "config"):
        if key not in saved:
            raise LazarusError(f"{config_path}: missing key {key!r}")
    expert = create_expert(saved["expert"], ExpertConfig.from_dict(saved["config"], str(config_path)))
    weights_path = path / WEIGHTS_FILE
    if not weights_path.is_file():
        raise LazarusError(f"{weights_path}: not found; the expert directory is incomplete")
    try:
        expert.load_weights(str(weights_path), strict=True)
    except ValueError as exc:
        raise LazarusError(f"{weights_path}: does not fit a {saved['expert']} expert with this config "
                           f"({' '.join(str(exc).split())})") from None
    mx.eval(expert.parameters())
    return expert


class ExpertRegistry:
    """Named expert instances (several of one kind, e.g. ``adder`` and ``controller``), saved and
    loaded together: ``DIR/experts.json`` lists them, ``DIR/NAME/`` holds each one."""

    def __init__(self, experts: dict[str, Any] | None = None) -> None:
        self._experts: dict[str, Any] = {}
        for name, expert in (experts or {}).items():
            self.add(name, expert)

    def add(self, name: str, expert) -> None:
        if not isinstance(name, str) or not _NAME.match(name):
            raise LazarusError(f"expert instance name {name!r} must be kebab-case (e.g. adder, arm-controller)")
        if name in self._experts:
            raise LazarusError(f"an expert instance named {name!r} is already registered")
        self._experts[name] = expert

    def get(self, name: str):
        if name not in self._experts:
            known = ", ".join(self._experts) or "none"
            raise LazarusError(f"no expert instance named {name!r}; registered: {known}")
        return self._experts[name]

    def names(self) -> list[str]:
        return list(self._experts)

    def __contains__(self, name: object) -> bool:
        return name in self._experts

    def __len__(self) -> int:
        return len(self._experts)

    def save(self, path: str | Path) -> Path:
        """Write every instance under ``path`` (one atomic directory)."""
        from lazarus import provenance as prov
        from lazarus.io import atomic_directory

        path = Path(path)
        with atomic_directory(path) as tmp:
            for name, expert in self._experts.items():
                (tmp / name).mkdir()
                write_expert_files(expert, tmp / name, instance=name)
            index = {"format": FORMAT, "experts": {name: getattr(e, "kind", None) or getattr(e, "cell", None)
                                                 for name, e in self._experts.items()}}
            (tmp / REGISTRY_FILE).write_text(json.dumps(index, indent=2) + "\n")
            prov.write(tmp, prov.collect(config=tmp / REGISTRY_FILE, command="experts registry"))
        return path

    @classmethod
    def load(cls, path: str | Path) -> ExpertRegistry:
        path = Path(path)
        index_path = path / REGISTRY_FILE
        if not index_path.is_file():
            if (path / CONFIG_FILE).is_file():  # a single expert directory: one instance named after it
                name = re.sub(r"[^a-z0-9]+", "-", path.name.lower()).strip("-") or "expert"
                return cls({name: load_expert(path)})
            raise LazarusError(f"{path}: not an expert registry (no {REGISTRY_FILE}) or expert directory")
        try:
            index = json.loads(index_path.read_text())
        except json.JSONDecodeError as exc:
            raise LazarusError(f"{index_path}: line {exc.lineno}: not valid JSON ({exc.msg})") from None
        return cls({name: load_expert(path / name) for name in index.get("experts", {})})
