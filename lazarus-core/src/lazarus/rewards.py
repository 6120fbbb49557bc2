"""Reward functions by name: ``--reward NAME[:WEIGHT]`` loaded from the reward-function registry,
called in batches, checked, and combined.

One place for what every user of rewards needs (the RL trainers, ``lazarus eval``, recipes):

- :func:`parse_reward` / :func:`load_rewards`: ``"arithmetic"``, ``"format:0.2"`` -> :class:`Reward`;
- :meth:`Reward.__call__`: call a batched function ``fn(prompts, completions, records)`` (or a
  per-row one, ``RewardFunctionSpec(batched=False)``, once per row) and check what comes back:
  one value per completion, each a finite number or ``None`` (not applicable to that row); anything
  else is a :class:`LazarusError` naming the reward and the row (and its ``FILE:LINE``);
- :func:`score`: every reward over a batch; the total of a row is the weighted sum of the rewards
  that apply to it (0 when none does), as TRL does (``nansum``).

This module imports no mlx: rewards are plain Python over text.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import attrs

from lazarus.errors import LazarusError

_OPTION = re.compile(r"^(?P<name>[^:\s]+)(?::(?P<weight>[^:\s]+))?$")


@attrs.frozen
class Reward:
    """One named reward function with its weight. ``fn`` is batched unless ``batched`` is False."""

    name: str
    fn: Callable = attrs.field(repr=False)
    weight: float = 1.0
    batched: bool = True

    @property
    def label(self) -> str:
        """``name`` or ``name:weight`` as given on the command line."""
        return self.name if self.weight == 1.0 else f"{self.name}:{self.weight:g}"

    def __call__(self, prompts: Sequence[Any], completions: Sequence[str], records: Sequence[dict],
                 sources: Sequence[str] | None = None) -> list[float | None]:
        """Unweighted values, one per completion (``None`` where the reward does not apply).

        ``sources`` (``FILE:LINE`` per row) only make error messages point at the data.
        """
        n = len(completions)

        def where(i: int) -> str:
            source = sources[i] if sources is not None and i < len(sources) and sources[i] else ""
            return f"row {i}" + (f" ({source})" if source else "")

        if self.batched:
            try:
                values = self.fn(list(prompts), list(completions), [dict(r) for r in records])
            except LazarusError as exc:
                raise LazarusError(f"reward {self.name!r}: {exc}") from None
            except SystemExit as exc:  # it would end the run with no word
                raise LazarusError(f"reward {self.name!r} called sys.exit({exc.code!r}); a reward must return "
                                   "values (or raise an exception), not exit") from None
            except Exception as exc:
                raise LazarusError(f"reward {self.name!r} raised {type(exc).__name__}: {exc} "
                                   f"(on a batch of {n} rows starting at {where(0)})") from exc
            try:
                values = list(values)
            except TypeError:
                raise LazarusError(f"reward {self.name!r} returned {type(values).__name__}, expected a list of "
                                   f"{n} numbers or None (one per completion)") from None
            if len(values) != n:
                raise LazarusError(f"reward {self.name!r} returned {len(values)} values for {n} completions; "
                                   "a batched reward returns one value (or None) per completion")
        else:
            values = []
            for i, (prompt, completion, record) in enumerate(zip(prompts, completions, records, strict=True)):
                try:
                    values.append(self.fn(prompt, completion, **record))
                except LazarusError as exc:
                    raise LazarusError(f"reward {self.name!r} on {where(i)}: {exc}") from None
                except SystemExit as exc:
                    raise LazarusError(f"reward {self.name!r} called sys.exit({exc.code!r}) on {where(i)}; a "
                                       "reward must return values (or raise an exception), not exit") from None
                except Exception as exc:
                    raise LazarusError(f"reward {self.name!r} raised {type(exc).__name__} on {where(i)}: "
                                       f"{exc}") from exc
        checked: list[float | None] = []
        for i, value in enumerate(values):
            if value is None:
                checked.append(None)
                continue
            if hasattr(value, "item") and not isinstance(value, (int, float)):  # numpy / mlx scalars
                try:
                    value = value.item()
                except Exception:
                    pass
            if not isinstance(value, (int, float)) or not math.isfinite(float(value)):
                raise LazarusError(f"reward {self.name!r} returned {value!r} ({type(value).__name__}) for "
                                   f"{where(i)}; a reward must be a finite number or None")
            checked.append(float(value))
        return checked


def parse_reward(option: str) -> tuple[str, float]:
    """``"NAME"`` -> ``(NAME, 1.0)``; ``"NAME:WEIGHT"`` -> ``(NAME, WEIGHT)``."""
    match = _OPTION.match(option.strip()) if isinstance(option, str) else None
    if match is None:
        raise LazarusError(f"reward {option!r}: expected NAME or NAME:WEIGHT (e.g. arithmetic, format:0.2)",
                           field="reward")
    weight = match.group("weight")
    try:
        value = float(weight) if weight is not None else 1.0
    except ValueError:
        raise LazarusError(f"reward {option!r}: the weight {weight!r} is not a number", field="reward") from None
    if not math.isfinite(value):
        raise LazarusError(f"reward {option!r}: the weight must be a finite number", field="reward")
    return match.group("name"), value


def load_rewards(options: Sequence[str]) -> list[Reward]:
    """The rewards named by ``--reward`` options (``NAME`` or ``NAME:WEIGHT``), each imported
    through its registered spec. An unknown name raises the registry's error (which lists what is
    installed); a name given twice is an error."""
    from lazarus.plugins import get

    if not options:
        raise LazarusError("no reward given: pass --reward NAME (repeatable, NAME:WEIGHT to weight it); "
                           "`lazarus plugins list --hook reward_functions` shows the installed ones")
    rewards: list[Reward] = []
    for option in options:
        name, weight = parse_reward(option)
        if any(r.name == name for r in rewards):
            raise LazarusError(f"reward {name} is given twice; give each reward once (with a weight)",
                               field="reward")
        spec = get("reward-function", name)
        try:
            fn = spec.load()
        except ImportError as exc:
            raise LazarusError(f"reward {name!r} could not be imported ({spec.entry}): {exc}") from None
        if not callable(fn):
            raise LazarusError(f"reward {name!r}: {spec.entry} is not a function")
        rewards.append(Reward(name=name, fn=fn, weight=weight, batched=getattr(spec, "batched", True)))
    return rewards


@attrs.frozen
class Scores:
    """Rewards of a batch: ``total`` per row (weighted sum of the rewards that apply, 0 if none) and
    ``by_reward`` ``{name: [value or None per row]}`` (unweighted)."""

    total: list[float]
    by_reward: dict[str, list[float | None]]

    def means(self) -> dict[str, float]:
        """``{name: mean over the rows it applies to}`` (rewards that applied nowhere are left out)."""
        out = {}
        for name, values in self.by_reward.items():
            present = [v for v in values if v is not None]
            if present:
                out[name] = sum(present) / len(present)
        return out


def score(rewards: Sequence[Reward], prompts: Sequence[Any], completions: Sequence[str],
          records: Sequence[dict], sources: Sequence[str] | None = None) -> Scores:
    """Call every reward on the batch and combine them (see :class:`Scores`)."""
    by_reward = {r.name: r(prompts, completions, records, sources) for r in rewards}
    total: list[float] = []
    for i in range(len(completions)):
        values = [(r.weight, by_reward[r.name][i]) for r in rewards]
        total.append(sum(weight * value for weight, value in values if value is not None))
    return Scores(total=total, by_reward=by_reward)


def check_applies(rewards: Sequence[Reward], records: Iterable[Any], where: str, sample: int = 64) -> None:
    """Refuse, before any work, rewards that score none of the data: each returns ``None`` (does not
    apply) for every one of the first ``sample`` prompt records (``.prompt``, ``.extra``,
    ``.source``), asked about an empty completion. Training on them would learn from zero gradients,
    and an eval would report an accuracy of 0 that measures nothing."""
    rows = list(records[:sample]) if hasattr(records, "__getitem__") else list(records)[:sample]
    if not rewards or not rows:
        return
    prompts = [getattr(r, "prompt", "") for r in rows]
    extras = [dict(getattr(r, "extra", {}) or {}) for r in rows]
    sources = [getattr(r, "source", "") for r in rows]
    records_seen = [{**e, "completion_ids": []} for e in extras]  # as trainers and eval pass them
    for reward in rewards:
        try:
            values = reward(prompts, [""] * len(rows), records_seen, sources)
        except LazarusError:  # it cannot judge an empty completion: no verdict here
            return
        if any(v is not None for v in values):
            return
    names = ", ".join(r.name for r in rewards)
    keys = sorted({k for e in extras for k in e})
    raise LazarusError(f"reward {names} scores none of the first {len(rows)} records of {where} (it returns "
                       f"None, 'not applicable', for each; their keys: {', '.join(keys) or 'prompt only'}): "
                       "nothing would be scored; use data with the fields the reward reads (arithmetic: "
                       "answer or expression) or another reward", field="reward")
