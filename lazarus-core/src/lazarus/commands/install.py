"""``lazarus install`` / ``lazarus uninstall``: pip into the interpreter that runs ``lazarus``.

A pipx or venv install of Lazarus has its own interpreter; a plugin ``pip install``ed anywhere
else is never found. These commands run ``python -m pip`` with that interpreter, then list the
plugins again in a fresh process (new ``.pth`` files of editable installs are read only at start)
and print what changed: what a new plugin provides, or why it failed.
"""

from __future__ import annotations

import json
import subprocess
import sys

import click

from lazarus.errors import LazarusError

_PASS_THROUGH = {"ignore_unknown_options": True, "help_option_names": ["-h", "--help"]}


def _pip(*args: str) -> None:
    import importlib.util

    if importlib.util.find_spec("pip") is None:
        raise LazarusError(f"pip is not installed in the environment that runs lazarus ({sys.executable}); "
                           f"add it with `{sys.executable} -m ensurepip`")
    # pip's own output, less its "Requirement already satisfied" line for every installed dependency
    process = subprocess.Popen([sys.executable, "-m", "pip", *args], stdout=subprocess.PIPE, text=True,
                               bufsize=1)
    satisfied = 0
    assert process.stdout is not None  # (stdout=PIPE)
    for line in process.stdout:
        if line.startswith("Requirement already satisfied"):
            satisfied += 1
        else:
            click.echo(line, nl=False)
    returncode = process.wait()
    if satisfied:
        click.echo(f"({satisfied} requirement{'s' if satisfied > 1 else ''} already satisfied)")
    if returncode != 0:
        raise LazarusError(f"pip {args[0]} failed (exit code {returncode}); see pip's message above")


def _plugin_rows() -> dict[str, dict]:
    """The installed plugins as a fresh ``lazarus plugins list --json`` sees them."""
    result = subprocess.run([sys.executable, "-m", "lazarus.cli", "plugins", "list", "--json"],
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise LazarusError(f"listing plugins failed: {result.stderr.strip().splitlines()[-1:]}")
    return {row["name"]: row for row in json.loads(result.stdout)}


def _describe(row: dict) -> str:
    head = f"{row['name']} ({row['distribution']} {row['version']}): {row['status']}"
    if row["status"] != "loaded":
        return f"{head} — {row['error']}"
    provides = "; ".join(f"{kind}: {', '.join(names)}" for kind, names in row["provides"].items())
    return f"{head} — provides {provides or 'nothing'}"


@click.command(context_settings=_PASS_THROUGH)
@click.argument("packages", nargs=-1, type=click.UNPROCESSED)
@click.option("-e", "--editable", "editables", multiple=True, metavar="PATH",
              help="Install a local source directory in editable mode (repeatable).")
@click.option("-U", "--upgrade", is_flag=True, help="Upgrade the packages to the newest version.")
def install(packages: tuple[str, ...], editables: tuple[str, ...], upgrade: bool):
    """Install plugins (PyPI names, local paths, or pip options) into the environment that runs
    `lazarus`, then show what each new plugin provides.

    Other pip options pass through unchanged: `lazarus install --no-deps ./my-plugin`.
    """
    if not packages and not editables:
        raise LazarusError("nothing to install: name a package or a path, e.g. `lazarus install "
                           "lazarus-trainers` or `lazarus install -e ./my-plugin`")
    before = _plugin_rows()
    args = ["install", *(["--upgrade"] if upgrade else [])]
    for path in editables:
        args += ["--editable", path]
    _pip(*args, *packages)
    changed = [row for name, row in _plugin_rows().items()
               if name not in before or (before[name]["version"], before[name]["status"])
               != (row["version"], row["status"])]
    if not changed:
        click.echo("No new or changed Lazarus plugin: the installed packages register nothing in the "
                   "`lazarus` entry-point group (see `lazarus plugins list`).")
    for row in changed:
        click.echo(_describe(row))
    if any(row["status"] == "failed" for row in changed):
        raise LazarusError("a plugin installed but failed to load; LAZARUS_STRICT_PLUGINS=1 "
                           "lazarus plugins list shows the error in full")


@click.command(context_settings=_PASS_THROUGH)
@click.argument("names", nargs=-1, required=True, type=click.UNPROCESSED)
def uninstall(names: tuple[str, ...]):
    """Uninstall plugins (plugin or distribution names) from the environment that runs `lazarus`.

    Plugin names are mapped to their distribution (`lazarus uninstall example` removes
    lazarus-example); pip options pass through; pip is not asked to confirm.
    """
    before = _plugin_rows()
    by_plugin = {name: row["distribution"] for name, row in before.items()}
    targets = [by_plugin.get(name, name) for name in names]
    _pip("uninstall", "--yes", *targets)
    after = _plugin_rows()
    for name, row in before.items():
        if name not in after:
            click.echo(f"removed {name} ({row['distribution']} {row['version']})")
