"""Test helpers for plugin authors (and Lazarus's own tests).

``lazarus-core`` registers :mod:`lazarus.testing.pytest_plugin` through the ``pytest11`` entry
point, so with ``lazarus-core`` installed every pytest run has the fixtures ``tiny_checkpoint``,
``tiny_dataset``, ``lazarus_cli`` and ``plugin_registry``. The helpers below assert that what a
plugin registers is valid:

    from lazarus.testing import assert_plugin_valid, assert_spec_valid

    def test_my_plugin_is_valid():
        assert_plugin_valid("my-plugin")      # loaded, and every entry loads and fits its kind

Importing this module does not import mlx (loading an entry may).
"""

from __future__ import annotations

from lazarus.plugin_check import entry_problem
from lazarus.specs import Spec


def assert_spec_valid(spec: Spec) -> object:
    """Assert that ``spec``'s entry imports and satisfies its kind's contract; returns the loaded
    object. The failure message names the spec and what is wrong."""
    assert isinstance(spec, Spec), f"expected a lazarus.specs spec, got {type(spec).__name__}"
    try:
        obj = spec.load()
    except Exception as exc:  # report, as a test failure, what the author must fix
        raise AssertionError(f"{spec.kind} {spec.name!r}: entry {spec.entry!r} does not load: "
                             f"{type(exc).__name__}: {exc}") from exc
    problem = entry_problem(spec, obj)
    assert problem is None, f"{spec.kind} {spec.name!r} ({spec.entry}): {problem}"
    return obj


def assert_plugin_valid(name: str, registry=None) -> dict:
    """Assert that the installed plugin ``name`` (entry-point or distribution name) is ``loaded``
    and that every spec it registered passes :func:`assert_spec_valid`; returns its record as a
    dict (``provides`` says what it registered)."""
    from lazarus.plugins import get_registry
    from lazarus.specs import KINDS

    registry = registry or get_registry()
    record = registry.plugins.get(name) or next(
        (r for r in registry.plugins.values() if r.distribution == name), None)
    assert record is not None, (f"no plugin named {name!r} is installed; installed: "
                                f"{', '.join(sorted(registry.plugins)) or 'none'} (pip install -e . first?)")
    assert record.status == "loaded", f"plugin {name!r} is {record.status}: {record.error}"
    for kind, spec_cls in KINDS.items():
        for item in record.provides.get(spec_cls.plural, []):
            assert_spec_valid(registry.get(kind, item))
    return record.as_dict()


__all__ = ["assert_plugin_valid", "assert_spec_valid"]
