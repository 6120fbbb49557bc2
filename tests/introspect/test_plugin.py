"""The probes are plugins: registered by name, listed by `lazarus introspect --help` without mlx."""

from __future__ import annotations

import json
import subprocess
import sys

from lazarus_introspect.plugin import PROBES


def test_every_probe_is_registered_and_loads_a_click_command():
    import click

    from lazarus.plugins import get_registry

    registry = get_registry()
    assert set(PROBES) <= set(registry.names("probe"))
    for name in PROBES:
        assert registry.owner("probe", name) == "lazarus-introspect"
        entry = registry.get("probe", name).load()
        # a probe is a click command or an operation (lazarus.operations) that builds one
        command = entry if isinstance(entry, click.Command) else entry.command(name)
        assert isinstance(command, click.Command) and command.name == name


def test_introspect_help_lists_probes_without_importing_mlx():
    code = ("import sys; from click.testing import CliRunner; from lazarus.cli import main; "
            "r = CliRunner().invoke(main, ['introspect', '--help']); "
            "print(r.output); print('MLX_IMPORTED' if any(m == 'mlx' or m.startswith('mlx.') for m in sys.modules) else 'NO_MLX')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().endswith("NO_MLX")
    for name in PROBES:
        assert name in out


def test_plugins_list_shows_the_probes(cli):
    code, output = cli("plugins", "list", "--json", "--hook", "probes")
    assert code == 0
    record = next(r for r in json.loads(output) if r["name"] == "lazarus-introspect")
    assert record["status"] == "loaded"
    assert sorted(record["provides"]["probes"]) == sorted(PROBES)
    assert sorted(record["provides"]["commands"]) == ["introspect", "sae"]
