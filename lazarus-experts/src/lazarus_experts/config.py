"""``ExpertTrainConfig``: the one schema of ``lazarus experts train``.

Each field is declared once with :func:`lazarus.training.config.setting` (default, help, the click
type that checks it where it is typed, extra flags); :func:`train_options` turns the schema into the
command's click options, so a default or a range lives in one place. Imported by ``lazarus --help``:
only attrs, click and the light lazarus modules.
"""

from __future__ import annotations

import attrs
import click

from lazarus.options import SEED, FiniteFloat
from lazarus.training.config import setting


def _positive_float() -> FiniteFloat:
    return FiniteFloat(0, min_open=True)


@attrs.define(kw_only=True)
class ExpertTrainConfig:
    """Options of ``lazarus experts train`` (one field per option; ``--field-name`` on the CLI)."""

    output: str = attrs.field(metadata={
        "help": "Directory for the expert, metrics.jsonl, return.png, checkpoints.", "required": True})
    expert: str = setting("gru", "Expert kind (a registered expert name).", flags=("--expert",))
    env: str = setting("reach", "Environment (a registered name).", flags=("--env",))
    env_options: dict = attrs.field(factory=dict, metadata={
        "help": "Keyword for the environment's constructor, e.g. max_steps=30 (repeatable).",
        "flags": ("--env-option",), "metavar": "KEY=VALUE", "multiple": True})
    steps: int = setting(60, "PPO updates (each: --num-envs episodes).", type=click.IntRange(1, 10**7))
    num_envs: int = setting(16, "Episodes per update, run as one batch.", type=click.IntRange(1, 65536))
    hidden_size: int = setting(32, type=click.IntRange(1, 65536))
    num_layers: int = setting(1, type=click.IntRange(1, 64))
    value_head: bool = setting(True, "Train without a value head (no learned baseline).", off="--no-value-head")
    learning_rate: float = setting(3e-3, type=_positive_float())
    epochs: int = setting(4, "PPO passes over each batch of episodes.", type=click.IntRange(1, 10_000))
    gamma: float = setting(0.95, "Discount.", type=FiniteFloat(0, 1))
    lam: float = setting(0.95, "GAE lambda.", type=FiniteFloat(0, 1))
    clip: float = setting(0.2, "PPO clip range epsilon.", type=_positive_float())
    value_coef: float = setting(0.5, "Weight of the value loss (ignored with --no-value-head).", type=FiniteFloat(0))
    entropy_coef: float = setting(0.0, type=FiniteFloat(0))
    max_episode_steps: int = setting(200, "Episodes longer than this are cut.", type=click.IntRange(1, 10**6))
    seed: int = setting(0, type=SEED)
    save_interval: int = setting(20, "Checkpoint every N updates (0: only at the end).",
                                 type=click.IntRange(0, 10**7))
    keep_checkpoints: int = setting(2, "Checkpoints kept in checkpoints/, the newest (0: all).",
                                    type=click.IntRange(0, 10**6))
    resume: str | None = setting(None, "A checkpoint or an output directory to continue from.")
    overwrite: bool = setting(False, "Start afresh in an --output that holds an earlier run.")

    def to_dict(self) -> dict:
        return {k: v for k, v in attrs.asdict(self).items() if k not in ("resume", "overwrite")}


def train_options(function):
    """Decorate ``function`` with one click option per field of :class:`ExpertTrainConfig`; each
    arrives as the keyword of its field name (``value_head``, ``env_options`` as KEY=VALUE strings)."""
    for field in reversed(attrs.fields(ExpertTrainConfig)):
        meta = field.metadata
        name = "--" + field.name.replace("_", "-")
        help_text = meta.get("help") or None
        if isinstance(field.default, bool):
            if meta.get("off"):  # an on-by-default switch: only its off flag exists
                option = click.option(meta["off"], field.name, flag_value=not field.default,
                                      default=field.default, help=help_text)
            else:
                option = click.option(name, field.name, is_flag=True, default=field.default, help=help_text)
        elif meta.get("multiple"):
            option = click.option(*meta.get("flags", (name,)), field.name, multiple=True,
                                  metavar=meta.get("metavar"), help=help_text)
        elif meta.get("required"):
            option = click.option(name, field.name, required=True, help=help_text)
        else:
            option = click.option(*(meta.get("flags") or (name,)), field.name, default=field.default,
                                  show_default=field.default is not None, type=meta.get("type"),
                                  help=help_text)
        function = option(function)
    return function
