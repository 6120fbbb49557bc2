"""``lazarus train NAME``: one subcommand per registered trainer, its options made from the trainer's
config class (:mod:`lazarus.training.config`).

Listing (``lazarus train --help``) reads the trainer registry only; a trainer's code is imported
when its subcommand runs or shows its own ``--help``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

import click

from lazarus.errors import LazarusError

if TYPE_CHECKING:
    from lazarus.specs import TrainerSpec

#: exit status of a run stopped with Ctrl-C after saving a checkpoint (128 + SIGINT, as shells use)
EXIT_INTERRUPTED = 130


class TrainGroup(click.Group):
    """A click group whose subcommands come from ``get_registry().all("trainer")``."""

    def list_commands(self, ctx):
        from lazarus.plugins import get_registry

        return get_registry().names("trainer")

    def get_command(self, ctx, name):
        from lazarus.plugins import get_registry

        spec = get_registry().get("trainer", name)  # unknown name: "no trainer named ..." (exit 2)
        return trainer_command(spec)

    def format_commands(self, ctx, formatter):
        # from the specs alone: listing trainers must not import them
        from lazarus.plugins import get_registry

        registry = get_registry()
        rows = [(name, f"{spec.description} [data: {spec.data_format}; from {registry.owner('trainer', name)}]")
                for name, spec in cast("dict[str, TrainerSpec]", registry.all("trainer")).items()]
        with formatter.section("Trainers"):
            if rows:
                formatter.write_dl(rows)
            else:
                formatter.write_text("none installed; install some with: pip install lazarus-trainers")


@click.group(cls=TrainGroup)
def train():
    """Fine-tune a model with an installed trainer: `lazarus train sft --model M --data D --output O`.

    Every option of a trainer is also a key of its --config file (TOML, or YAML with lazarus-core[yaml]
    installed); options given on the command line win over the file. Run on several processes
    with `mlx.launch -n 2 -- lazarus train ...` (data parallel). Ctrl-C saves a checkpoint and
    prints the command that resumes it.
    """


def trainer_command(spec) -> click.Command:
    """The click command of one trainer spec, with options generated from its config class."""
    from lazarus.training.config import click_options

    try:
        trainer_cls = spec.load()
    except ImportError as exc:
        raise LazarusError(f"trainer {spec.name!r} could not be imported ({spec.entry}): {exc}") from None
    config_cls = trainer_cls.config_class
    params: list[click.Parameter] = [
        click.Option(["--config", "config_file"], type=click.Path(dir_okay=False), default=None,
                     metavar="FILE", help="TOML (or YAML) file whose keys are the option names below "
                                          "(learning_rate = 1e-4); options given here override it."),
        *click_options(config_cls),
    ]

    def callback(config_file, **values):
        run_from_cli(trainer_cls, spec.name, config_file, values)

    doc = (spec.description or trainer_cls.__doc__ or "").strip()
    return click.Command(
        spec.name, params=params, callback=callback, help=doc,
        short_help=spec.description,
        context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110},
        epilog=f"Data format: {spec.data_format}. Outputs: the adapter (mlx-lm format) or full model in "
               "OUTPUT, OUTPUT/metrics.jsonl, OUTPUT/loss.png, resumable OUTPUT/checkpoints/.")


def run_from_cli(trainer_cls, name: str, config_file: str | None, values: dict) -> None:
    """Merge defaults, a resumed run's config, the config file and the CLI options; train."""
    import sys

    from lazarus.training.config import build_config

    saved = None
    if values.get("resume"):
        from lazarus.training import checkpoint as ckpt

        checkpoint = ckpt.find_checkpoint(values["resume"])
        state = ckpt.read_state(checkpoint)
        if state["trainer"] != name:
            raise LazarusError(f"--resume {values['resume']}: written by the {state['trainer']!r} trainer; "
                               f"use `lazarus train {state['trainer']}`")
        # a resumed run writes where it is resumed (the run that holds the checkpoint), not into the
        # --output stored in it: that is another directory when the run was copied or moved
        saved = {**state["config"], "output": ckpt.run_directory(checkpoint)}
    config = build_config(trainer_cls.config_class, cli_values=values, config_file=config_file, saved=saved)
    if config.output is None:
        raise LazarusError(f"--resume {values['resume']}: this checkpoint is not inside a run's checkpoints/ "
                           "folder; pass --output DIR to say where the resumed run writes")
    for required in ("model", "data"):
        if not getattr(config, required):
            raise LazarusError(f"missing --{required} (or `{required} = ...` in the --config file)")
    trainer = trainer_cls(config)
    trainer.name = name  # checkpoints and the resume hint use the name the registry knows it by
    result = trainer.train()
    if result.interrupted:
        sys.exit(EXIT_INTERRUPTED)
