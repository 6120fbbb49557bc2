"""The ``lazarus`` command line. Plugins add commands through the ``register_commands`` hook.

Start-up stays light: building the command list imports plugin registration modules only, never
mlx or model code.
"""

from __future__ import annotations

import importlib
import json
import sys

import click

from lazarus import __version__
from lazarus.commands import CORE_COMMANDS
from lazarus.errors import LazarusError


def one_line(message: str) -> str:
    """An error message as one printable line: control characters (a newline in a path) shown as
    escapes, bytes that are not UTF-8 as ``\\xNN``."""
    import re

    text = re.sub(r"[\x00-\x1f\x7f]", lambda m: repr(m.group())[1:-1], message)
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


class _UserError(click.ClickException):
    exit_code = 2


#: warning messages already printed by this command
_shown_warnings: set[str] = set()


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Python warnings as people read them: one ``Warning: ...`` line each, no source path, and once:
    a message that differs only in its numbers (another prompt length) is not repeated."""
    import re

    text = " ".join(str(message).split())
    key = f"{category.__name__}: {re.sub(r'[0-9.]+', 'N', text)}"
    if key in _shown_warnings:
        return
    _shown_warnings.add(key)
    click.echo(f"Warning: {text}", err=True)


class LazarusGroup(click.Group):
    """A click group that adds plugin commands and turns :class:`LazarusError` into one line, exit 2."""

    def _plugin_commands(self) -> dict[str, click.Command]:
        from lazarus.plugins import get_registry

        return {name: cmd for name, (_, cmd) in get_registry().commands.items()}

    def list_commands(self, ctx):
        return sorted(set(super().list_commands(ctx)) | set(CORE_COMMANDS) | set(self._plugin_commands()))

    def get_command(self, ctx, name):
        if name in CORE_COMMANDS:
            module, _, attr = CORE_COMMANDS[name].partition(":")
            return getattr(importlib.import_module(module), attr)
        return super().get_command(ctx, name) or self._plugin_commands().get(name)

    def main(self, *args, **kwargs):
        import warnings

        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            _shown_warnings.clear()
            try:
                return super().main(*args, **kwargs)
            except LazarusError as exc:  # raised outside a command, e.g. while listing plugin commands
                click.echo(f"Error: {one_line(exc.cli_message())}", err=True)
                sys.exit(exc.exit_code)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except LazarusError as exc:
            raise _UserError(one_line(exc.cli_message())) from None
        except (OSError, RuntimeError) as exc:  # a full disk, no permission: one line, not a traceback
            from lazarus.paths import write_error_message

            message = write_error_message(exc)
            if message is None:
                raise
            raise _UserError(one_line(message)) from None


@click.group(cls=LazarusGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="lazarus")
def main():
    """Lazarus: load, fine-tune, generate with and look inside language models on MLX.

    Everything you can name here (families, trainers, probes, adapters, reward functions) comes
    from plugins; `lazarus plugins list` shows what is installed.
    """


# -- plugins -------------------------------------------------------------------------------------
@main.group()
def plugins():
    """List, inspect, write and check plugins."""


def _add_authoring_commands() -> None:
    from lazarus.commands.plugin_tools import plugins_check, plugins_new

    plugins.add_command(plugins_new)
    plugins.add_command(plugins_check)


_add_authoring_commands()


def _provides_text(provides: dict[str, list[str]]) -> str:
    return "\n".join(f"{kind}: {', '.join(names)}" for kind, names in provides.items()) or "-"


@plugins.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--hook", "hook", metavar="HOOK",
              help="Only plugins implementing HOOK (e.g. register_trainers, or just trainers).")
@click.option("--all", "show_all", is_flag=True, help="Also list the core's built-in plugin.")
def plugins_list(as_json: bool, hook: str | None, show_all: bool):
    """One row per plugin: name, distribution, version, status, what it provides, error."""
    from lazarus.plugins import get_registry

    records = [r for r in get_registry().plugins.values() if show_all or not r.builtin]
    if hook:
        wanted = hook.replace("-", "_")
        wanted = wanted if wanted.startswith("register_") else f"register_{wanted}"
        from lazarus import hookspecs

        known = sorted(n for n in vars(hookspecs) if n.startswith("register_"))
        if wanted not in known:
            raise LazarusError(f"--hook {hook}: no such hook; hooks: {', '.join(known)} "
                               "(the register_ prefix may be left out)")
        records = [r for r in records if wanted in r.hooks]
    records.sort(key=lambda r: (not r.builtin, r.name))
    if as_json:
        click.echo(json.dumps([r.as_dict() for r in records], indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Lazarus plugins")
    table.add_column("plugin", overflow="fold")
    table.add_column("distribution", overflow="fold")
    table.add_column("version", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("provides", overflow="fold", ratio=2)
    style = {"loaded": "green", "failed": "red", "blocked": "yellow"}
    for r in records:
        table.add_row(r.name, r.distribution, r.version, f"[{style[r.status]}]{r.status}[/]",
                      _provides_text(r.provides))
    console = Console()
    console.print(table)
    # errors go below the table: they are long and would squeeze every column
    for r in records:
        if r.error:
            console.print(f"[{style[r.status]}]{r.name}[/]: {r.error}", highlight=False)
    if not records:
        console.print("No plugins installed. Install some with: pip install lazarus-families lazarus-trainers")


@plugins.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def plugins_show(name: str, as_json: bool):
    """Everything one plugin provides, with each item's description and entry."""
    from lazarus.plugins import get_registry
    from lazarus.specs import KINDS

    registry = get_registry()
    record = registry.plugins.get(name) or next(
        (r for r in registry.plugins.values() if r.distribution == name), None)
    if record is None:
        raise LazarusError(
            f"no plugin named {name!r}; installed: {', '.join(sorted(registry.plugins)) or 'none'}")
    items = []
    for kind, cls in KINDS.items():
        for item_name in record.provides.get(cls.plural, []):
            items.append(registry.get(kind, item_name).summary() | {"kind": kind})
    commands = record.provides.get("commands", [])
    if as_json:
        click.echo(json.dumps(record.as_dict() | {"items": items}, indent=2))
        return
    from rich.console import Console

    console = Console()
    console.print(f"[bold]{record.name}[/] ({record.distribution} {record.version}) — {record.status}")
    console.print(f"module: {record.module}")
    if record.hooks:
        console.print(f"hooks: {', '.join(record.hooks)}")
    if record.error:
        console.print(f"[red]error:[/] {record.error}")
    for item in items:
        console.print(f"  {item['kind']} [bold]{item['name']}[/]: {item['description'] or '-'}"
                      f"  [dim]({item['entry']})[/]")
    for cmd in commands:
        console.print(f"  command [bold]lazarus {cmd}[/]")


# -- doctor --------------------------------------------------------------------------------------
@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def doctor(as_json: bool):
    """Check the installation: Python, mlx and its device, GPU backend, plugins."""
    import platform

    from lazarus.plugins import get_registry

    report: dict = {"lazarus": __version__, "python": platform.python_version(),
                    "platform": f"{platform.system()} {platform.machine()}"}
    try:
        import mlx.core as mx

        report["mlx"] = getattr(mx, "__version__", "?")
        report["default_device"] = str(mx.default_device())
        report["metal"] = bool(mx.metal.is_available())
        report["cuda"] = bool(getattr(mx, "cuda", None) and mx.cuda.is_available())
        report["gpu_backend"] = report["metal"] or report["cuda"]
        from lazarus.training.distributed import available_backends

        backends = available_backends()
        # what `mlx.launch` picks when not told: NCCL where CUDA is, ring elsewhere
        report["distributed"] = {"backends": backends, "launch_default": "nccl" if report["cuda"] else "ring"}
        from lazarus import cpu_blas

        report["cpu_blas"] = {**cpu_blas.state, "gflops_float32": round(cpu_blas.measure_gflops(), 1)}
    except Exception as exc:  # doctor reports problems rather than dying on them
        report["mlx"] = None
        report["mlx_error"] = str(exc)
    records = list(get_registry().plugins.values())
    report["plugins"] = {r.name: {"distribution": r.distribution, "version": r.version,
                                  "status": r.status, "error": r.error} for r in records}
    #: doctor's exit status: 1 when a plugin failed to load or mlx is missing (scripts and CI notice)
    unhealthy = report["mlx"] is None or any(r.status == "failed" for r in records)
    if as_json:
        click.echo(json.dumps(report, indent=2))
        sys.exit(1 if unhealthy else 0)
    from rich.console import Console

    console = Console()
    console.print(f"lazarus {report['lazarus']}  python {report['python']}  ({report['platform']})")
    if report["mlx"] is None:
        console.print(f"[red]mlx: not importable[/] ({report['mlx_error']}); "
                      "install it with pip install 'mlx[cpu]' on Linux or 'mlx' on macOS")
    else:
        gpu = "Metal" if report["metal"] else "CUDA" if report["cuda"] else None
        console.print(f"mlx {report['mlx']}  default device: {report['default_device']}  "
                      f"GPU backend: {gpu or 'none (CPU only)'}")
        blas = report["cpu_blas"]
        console.print(f"CPU BLAS: {blas['blas']}, float32 matmul {blas['gflops_float32']:.1f} GFLOP/s"
                      f"  [dim]({blas['note']})[/]")
        dist = report["distributed"]
        offered = [name for name, ok in dist["backends"].items() if ok]
        console.print(f"distributed backends: {', '.join(offered) or 'none'}  (mlx.launch -n N picks "
                      f"{dist['launch_default']} here; docs/distributed.md)")
    for r in records:
        colour = {"loaded": "green", "failed": "red", "blocked": "yellow"}[r.status]
        line = f"  {r.name} ({r.distribution} {r.version}): [{colour}]{r.status}[/]"
        console.print(line + (f" — {r.error}" if r.error else ""))
    failed = [r for r in records if r.status == "failed"]
    if failed:
        console.print(f"[red]{len(failed)} plugin(s) failed to load[/]; "
                      "LAZARUS_STRICT_PLUGINS=1 shows the full error")
    if unhealthy:
        sys.exit(1)




if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(prog_name="lazarus"))
