"""``lazarus run RECIPE``: run a recipe of stages composed from plugin names (:mod:`lazarus.recipes`)."""

from __future__ import annotations

import sys

import click

#: exit status when a stage was stopped with Ctrl-C (its checkpoint resumes on the next run)
EXIT_INTERRUPTED = 130


@click.command()
@click.argument("recipe", type=click.Path(dir_okay=False), metavar="RECIPE")
@click.option("--check", is_flag=True, help="Only check the recipe (plugins, keys, types); run nothing.")
@click.option("--from", "force_from", metavar="STAGE", help="Run again from this stage on, even if unchanged.")
@click.option("--set", "overrides", multiple=True, metavar="STAGE.KEY=VALUE",
              help="Override one stage option, e.g. --set sft.max-steps=50 (repeatable; VALUE is read as TOML).")
@click.option("--output", "-o", metavar="DIR", help="Write the stages here instead of the recipe's `output`.")
def run(recipe, check, force_from, overrides, output):
    """Run the stages of RECIPE (TOML) in order, each writing OUTPUT/<stage>/.

    \b
    model = "path/or/hub-id"
    output = "runs/math"
    [[stage]]
    train = "sft"                  # any trainer; its --config keys follow
    data = "math/sft"
    [[stage]]
    train = "dpo"                  # starts from the sft stage's adapter
    data = "math/preference"
    [[stage]]
    eval = "arithmetic"            # reward function(s), scored by `lazarus eval`
    data = "math/prompts/test.jsonl"
    [[stage]]
    introspect = "logit-lens"      # any probe; its options follow
    prompt = "What is 2 + 3?"

    Everything is checked before anything runs. Unchanged stages are skipped on a re-run, a stopped
    training stage resumes, and a changed stage runs again with every stage after it.
    See docs/recipes.md.
    """
    from lazarus.recipes import Runner, read_recipe

    parsed = read_recipe(recipe, overrides=overrides)
    if output:
        from pathlib import Path

        parsed.output = Path(output)
    if check:
        click.echo(f"{recipe}: {len(parsed.stages)} stages OK: "
                   + ", ".join(f"{s.name} ({s.label})" for s in parsed.stages))
        return
    runner = Runner(parsed, force_from=force_from)
    results = runner.run()
    _summary(runner, results)
    if results and results[-1].status == "interrupted":
        click.echo(f"Stopped in stage {results[-1].stage.name}; run `lazarus run {recipe}` again to resume it.",
                   err=True)
        sys.exit(EXIT_INTERRUPTED)


def _summary(runner, results) -> None:
    from rich.table import Table

    table = Table(title=f"{runner.recipe.path} → {runner.recipe.output}")
    for column in ("stage", "plugin", "status", "time", "key metric"):
        table.add_column(column, overflow="fold")
    colour = {"ran": "green", "resumed": "green", "skipped": "dim", "interrupted": "yellow", "failed": "red"}
    for r in results:
        table.add_row(r.stage.name, r.stage.label, f"[{colour[r.status]}]{r.status}[/]",
                      f"{r.seconds:.1f}s", r.metric or "-")
    runner.console.print(table)
