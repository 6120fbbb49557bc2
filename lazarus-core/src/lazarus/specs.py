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

#: a kebab-case name: lowercase letters and digits in words joined by single dashes. Spec names
#: may start with a digit; ``plugins new`` also wants a leading letter (a Python-importable package).
KEBAB_CASE = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")


def _kebab(instance, attribute, value):
    if not isinstance(value, str) or not KEBAB_CASE.match(value):
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


@attrs.frozen
class Scaffold:
    """What ``lazarus plugins new KIND NAME`` needs to write a plugin of one kind."""

    #: the implementation module the kind's templates write (``PACKAGE/<module>.py``)
    module: str
    #: the distribution's one-line description (``: NAME`` is appended)
    description: str
    #: how a user runs the result (``{name}`` is the plugin's name)
    usage: str
    #: the generated tests build a tiny llama checkpoint, so they need lazarus-families
    needs_families: bool = False
    #: the first-party distribution whose command group runs this kind ("" when the core does)
    runtime_dependency: str = ""


@attrs.frozen(kw_only=True)
class Spec:
    """Base of every spec: a unique kebab-case ``name``, a one-line ``description`` and an ``entry``.

    Each subclass carries everything that knows its kind: the ``hook`` that registers it, its
    ``plural``, the first-party distribution to suggest (``install_hint``), what ``plugins new``
    writes (``scaffold``) and the structural contract its entry must fit (:meth:`entry_problem`).
    """

    kind: ClassVar[str] = "thing"
    plural: ClassVar[str] = "things"
    #: the registration hook in :mod:`lazarus.hookspecs` whose ``register`` accepts this class
    hook: ClassVar[str] = ""
    #: the first-party distribution that ships this kind, used in "install one with ..." hints
    install_hint: ClassVar[str] = ""
    scaffold: ClassVar[Scaffold | None] = None

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

    def entry_problem(self, obj: object) -> str | None:
        """Why ``obj`` (what :attr:`entry` names, already loaded) does not fit this kind's contract,
        or None when it fits. The checks are structural (the attributes the kind's users call)."""
        return None

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
    ``ModelArgs`` (with ``from_hf_config(dict)``), ``Model`` and optionally ``tiny_config(vocab_size)``:
    :class:`lazarus.models.contract.FamilyModule`. ``Model(args)`` is a
    :class:`lazarus.models.contract.CausalModel`; subclassing ``lazarus.models.transformer.CausalLM``
    supplies its defaults (``sanitize``, ``hf_weights``, ``block_class`` ...).
    """

    kind: ClassVar[str] = "family"
    plural: ClassVar[str] = "families"
    install_hint: ClassVar[str] = "lazarus-families"
    hook: ClassVar[str] = "register_families"
    scaffold: ClassVar[Scaffold | None] = Scaffold(
        "family", "A model family for Lazarus",
        "lazarus models create --family {name} --output tiny && lazarus generate --model tiny --prompt Hi")

    model_types: tuple[str, ...] = attrs.field(converter=_tuple_of_str, factory=tuple)
    architectures: tuple[str, ...] = attrs.field(converter=_tuple_of_str, factory=tuple)

    def entry_problem(self, obj: object) -> str | None:
        missing = [name for name in ("ModelArgs", "Model") if not hasattr(obj, name)]
        if missing:
            return f"a family entry names a module defining ModelArgs and Model; missing {', '.join(missing)}"
        return None


@attrs.frozen(kw_only=True)
class AdapterSpec(Spec):
    """An adapter type (``lora``, ``dora``, ``full``): ``entry`` names its implementation."""

    kind: ClassVar[str] = "adapter"
    plural: ClassVar[str] = "adapters"
    install_hint: ClassVar[str] = "lazarus-core"
    hook: ClassVar[str] = "register_adapters"
    scaffold: ClassVar[Scaffold | None] = Scaffold(
        "adapter", "An adapter type for Lazarus",
        "lazarus train sft --model M --data D --fine-tune-type {name}", needs_families=True)

    def entry_problem(self, obj: object) -> str | None:
        missing = [name for name in ("apply", "weights", "fuse") if not callable(getattr(obj, name, None))]
        if missing:
            return f"an adapter entry names an AdapterType instance; missing {', '.join(missing)}()"
        return None


@attrs.frozen(kw_only=True)
class TrainerSpec(Spec):
    """A trainer: ``entry`` names its Trainer class; ``data_format`` the JSONL records it reads."""

    kind: ClassVar[str] = "trainer"
    plural: ClassVar[str] = "trainers"
    install_hint: ClassVar[str] = "lazarus-trainers"
    hook: ClassVar[str] = "register_trainers"
    scaffold: ClassVar[Scaffold | None] = Scaffold(
        "trainer", "A trainer for Lazarus", "lazarus train {name} --model M --data D --output run",
        needs_families=True)

    data_format: str = "sft"

    def entry_problem(self, obj: object) -> str | None:
        from lazarus.training.trainer import Trainer

        if not (isinstance(obj, type) and issubclass(obj, Trainer)):
            return "a trainer entry names a subclass of lazarus.training.trainer.Trainer"
        return None


@attrs.frozen(kw_only=True)
class CheckpointFormatSpec(Spec):
    """A checkpoint format: ``entry`` names an object with ``read``/``write`` as its flags say."""

    kind: ClassVar[str] = "checkpoint-format"
    plural: ClassVar[str] = "checkpoint-formats"
    install_hint: ClassVar[str] = "lazarus-core"
    hook: ClassVar[str] = "register_checkpoint_formats"
    scaffold: ClassVar[Scaffold | None] = Scaffold(
        "checkpoint_format", "A checkpoint format for Lazarus",
        "python -c \"from lazarus import checkpoints; checkpoints.load('{name}', 'DIR')\"")

    can_read: bool = True
    can_write: bool = True

    def entry_problem(self, obj: object) -> str | None:
        needed = [name for name, flag in (("read", self.can_read), ("write", self.can_write)) if flag]
        missing = [name for name in ["detect", *needed] if not callable(getattr(obj, name, None))]
        if missing:
            return f"a checkpoint-format entry names an object with {', '.join(missing)}()"
        return None


@attrs.frozen(kw_only=True)
class ProbeSpec(Spec):
    """An introspection probe run as ``lazarus introspect NAME`` (and as a recipe ``introspect``
    stage): ``entry`` names an operation (:mod:`lazarus.operations`: a function with an options
    class and a typed result) or a click command."""

    kind: ClassVar[str] = "probe"
    plural: ClassVar[str] = "probes"
    install_hint: ClassVar[str] = "lazarus-introspect"
    hook: ClassVar[str] = "register_probes"
    scaffold: ClassVar[Scaffold | None] = Scaffold(
        "probe", "An introspection probe for Lazarus",
        "lazarus introspect {name} --model M --prompt 'The answer is'", needs_families=True,
        runtime_dependency="lazarus-introspect")

    def entry_problem(self, obj: object) -> str | None:
        import click

        from lazarus.operations import Operation

        if not isinstance(obj, (Operation, click.Command)):
            return ("a probe entry names an operation (@lazarus.operations.operation) or a click command "
                    "(run as `lazarus introspect NAME`)")
        return None


@attrs.frozen(kw_only=True)
class RewardFunctionSpec(Spec):
    """A reward function named by ``entry``, used as ``--reward NAME[:WEIGHT]``.

    Batched (the default, as in TRL): ``fn(prompts, completions, records) -> list[float | None]``,
    one value per completion (``None``: this reward does not apply to that row). ``prompts[i]`` is
    the record's prompt (text or messages), ``completions[i]`` the generated text, ``records[i]`` the
    record's other fields plus ``completion_ids`` (the generated token ids). ``batched=False``
    marks a per-row function ``fn(prompt, completion, **record) -> float | None``.
    """

    kind: ClassVar[str] = "reward-function"
    plural: ClassVar[str] = "reward-functions"
    install_hint: ClassVar[str] = "lazarus-trainers"
    hook: ClassVar[str] = "register_reward_functions"
    scaffold: ClassVar[Scaffold | None] = Scaffold(
        "rewards", "A reward function for Lazarus RL trainers",
        "lazarus train grpo --model M --data D --reward {name}")

    batched: bool = True

    def entry_problem(self, obj: object) -> str | None:
        if not callable(obj):
            return "a reward-function entry names a function fn(prompts, completions, records) -> list"
        return None


@attrs.frozen(kw_only=True)
class ExpertSpec(Spec):
    """A small expert model (GRU/LSTM ...) an LLM can delegate to: ``entry`` names its class, built
    as ``cls(config)`` from an ``ExpertConfig`` of lazarus-experts, with ``reset(batch_size) -> state``
    and ``step(obs, state) -> (action distribution, value, state)`` (docs/experts.md)."""

    kind: ClassVar[str] = "expert"
    plural: ClassVar[str] = "experts"
    install_hint: ClassVar[str] = "lazarus-experts"
    hook: ClassVar[str] = "register_experts"
    scaffold: ClassVar[Scaffold | None] = Scaffold(
        "expert", "A small expert model for Lazarus",
        "lazarus experts train --expert {name} --env reach --steps 30 --output run",
        runtime_dependency="lazarus-experts")

    def entry_problem(self, obj: object) -> str | None:
        if not isinstance(obj, type):
            return "an expert entry names a class"
        return None


@attrs.frozen(kw_only=True)
class EnvironmentSpec(Spec):
    """An environment experts (and RL trainers) act in. ``entry`` names a class whose
    instances have ``name``, ``observation_space`` and ``action_space`` attributes (spaces of
    lazarus-experts: ``Discrete``, ``Box``, ``Text``), ``reset(seed=None) -> observation`` and
    ``step(action) -> (observation, reward, done, info)`` (docs/experts.md)."""

    kind: ClassVar[str] = "environment"
    plural: ClassVar[str] = "environments"
    install_hint: ClassVar[str] = "lazarus-experts"
    hook: ClassVar[str] = "register_environments"
    scaffold: ClassVar[Scaffold | None] = Scaffold(
        "environment", "An environment for Lazarus experts",
        "lazarus experts train --env {name} --steps 30 --output run && lazarus experts eval run",
        runtime_dependency="lazarus-experts")

    def entry_problem(self, obj: object) -> str | None:
        missing = [name for name in ("reset", "step") if not callable(getattr(obj, name, None))]
        if not isinstance(obj, type) or missing:
            return ("an environment entry names a class with reset(seed) and step(action)"
                    + (f"; missing {', '.join(missing)}()" if missing else ""))
        return None


#: every spec class, in the order ``lazarus plugins`` lists kinds
SPEC_CLASSES: tuple[type[Spec], ...] = (FamilySpec, AdapterSpec, TrainerSpec, CheckpointFormatSpec, ProbeSpec,
                                        RewardFunctionSpec, ExpertSpec, EnvironmentSpec)

#: hook name -> the spec class its ``register`` callback accepts
HOOK_KINDS: dict[str, type[Spec]] = {cls.hook: cls for cls in SPEC_CLASSES}

#: kind name ("trainer") -> spec class
KINDS: dict[str, type[Spec]] = {cls.kind: cls for cls in HOOK_KINDS.values()}
