"""``lazarus plugins new`` and ``lazarus plugins check``: the plugin author's commands.

Imports only click and the light scaffold tables at top level; templates and checks are imported
when a command runs.
"""

from __future__ import annotations

import json

import click

from lazarus.scaffold import KINDS

#: the kinds ``plugins new`` knows: one per spec class, plus ``command`` (lazarus.scaffold; light)
NEW_KINDS = KINDS


@click.command("new")
@click.argument("kind", type=click.Choice(NEW_KINDS))
@click.argument("name")
@click.option("--output", "-o", type=click.Path(file_okay=False), default=None, metavar="DIR",
              help="Where to write the distribution (default: ./lazarus-NAME); must be empty or absent.")
def plugins_new(kind: str, name: str, output: str | None):
    """Write a complete plugin distribution providing one KIND named NAME.

    The result has a pyproject.toml with the `lazarus` entry point, a src/ package with a working
    minimal implementation, a README and tests using lazarus-core's pytest fixtures. Then:
    `lazarus install -e DIR`, `pytest DIR`, `lazarus plugins check DIR`.
    """
    from lazarus.scaffold import new_plugin

    target = new_plugin(kind, name, output)
    click.echo(f"Wrote the {kind} plugin {name!r} to {target}")
    for path in sorted(p.relative_to(target).as_posix() for p in target.rglob("*") if p.is_file()):
        click.echo(f"  {path}")
    click.echo(f"Next: lazarus install -e {target}   then   pytest {target}")


@click.command("check")
@click.argument("target", metavar="DIR-OR-NAME")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a checklist.")
def plugins_check(target: str, as_json: bool):
    """Check a plugin before publishing: a source directory (with pyproject.toml) or an installed
    plugin's name.

    Checks that each entry point imports without importing mlx, implements only known hooks,
    registers valid kebab-case specs that collide with no installed plugin, and that every
    registered entry loads and fits its kind. Exit code 1 when a check fails.
    """
    from lazarus.plugin_check import check_plugin

    checks = check_plugin(target)
    failed = [c for c in checks if c.ok is False]
    if as_json:
        click.echo(json.dumps([{"plugin": c.plugin, "check": c.what, "ok": c.ok, "detail": c.detail}
                               for c in checks], indent=2))
    else:
        for c in checks:
            mark = {True: "ok  ", False: "FAIL", None: "skip"}[c.ok]
            click.echo(f"{mark} {c.plugin}: {c.what}" + (f" — {c.detail}" if c.detail and c.ok is not True
                                                          else ""))
        click.echo(f"{len(failed)} problem(s) found" if failed else "all checks passed")
    if failed:
        raise SystemExit(1)
