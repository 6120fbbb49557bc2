"""``lazarus plugins new KIND NAME``: write a complete plugin distribution from jinja2 templates.

Templates live in ``lazarus/templates/plugin/``: ``_common/`` (pyproject, README, package
``__init__``) plus one folder per kind (``plugin.py``, the implementation, tests). In template
paths ``PACKAGE`` becomes the import package and a ``.j2`` suffix is dropped. The result installs
with ``pip install -e DIR``, shows as ``loaded`` in ``lazarus plugins list`` and its tests pass
with no edits.
"""

from __future__ import annotations

import keyword
import os
from collections.abc import Collection
from pathlib import Path
from typing import Any

from lazarus.commands import CORE_COMMAND_NAMES
from lazarus.errors import LazarusError
from lazarus.specs import KEBAB_CASE, Scaffold
from lazarus.specs import KINDS as SPEC_KINDS

TEMPLATES = Path(__file__).parent / "templates" / "plugin"

#: the ``command`` kind is not a spec: a plugin adds click commands through ``register_commands``
COMMAND_SCAFFOLD = Scaffold("plugin", "A command for the lazarus CLI", "lazarus {name} --help")
#: kind -> what ``plugins new`` writes for it (each spec class carries its own ``scaffold``)
SCAFFOLDS: dict[str, Scaffold] = {
    **{kind: cls.scaffold for kind, cls in SPEC_KINDS.items() if cls.scaffold is not None},
    "command": COMMAND_SCAFFOLD,
}
KINDS = tuple(SCAFFOLDS)


def core_requirement(dist: str = "lazarus-core") -> str:
    """``dist>=X.Y,<X.(Y+1)``: the minor-version range of the running core (0.x breaks on minors)."""
    from lazarus import __version__

    major, minor = (int(part) for part in __version__.split(".")[:2])
    return f"{dist}>={major}.{minor},<{major}.{minor + 1}"


def names_for(name: str) -> dict[str, str]:
    """Distribution, package and Python names derived from a kebab-case plugin name."""
    dist = name if name.startswith("lazarus-") else f"lazarus-{name}"
    snake = name.replace("-", "_")
    if keyword.iskeyword(snake):  # `class`, `def`...: the generated function needs a legal name
        snake += "_"
    return {"name": name, "dist": dist, "package": dist.replace("-", "_"), "snake": snake,
            "title": "".join(part.capitalize() for part in name.split("-"))}


def check_name(kind: str, name: str, reserved_commands: Collection[str] = CORE_COMMAND_NAMES) -> None:
    """Raise :class:`LazarusError` when ``kind`` is unknown, ``name`` is not kebab-case (starting
    with a letter), or ``name`` is already taken by an installed plugin, its distribution, a thing of
    that kind or a command (``reserved_commands``: the core CLI's own)."""
    if kind not in SCAFFOLDS:
        raise LazarusError(f"unknown plugin kind {kind!r}; use one of {', '.join(KINDS)}")
    if not (KEBAB_CASE.match(name) and name[0].isalpha()):
        raise LazarusError(f"plugin name {name!r} is not kebab-case: use lowercase letters, digits and "
                           "single dashes, starting with a letter (e.g. my-reward)")
    from lazarus.plugins import get_registry

    registry = get_registry()
    dist = names_for(name)["dist"]
    for record in registry.plugins.values():
        if name in (record.name, record.distribution) or dist == record.distribution:
            raise LazarusError(f"name {name!r} collides with the installed plugin {record.name!r} "
                               f"({record.distribution}); choose another name")
    taken = set(registry.commands) | set(reserved_commands) if kind == "command" else set(registry.names(kind))
    if name in taken:
        owner = (registry.commands[name][0] if name in registry.commands else "lazarus-core") \
            if kind == "command" else registry.owner(kind, name)
        raise LazarusError(f"{kind} {name!r} is already provided by {owner!r}; choose another name")


def context(kind: str, name: str) -> dict:
    """Everything the templates see."""
    scaffold = SCAFFOLDS[kind]
    ctx: dict[str, Any] = dict(names_for(name))
    dependencies = [core_requirement()]
    if scaffold.runtime_dependency:
        dependencies.append(core_requirement(scaffold.runtime_dependency))
    test_dependencies = ["pytest>=7"]
    if scaffold.needs_families:
        test_dependencies.append(core_requirement("lazarus-families"))
    ctx.update(kind=kind, impl_module=scaffold.module, description=f"{scaffold.description}: {name}",
               usage=scaffold.usage.format(name=name), dependencies=dependencies,
               test_dependencies=test_dependencies)
    return ctx


def render(kind: str, ctx: dict) -> dict[str, str]:
    """Relative path -> file text of the generated distribution."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), undefined=jinja2.StrictUndefined,
                             keep_trailing_newline=True)
    files: dict[str, str] = {}
    for folder in ("_common", kind):
        for path in sorted((TEMPLATES / folder).rglob("*.j2")):
            relative = path.relative_to(TEMPLATES / folder).as_posix()
            target = relative[:-len(".j2")].replace("PACKAGE", ctx["package"])
            files[target] = env.get_template(f"{folder}/{relative}").render(**ctx)
    return files


def new_plugin(kind: str, name: str, output: str | os.PathLike | None = None,
               reserved_commands: Collection[str] = CORE_COMMAND_NAMES) -> Path:
    """Write the ``kind`` plugin ``name`` to ``output`` (default ``./lazarus-NAME``); returns it.

    Refuses a non-empty ``output``. Files are written to a temporary directory beside ``output``
    and renamed into place at the end, so a failure leaves nothing behind.
    """
    check_name(kind, name, reserved_commands)
    ctx = context(kind, name)
    target = Path(output) if output is not None else Path(ctx["dist"])
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise LazarusError(f"{target} already exists and is not empty; choose another --output "
                           "(nothing was written)")
    files = render(kind, ctx)
    target = target.absolute()
    from lazarus.io import atomic_directory

    with atomic_directory(target) as tmp:  # an empty target is replaced; a failure writes nothing
        for relative, text in files.items():
            path = tmp / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    return target

