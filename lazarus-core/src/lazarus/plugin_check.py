"""``lazarus plugins check``: what an author wants to know before publishing a plugin.

For each ``lazarus`` entry point of a plugin (a source directory with a ``pyproject.toml``, or an
installed plugin by name) it checks, in order:

1. the entry point's module imports;
2. importing it does not import mlx (heavy code belongs behind ``entry=``, loaded on use);
3. every ``@lazarus.hookimpl`` in it names a known hook;
4. every hook registers valid specs (kebab-case names, ``package.module:attribute`` entries);
5. no registered name collides with another installed plugin's (or a core command);
6. every registered entry loads and fits its kind's contract (``Spec.entry_problem``).

The import checks run in a fresh interpreter, so what the checking process already imported
does not hide a heavy import.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from collections.abc import Callable, Collection
from importlib import metadata
from pathlib import Path
from typing import Any

import attrs
import click

from lazarus.commands import CORE_COMMAND_NAMES
from lazarus.errors import LazarusError
from lazarus.specs import HOOK_KINDS, Spec

#: modules a plugin module must not import at import time
HEAVY_MODULES = ("mlx", "mlx_lm")

_IMPORT_PROBE = """
import json, sys
module, heavy_roots, paths = sys.argv[1], sys.argv[2].split(","), sys.argv[3:]
sys.path[:0] = paths
try:
    __import__(module)
except BaseException as exc:
    print(json.dumps({"error": f"{type(exc).__name__}: {' '.join(str(exc).split())}"}))
    raise SystemExit(0)
heavy = sorted(m for m in sys.modules if m.split(".")[0] in heavy_roots)
print(json.dumps({"heavy": heavy}))
"""


@attrs.define
class Check:
    """One line of the report: what was checked for which entry point, whether it passed, why not."""

    plugin: str
    what: str
    ok: bool | None  #: None: not run, because an earlier check failed
    detail: str = ""


@attrs.define
class Target:
    """A plugin to check: its entry points (name -> module), distribution and import paths."""

    distribution: str
    version: str
    entry_points: dict[str, str]
    paths: list[str] = attrs.Factory(list)


def entry_problem(spec: Spec, obj: object) -> str | None:
    """Why the object ``spec.entry`` names does not fit its kind's contract, or None when it fits
    (each spec class says, in :meth:`lazarus.specs.Spec.entry_problem`)."""
    return spec.entry_problem(obj)


def _read_pyproject(directory: Path) -> Target:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        try:
            import tomli as tomllib
        except ImportError:
            raise LazarusError("reading pyproject.toml needs Python 3.11 or `pip install tomli`") from None
    path = directory / "pyproject.toml"
    if not path.is_file():
        raise LazarusError(f"{directory}: no pyproject.toml; pass a plugin's source directory or the "
                           "name of an installed plugin")
    try:
        project = tomllib.loads(path.read_text(encoding="utf-8")).get("project", {})
    except tomllib.TOMLDecodeError as exc:
        raise LazarusError(f"{path}: not valid TOML: {exc}") from None
    entry_points = dict(project.get("entry-points", {}).get("lazarus", {}))
    if not entry_points:
        raise LazarusError(f"{path}: no [project.entry-points.lazarus] table; add one line "
                           "`NAME = \"package.module\"` naming the module with your hook implementations")
    src = directory / "src"
    return Target(project.get("name", directory.name), str(project.get("version", "?")), entry_points,
                  [str(src if src.is_dir() else directory)])


def resolve_target(target: str) -> Target:
    """A source directory (with pyproject.toml) or an installed plugin's entry-point/distribution name."""
    path = Path(target)
    if path.is_dir():
        return _read_pyproject(path.resolve())
    found = [ep for ep in metadata.entry_points(group="lazarus")
             if target in {ep.name, ep.dist.name if ep.dist else None}]
    if not found:
        installed = sorted({ep.name for ep in metadata.entry_points(group="lazarus")})
        raise LazarusError(f"{target!r} is neither a directory nor an installed plugin; installed: "
                           f"{', '.join(installed) or 'none'}")
    dist = found[0].dist
    return Target(dist.name if dist else target, dist.version if dist else "?",
                  {ep.name: ep.value for ep in found})


def _import_in_fresh_interpreter(module: str, paths: list[str]) -> dict:
    result = subprocess.run([sys.executable, "-c", _IMPORT_PROBE, module, ",".join(HEAVY_MODULES), *paths],
                            capture_output=True, text=True, timeout=300)
    try:
        return json.loads(result.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        return {"error": (result.stderr.strip().splitlines() or ["the interpreter failed"])[-1]}


def _hook_functions(module) -> dict[str, Callable[..., Any]]:
    """hook name -> function, for every ``@lazarus.hookimpl`` in ``module``."""
    found: dict[str, Callable[..., Any]] = {}
    for attr in dir(module):
        value = getattr(module, attr, None)
        opts = getattr(value, "lazarus_impl", None)
        if isinstance(opts, dict) and callable(value):
            found[opts.get("specname") or attr] = value
    return found


def check_plugin(target: str, reserved_commands: Collection[str] = CORE_COMMAND_NAMES) -> list[Check]:
    """Run every check on ``target`` (a directory or an installed plugin name); one row per check
    and entry point. ``reserved_commands``: command names a plugin may not take (the core CLI's).
    Raises :class:`LazarusError` when ``target`` is not a plugin at all."""
    from lazarus import builtins, hookspecs
    from lazarus.plugins import Registry

    info = resolve_target(target)
    others = Registry(reserved_commands=reserved_commands)
    others.load_builtins(builtins)
    others.load_entry_points(skip=frozenset({info.distribution, *info.entry_points}))
    known_hooks = {name for name in dir(hookspecs) if name.startswith("register_")}
    checks: list[Check] = []
    for plugin, module_name in sorted(info.entry_points.items()):
        def add(what, ok, detail="", plugin=plugin):
            checks.append(Check(plugin, what, ok, detail))

        probe = _import_in_fresh_interpreter(module_name, info.paths)
        if "error" in probe:
            add("entry point imports", False, f"{module_name}: {probe['error']}")
            for what in ("import does not load mlx", "hooks are known", "specs are valid",
                         "no name collisions", "entries load"):
                add(what, None, "needs the module to import")
            continue
        add("entry point imports", True, module_name)
        heavy = probe["heavy"]
        add("import does not load mlx", not heavy,
            f"importing {module_name} imports {', '.join(heavy[:3])}: move that import into the code "
            "named by `entry=` (loaded on use) or inside a function" if heavy else "")

        sys.path[:0] = [p for p in info.paths if p not in sys.path]
        importlib.invalidate_caches()
        module = importlib.import_module(module_name)
        hooks = _hook_functions(module)
        unknown = sorted(set(hooks) - known_hooks)
        add("hooks are known", not unknown,
            f"unknown hook {', '.join(unknown)}; known: {', '.join(sorted(known_hooks))}" if unknown
            else ", ".join(sorted(hooks)) or "implements no hook")

        specs: list[Spec] = []
        commands = click.Group()
        errors = []
        for hook_name, function in sorted(hooks.items()):
            spec_cls = HOOK_KINDS.get(hook_name)

            def register(spec, hook_name=hook_name, spec_cls=spec_cls, specs=specs):
                if not isinstance(spec, spec_cls):
                    raise TypeError(f"{hook_name} expects register({spec_cls.__name__}(...)), "
                                    f"got {type(spec).__name__}")
                specs.append(spec)

            try:
                if hook_name == "register_commands":
                    function(cli=commands)
                elif spec_cls is not None:
                    function(register=register)
            except Exception as exc:
                errors.append(f"{hook_name}: {type(exc).__name__}: {' '.join(str(exc).split())}")
        add("specs are valid", not errors, "; ".join(errors) or f"{len(specs)} spec(s), "
            f"{len(commands.commands)} command(s)")

        clashes = [f"{spec.kind} {spec.name!r} is also registered by {others.owner(spec.kind, spec.name)!r}"
                   for spec in specs if spec.name in others.names(spec.kind)]
        clashes += [f"command {name!r} is also provided by "
                    f"{others.commands[name][0] if name in others.commands else 'lazarus-core'!r}"
                    for name in commands.commands if name in others.commands or name in reserved_commands]
        add("no name collisions", not clashes, "; ".join(clashes))

        problems = []
        for spec in specs:
            try:
                obj = spec.load()
            except Exception as exc:
                problems.append(f"{spec.kind} {spec.name!r}: {spec.entry} does not load: "
                                f"{type(exc).__name__}: {' '.join(str(exc).split())}")
                continue
            problem = entry_problem(spec, obj)
            if problem:
                problems.append(f"{spec.kind} {spec.name!r}: {problem}")
        add("entries load", not problems, "; ".join(problems) or f"{len(specs)} loaded")
    return checks
