"""Plugin discovery and the registries.

Entry points in the ``lazarus`` group are loaded one at a time. A plugin that fails to import or
to register is recorded with its error and the others keep working. Everything a plugin registers
goes into one :class:`Registry`; ``get_registry()`` builds it once per process.

Environment:
  LAZARUS_LOAD_PLUGINS=a,b     load only these plugins (entry-point or distribution names); empty = none
  LAZARUS_DISABLE_PLUGINS=a,b  never load these
  LAZARUS_STRICT_PLUGINS=1     re-raise plugin load and registration errors
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Collection
from importlib import metadata
from types import ModuleType

import attrs
import click
import pluggy

from lazarus import hookspecs
from lazarus.commands import CORE_COMMAND_NAMES
from lazarus.errors import PluginError, UnknownNameError
from lazarus.specs import HOOK_KINDS, KINDS, Spec

ENTRY_POINT_GROUP = "lazarus"
CORE_PLUGIN = "lazarus-core"

LOADED, FAILED, BLOCKED = "loaded", "failed", "blocked"


@attrs.define
class PluginRecord:
    """One plugin as ``lazarus plugins list`` shows it."""

    name: str
    distribution: str
    version: str
    status: str
    module: str = ""
    builtin: bool = False
    error: str | None = None
    hooks: list[str] = attrs.Factory(list)
    #: kind plural ("trainers", "commands") -> registered names
    provides: dict[str, list[str]] = attrs.Factory(dict)

    def as_dict(self) -> dict:
        return attrs.asdict(self)


def _env_list(name: str) -> set[str] | None:
    value = os.environ.get(name)
    if value is None:
        return None
    return {part.strip() for part in value.split(",") if part.strip()}


def _strict() -> bool:
    return os.environ.get("LAZARUS_STRICT_PLUGINS", "").strip().lower() in {"1", "true", "yes", "on"}


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class Registry:
    """All plugins and everything they registered, by kind and name."""

    def __init__(self, reserved_commands: Collection[str] = CORE_COMMAND_NAMES) -> None:
        #: command names no plugin may register (the core CLI's own)
        self.reserved_commands = frozenset(reserved_commands)
        self.pm = pluggy.PluginManager("lazarus")
        self.pm.add_hookspecs(hookspecs)
        self.plugins: dict[str, PluginRecord] = {}
        self._items: dict[str, dict[str, Spec]] = {kind: {} for kind in KINDS}
        self._owners: dict[tuple[str, str], str] = {}
        #: command name -> (plugin name, click command)
        self.commands: dict[str, tuple[str, click.Command]] = {}

    # -- lookup -------------------------------------------------------------------------------
    def names(self, kind: str) -> list[str]:
        """Sorted names registered for ``kind`` ("family", "trainer", ...)."""
        return sorted(self._items[kind])

    def all(self, kind: str) -> dict[str, Spec]:
        return dict(sorted(self._items[kind].items()))

    def owner(self, kind: str, name: str) -> str:
        return self._owners[(kind, name)]

    def get(self, kind: str, name: str) -> Spec:
        """The spec of that kind and name, or an error that lists what is installed."""
        try:
            return self._items[kind][name]
        except KeyError:
            pass
        spec_cls = KINDS[kind]
        installed = ", ".join(self.names(kind)) or "none"
        failed = [r for r in self.plugins.values() if r.status == FAILED]
        if failed:  # the name may well be one of theirs: point at them, not at installing more
            broken = "; ".join(f"{r.name} ({r.distribution} {r.version}): {r.error}" for r in failed)
            raise UnknownNameError(
                f"no {kind} named {name!r}; installed: {installed} — "
                f"{'a plugin' if len(failed) == 1 else 'plugins'} that may provide it failed to load: {broken}; "
                "fix it and see `lazarus plugins list`"
            )
        hint = f"pip install {spec_cls.install_hint}" if spec_cls.install_hint else "pip install a plugin"
        raise UnknownNameError(
            f"no {kind} named {name!r}; installed: {installed} — install one with {hint}, "
            f"or see `lazarus plugins list`"
        )

    # -- loading ------------------------------------------------------------------------------
    def load_builtins(self, module: ModuleType) -> None:
        version = _dist_version(CORE_PLUGIN)
        self._add(CORE_PLUGIN, module, CORE_PLUGIN, version, builtin=True)

    def load_entry_points(self, skip: frozenset[str] = frozenset()) -> None:
        """Load every installed plugin the environment allows; ``skip`` leaves out plugins by
        entry-point or distribution name without listing them (``plugins check`` adds one itself)."""
        allow = _env_list("LAZARUS_LOAD_PLUGINS")
        block = _env_list("LAZARUS_DISABLE_PLUGINS") or set()
        seen: set[str] = set()
        for ep in sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            # seen: the same dist found twice on sys.path
            if ep.name in seen or ep.name in skip or (ep.dist and ep.dist.name in skip):
                continue
            seen.add(ep.name)
            dist = ep.dist.name if ep.dist else "?"
            version = ep.dist.version if ep.dist else "?"
            names = {ep.name, dist}
            if (allow is not None and not names & allow) or names & block:
                why = "not in LAZARUS_LOAD_PLUGINS" if allow is not None and not names & allow else (
                    "listed in LAZARUS_DISABLE_PLUGINS"
                )
                self.plugins[ep.name] = PluginRecord(
                    ep.name, dist, version, BLOCKED, module=ep.value, error=why
                )
                continue
            try:
                module = ep.load()
            except Exception as exc:  # a broken plugin must not break the others
                self._fail(PluginRecord(ep.name, dist, version, FAILED, module=ep.value), exc,
                           f"could not import {ep.value}")
                continue
            self._add(ep.name, module, dist, version)

    def add_plugin(self, plugin: object, name: str, distribution: str = "", version: str = "0") -> PluginRecord:
        """Register a module (or any object holding ``@lazarus.hookimpl`` functions) in-process, as
        if it were an installed plugin; returns its record (status ``loaded`` or ``failed``)."""
        self._add(name, plugin, distribution or name, version)
        return self.plugins[name]

    def _fail(self, record: PluginRecord, exc: BaseException, what: str) -> None:
        record.status = FAILED
        record.error = f"{what}: {_one_line(exc)}"
        record.provides = {}
        self.plugins[record.name] = record
        if _strict():
            raise PluginError(f"plugin {record.name!r} ({record.distribution}): {record.error}") from exc
        if os.environ.get("LAZARUS_DEBUG"):
            traceback.print_exception(exc)

    def _add(self, name: str, module: ModuleType | object, dist: str, version: str, builtin: bool = False) -> None:
        record = PluginRecord(name, dist, version, LOADED, builtin=builtin,
                              module=getattr(module, "__name__", type(module).__name__))
        try:
            self.pm.register(module, name=name)
        except Exception as exc:
            self._fail(record, exc, "invalid hook implementation")
            return
        try:
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            self.pm.unregister(module)
            self._fail(record, exc, "implements an unknown hook")
            return
        record.hooks = sorted(caller.name for caller in self.pm.get_hookcallers(module) or [])

        pending: list[Spec] = []
        commands = click.Group()
        # call this plugin's implementations through pluggy (so its tryfirst/trylast ordering and
        # hook wrappers apply), leaving out the plugins registered before it
        others = [plugin for plugin in self.pm.get_plugins() if plugin is not module]
        try:
            for hook_name, spec_cls in HOOK_KINDS.items():
                caller = self.pm.subset_hook_caller(hook_name, remove_plugins=others)
                caller(register=_collector(hook_name, spec_cls, pending))
            self.pm.subset_hook_caller("register_commands", remove_plugins=others)(cli=commands)
            self._check_collisions(name, pending, commands)
        except Exception as exc:
            self.pm.unregister(module)
            self._fail(record, exc, "registration failed")
            return

        for spec in pending:
            self._items[spec.kind][spec.name] = spec
            self._owners[(spec.kind, spec.name)] = name
            record.provides.setdefault(spec.plural, []).append(spec.name)
        for cmd_name, command in commands.commands.items():
            self.commands[cmd_name] = (name, command)
            record.provides.setdefault("commands", []).append(cmd_name)
        self.plugins[name] = record

    def _check_collisions(self, plugin: str, pending: list[Spec], commands: click.Group) -> None:
        seen: set[tuple[str, str]] = set()
        for spec in pending:
            key = (spec.kind, spec.name)
            if key in seen:
                raise PluginError(f"registers {spec.kind} {spec.name!r} twice")
            seen.add(key)
            if key in self._owners:
                other = self._owners[key]
                raise PluginError(
                    f"{spec.kind} name {spec.name!r} is registered by both {other!r} "
                    f"({self.plugins[other].distribution}) and {plugin!r}; uninstall one or set "
                    f"LAZARUS_DISABLE_PLUGINS={plugin}"
                )
        for cmd_name in commands.commands:
            if cmd_name in self.commands or cmd_name in self.reserved_commands:
                other = self.commands[cmd_name][0] if cmd_name in self.commands else CORE_PLUGIN
                raise PluginError(
                    f"command {cmd_name!r} is provided by both {other!r} and {plugin!r}; "
                    f"uninstall one or set LAZARUS_DISABLE_PLUGINS={plugin}"
                )


def _collector(hook_name: str, spec_cls: type[Spec], pending: list[Spec]):
    def register(spec: Spec) -> None:
        if not isinstance(spec, spec_cls):
            raise TypeError(
                f"{hook_name} expects register({spec_cls.__name__}(...)), got {type(spec).__name__}"
            )
        pending.append(spec)

    return register


def _dist_version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        from lazarus import __version__

        return __version__


_REGISTRY: Registry | None = None


def get_registry() -> Registry:
    """The process-wide registry, built on first use."""
    global _REGISTRY
    if _REGISTRY is None:
        from lazarus import builtins

        registry = Registry(reserved_commands=CORE_COMMAND_NAMES)
        registry.load_builtins(builtins)
        registry.load_entry_points()
        _REGISTRY = registry
    return _REGISTRY


def reset_registry() -> None:
    """Forget the registry so the next ``get_registry()`` rediscovers plugins (tests use this)."""
    global _REGISTRY
    _REGISTRY = None


def get(kind: str, name: str) -> Spec:
    """Shortcut for ``get_registry().get(kind, name)``."""
    return get_registry().get(kind, name)
