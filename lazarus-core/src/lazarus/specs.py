"""What a plugin registers: one attrs class per kind.

Specs are cheap, frozen descriptions. The heavy object behind a spec (a model class, a trainer,
a probe) is named by ``entry`` as ``"package.module:attribute"`` (or just ``"package.module"``)
and imported only by :meth:`Spec.load`, so listing plugins never imports mlx.
"""

from __future__ import annotations

import importlib
import re
from typing import Any, ClassVar

import attrs

_KEBAB = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")


def _kebab(instance, attribute, value):
    if not isinstance(value, str) or not _KEBAB.match(value):
        raise ValueError(
            f"{type(instance).__name__}.{attribute.name} must be kebab-case "
            f"(lowercase letters, digits and single dashes), got {value!r}"
        )


def _entry(instance, attribute, value):
    module, _, attr = value.partition(":")
    if not module or not all(part.isidentifier() for part in module.split(".")) or (
        attr and not all(part.isidentifier() for part in attr.split("."))
    ):
        raise ValueError(
            f"{type(instance).__name__}.entry must look like 'package.module:attribute', got {value!r}"
        )


def _tuple_of_str(value):
    if isinstance(value, str):
        return (value,)
    return tuple(value)


@attrs.frozen(kw_only=True)
class Spec:
    """Base of every spec: a unique kebab-case ``name``, a one-line ``description`` and an ``entry``."""

    kind: ClassVar[str] = "thing"
    plural: ClassVar[str] = "things"
    #: the first-party distribution that ships this kind, used in "install one with ..." hints
    install_hint: ClassVar[str] = ""

    name: str = attrs.field(validator=_kebab)
    entry: str = attrs.field(validator=_entry)
    description: str = ""

    def load(self) -> Any:
        """Import and return the object named by ``entry`` (a module when no attribute is given)."""
        module_name, _, attr = self.entry.partition(":")
        obj = importlib.import_module(module_name)
        for part in attr.split(".") if attr else ():
            obj = getattr(obj, part)
        return obj

    def summary(self) -> dict:
        """JSON-ready description, as shown by ``lazarus plugins show``."""
        return {
            field.name: (list(value) if isinstance(value, tuple) else value)
            for field in attrs.fields(type(self))
            for value in [getattr(self, field.name)]
        }


@attrs.frozen(kw_only=True)
class FamilySpec(Spec):
    """A model family.

    ``model_types`` are the ``config.json`` ``model_type`` values it loads; ``architectures`` the
    ``architectures`` entries used as a fallback. ``entry`` names the family module, which defines
    ``ModelArgs`` (with ``from_hf_config(dict)``), ``Model`` and optionally ``sanitize(weights, args)``
    (default: :func:`lazarus.models.transformer.sanitize_weights`)
    and ``tiny_config(vocab_size)``.
    """

    kind: ClassVar[str] = "family"
    plural: ClassVar[str] = "families"
    install_hint: ClassVar[str] = "lazarus-families"

    model_types: tuple[str, ...] = attrs.field(converter=_tuple_of_str, factory=tuple)
    architectures: tuple[str, ...] = attrs.field(converter=_tuple_of_str, factory=tuple)


@attrs.frozen(kw_only=True)
class AdapterSpec(Spec):
    """An adapter type (``lora``, ``dora``, ``full``): ``entry`` names its implementation."""

    kind: ClassVar[str] = "adapter"
    plural: ClassVar[str] = "adapters"
    install_hint: ClassVar[str] = "lazarus-core"


@attrs.frozen(kw_only=True)
class TrainerSpec(Spec):
    """A trainer: ``entry`` names its Trainer class; ``data_format`` the JSONL records it reads."""

    kind: ClassVar[str] = "trainer"
    plural: ClassVar[str] = "trainers"
    install_hint: ClassVar[str] = "lazarus-trainers"

    data_format: str = "sft"


@attrs.frozen(kw_only=True)
class CheckpointFormatSpec(Spec):
    """A checkpoint format: ``entry`` names an object with ``read``/``write`` as its flags say."""

    kind: ClassVar[str] = "checkpoint-format"
    plural: ClassVar[str] = "checkpoint-formats"
    install_hint: ClassVar[str] = "lazarus-core"

    can_read: bool = True
    can_write: bool = True


@attrs.frozen(kw_only=True)
class ProbeSpec(Spec):
    """An introspection probe run as ``lazarus introspect NAME``: ``entry`` names its click command."""

    kind: ClassVar[str] = "probe"
    plural: ClassVar[str] = "probes"
    install_hint: ClassVar[str] = "lazarus-introspect"


@attrs.frozen(kw_only=True)
class RewardFunctionSpec(Spec):
    """A reward function named by ``entry``, used as ``--reward NAME[:WEIGHT]``.

    Batched (the default, as in TRL): ``fn(prompts, completions, records) -> list[float | None]``,
    one value per completion (``None``: this reward does not apply to that row). ``prompts[i]`` is
    the record's prompt (text or messages), ``completions[i]`` the generated text, ``records[i]`` the
    record's other fields plus ``completion_ids`` (the generated token ids). ``batched=False``
    (since 0.2) marks a per-row function ``fn(prompt, completion, **record) -> float | None``.
    """

    kind: ClassVar[str] = "reward-function"
    plural: ClassVar[str] = "reward-functions"
    install_hint: ClassVar[str] = "lazarus-trainers"

    batched: bool = True


@attrs.frozen(kw_only=True)
class ExpertSpec(Spec):
    """A small expert model (GRU/LSTM ...) an LLM can delegate to: ``entry`` names its class, built
    as ``cls(config)`` from an ``ExpertConfig`` of lazarus-experts, with ``reset(batch_size) -> state``
    and ``step(obs, state) -> (action distribution, value, state)`` (docs/experts.md)."""

    kind: ClassVar[str] = "expert"
    plural: ClassVar[str] = "experts"
    install_hint: ClassVar[str] = "lazarus-experts"


@attrs.frozen(kw_only=True)
class EnvironmentSpec(Spec):
    """An environment experts (and RL trainers) act in, since 0.2. ``entry`` names a class whose
    instances have ``name``, ``observation_space`` and ``action_space`` attributes (spaces of
    lazarus-experts: ``Discrete``, ``Box``, ``Text``), ``reset(seed=None) -> observation`` and
    ``step(action) -> (observation, reward, done, info)`` (docs/experts.md)."""

    kind: ClassVar[str] = "environment"
    plural: ClassVar[str] = "environments"
    install_hint: ClassVar[str] = "lazarus-experts"


#: hook name -> the spec class its ``register`` callback accepts
HOOK_KINDS: dict[str, type[Spec]] = {
    "register_families": FamilySpec,
    "register_adapters": AdapterSpec,
    "register_trainers": TrainerSpec,
    "register_checkpoint_formats": CheckpointFormatSpec,
    "register_probes": ProbeSpec,
    "register_reward_functions": RewardFunctionSpec,
    "register_experts": ExpertSpec,
    "register_environments": EnvironmentSpec,
}

#: kind name ("trainer") -> spec class
KINDS: dict[str, type[Spec]] = {cls.kind: cls for cls in HOOK_KINDS.values()}
