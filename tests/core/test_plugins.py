"""The plugin machinery, exercised through real entry points of real (on-disk) distributions.

Each test writes small distributions (a module plus a ``*.dist-info`` with ``entry_points.txt``) into a
temporary directory, puts it on PYTHONPATH and runs the real ``lazarus`` CLI in a subprocess, so
discovery goes through ``importlib.metadata`` exactly as for a pip-installed plugin.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

TRAINER_PLUGIN = """
import lazarus
from lazarus.specs import TrainerSpec, RewardFunctionSpec

@lazarus.hookimpl
def register_trainers(register):
    register(TrainerSpec(name="{trainer}", entry="{module}:Trainer", description="a test trainer"))

@lazarus.hookimpl
def register_reward_functions(register):
    register(RewardFunctionSpec(name="{module_dash}-reward", entry="{module}:reward"))
"""


def make_dist(root: Path, dist: str, module: str, source: str, ep_name: str | None = None,
              version: str = "1.2.3") -> None:
    """Write an installed-looking distribution: MODULE.py plus DIST-VERSION.dist-info."""
    (root / f"{module}.py").write_text(textwrap.dedent(source))
    info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[lazarus]\n{ep_name or dist} = {module}\n")


def trainer_dist(root: Path, dist: str, module: str, trainer: str) -> None:
    make_dist(root, dist, module, TRAINER_PLUGIN.format(
        trainer=trainer, module=module, module_dash=module.replace("_", "-")))


def run_cli(root: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("LAZARUS_")}
    environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), environ.get("PYTHONPATH")]))
    environ.update(env)
    return subprocess.run([sys.executable, "-m", "lazarus.cli", *args], env=environ,
                          capture_output=True, text=True, timeout=120)


def listed(root: Path, **env: str) -> dict[str, dict]:
    result = run_cli(root, "plugins", "list", "--json", "--all", **env)
    assert result.returncode == 0, result.stderr
    return {row["name"]: row for row in json.loads(result.stdout)}


def test_installed_distribution_is_discovered(tmp_path):
    trainer_dist(tmp_path, "lazarus-acme", "acme_plugin", "acme")
    row = listed(tmp_path)["lazarus-acme"]
    assert row["distribution"] == "lazarus-acme"
    assert row["version"] == "1.2.3"
    assert row["status"] == "loaded"
    assert row["provides"] == {"trainers": ["acme"], "reward-functions": ["acme-plugin-reward"]}
    assert row["hooks"] == ["register_reward_functions", "register_trainers"]


def test_first_party_and_core_plugins_are_listed(tmp_path):
    rows = listed(tmp_path)
    for name in ("lazarus-core", "lazarus-families", "lazarus-trainers", "lazarus-introspect",
                 "lazarus-experts", "example"):
        assert rows[name]["status"] == "loaded", rows[name]
    assert rows["lazarus-core"]["builtin"] is True
    assert rows["example"]["distribution"] == "lazarus-example"
    # without --all the core's built-in row is hidden, the installed ones are not
    result = run_cli(tmp_path, "plugins", "list", "--json")
    names = {row["name"] for row in json.loads(result.stdout)}
    assert "lazarus-core" not in names and "example" in names


BROKEN = {
    "import": ("lazarus-bad-import", "bad_import", "raise RuntimeError('cannot import me')\n",
               "could not import bad_import: RuntimeError: cannot import me"),
    "register": ("lazarus-bad-register", "bad_register", """
        import lazarus

        @lazarus.hookimpl
        def register_trainers(register):
            raise ValueError('register exploded')
        """, "registration failed: ValueError: register exploded"),
    "unknown-hook": ("lazarus-bad-hook", "bad_hook", """
        import lazarus

        @lazarus.hookimpl
        def register_widgets(register):
            pass
        """, "implements an unknown hook"),
}


@pytest.mark.parametrize("kind", sorted(BROKEN))
def test_broken_plugin_is_reported_and_others_keep_working(tmp_path, kind):
    dist, module, source, message = BROKEN[kind]
    make_dist(tmp_path, dist, module, source)
    trainer_dist(tmp_path, "lazarus-good", "good_plugin", "good")
    rows = listed(tmp_path)
    assert rows[dist]["status"] == "failed"
    assert message in rows[dist]["error"]
    assert rows[dist]["provides"] == {}
    assert rows["lazarus-good"]["status"] == "loaded"
    # the table view works too and shows the error
    table = run_cli(tmp_path, "plugins", "list")
    assert table.returncode == 0 and "failed" in table.stdout
    # strict mode raises the error instead: one line, exit 2, no traceback
    strict = run_cli(tmp_path, "plugins", "list", LAZARUS_STRICT_PLUGINS="1")
    assert strict.returncode == 2
    assert message.split(":")[0] in strict.stderr and "Traceback" not in strict.stderr
    assert dist in strict.stderr


def test_failed_registration_leaves_nothing_half_registered(tmp_path):
    make_dist(tmp_path, "lazarus-half", "half_plugin", """
        import lazarus
        from lazarus.specs import TrainerSpec

        @lazarus.hookimpl
        def register_trainers(register):
            register(TrainerSpec(name="half", entry="half_plugin:T"))
            raise RuntimeError("second half failed")
        """)
    result = run_cli(tmp_path, "plugins", "show", "half")
    assert result.returncode == 2 and "no plugin named 'half'" in result.stderr
    rows = listed(tmp_path)
    assert rows["lazarus-half"]["status"] == "failed"
    assert all("half" not in row["provides"].get("trainers", []) for row in rows.values())


def test_allow_and_block_lists(tmp_path):
    trainer_dist(tmp_path, "lazarus-one", "one_plugin", "one")
    trainer_dist(tmp_path, "lazarus-two", "two_plugin", "two")
    rows = listed(tmp_path, LAZARUS_LOAD_PLUGINS="lazarus-one")
    assert rows["lazarus-one"]["status"] == "loaded"
    assert rows["lazarus-two"]["status"] == "blocked"
    assert "LAZARUS_LOAD_PLUGINS" in rows["lazarus-two"]["error"]
    assert rows["lazarus-core"]["status"] == "loaded"  # built-ins are the core, never blocked

    rows = listed(tmp_path, LAZARUS_LOAD_PLUGINS="")
    assert {r["status"] for n, r in rows.items() if n != "lazarus-core"} == {"blocked"}

    rows = listed(tmp_path, LAZARUS_DISABLE_PLUGINS="lazarus-two, example")
    assert rows["lazarus-one"]["status"] == "loaded"
    assert rows["lazarus-two"]["status"] == "blocked"
    assert rows["example"]["status"] == "blocked"
    # a blocked plugin's command is gone from the CLI
    def command_names(text):  # the first word of each line of the command list (help text may say "reward")
        return [line.split()[0] for line in text.split("Commands:")[1].splitlines() if line.strip()]

    assert "reward" not in command_names(run_cli(tmp_path, "--help", LAZARUS_DISABLE_PLUGINS="example").stdout)
    assert "reward" in command_names(run_cli(tmp_path, "--help").stdout)


def test_name_collision_names_both_plugins(tmp_path):
    trainer_dist(tmp_path, "lazarus-alpha", "alpha_plugin", "clash")
    trainer_dist(tmp_path, "lazarus-beta", "beta_plugin", "clash")
    rows = listed(tmp_path)
    assert rows["lazarus-alpha"]["status"] == "loaded"
    assert rows["lazarus-beta"]["status"] == "failed"
    error = rows["lazarus-beta"]["error"]
    assert "'clash'" in error and "lazarus-alpha" in error and "lazarus-beta" in error
    strict = run_cli(tmp_path, "plugins", "list", LAZARUS_STRICT_PLUGINS="1")
    assert strict.returncode == 2 and "lazarus-alpha" in strict.stderr


def test_command_collision_with_core_command_is_refused(tmp_path):
    make_dist(tmp_path, "lazarus-hijack", "hijack_plugin", """
        import click
        import lazarus

        @lazarus.hookimpl
        def register_commands(cli):
            @cli.command()
            def doctor():
                click.echo("hijacked")
        """)
    rows = listed(tmp_path)
    assert rows["lazarus-hijack"]["status"] == "failed"
    assert "'doctor'" in rows["lazarus-hijack"]["error"]
    assert "hijacked" not in run_cli(tmp_path, "doctor", "--json").stdout


def test_non_kebab_name_is_a_registration_error(tmp_path):
    make_dist(tmp_path, "lazarus-camel", "camel_plugin", """
        import lazarus
        from lazarus.specs import TrainerSpec

        @lazarus.hookimpl
        def register_trainers(register):
            register(TrainerSpec(name="MyTrainer", entry="camel_plugin:T"))
        """)
    row = listed(tmp_path)["lazarus-camel"]
    assert row["status"] == "failed" and "kebab-case" in row["error"]


LIGHT_START = """
import sys
from lazarus.cli import main
for args in (["--help"], ["plugins", "list"], ["plugins", "list", "--json", "--all"]):
    try:
        main(args, prog_name="lazarus")
    except SystemExit as exc:
        assert exc.code == 0, (args, exc.code)
heavy = sorted(m for m in sys.modules if m == "mlx" or m.startswith("mlx.") or m.startswith("mlx_lm"))
print("HEAVY:", ",".join(heavy))
"""


def test_help_and_plugins_list_do_not_import_mlx(tmp_path):
    environ = {k: v for k, v in os.environ.items() if not k.startswith("LAZARUS_")}
    result = subprocess.run([sys.executable, "-c", LIGHT_START], env=environ, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "HEAVY:"


def test_unknown_name_error_lists_installed_and_how_to_install():
    from lazarus.errors import UnknownNameError
    from lazarus.plugins import get_registry

    with pytest.raises(UnknownNameError) as err:
        get_registry().get("reward-function", "nope")
    message = str(err.value)
    assert "no reward-function named 'nope'" in message
    assert "keyword" in message and "pip install lazarus-trainers" in message


def test_unknown_name_from_the_cli_is_one_line_exit_2(tmp_path):
    result = run_cli(tmp_path, "reward", "nope", "--completion", "x")
    assert result.returncode == 2
    assert "no reward-function named 'nope'; installed: " in result.stderr and "keyword" in result.stderr
    assert "Traceback" not in result.stderr


def test_plugins_show_and_hook_filter(tmp_path):
    trainer_dist(tmp_path, "lazarus-acme", "acme_plugin", "acme")
    shown = run_cli(tmp_path, "plugins", "show", "lazarus-acme", "--json")
    data = json.loads(shown.stdout)
    assert data["items"][0] == {"kind": "trainer", "name": "acme", "entry": "acme_plugin:Trainer",
                                "description": "a test trainer", "data_format": "sft"}
    text = run_cli(tmp_path, "plugins", "show", "lazarus-acme").stdout
    assert "trainer acme" in text and "a test trainer" in text
    for hook in ("trainers", "register_trainers", "register-trainers"):
        result = run_cli(tmp_path, "plugins", "list", "--json", "--hook", hook)
        names = [row["name"] for row in json.loads(result.stdout)]
        assert "lazarus-acme" in names and "example" not in names


def test_version_and_doctor(tmp_path):
    import lazarus

    assert run_cli(tmp_path, "--version").stdout.strip() == f"lazarus, version {lazarus.__version__}"
    report = json.loads(run_cli(tmp_path, "doctor", "--json").stdout)
    assert report["mlx"] and report["default_device"]
    assert isinstance(report["gpu_backend"], bool)
    assert report["plugins"]["example"]["status"] == "loaded"


def test_unknown_name_after_a_plugin_failed_points_at_that_plugin(tmp_path):
    """A reward from a plugin that failed to import: the error names the plugin and why it
    failed, instead of telling the user to install a distribution they already have."""
    make_dist(tmp_path, "lazarus-answers", "answers_plugin", "raise ImportError('no module named sympy')\n")
    result = run_cli(tmp_path, "reward", "has-answer", "--completion", "x")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "no reward-function named 'has-answer'" in result.stderr
    assert "lazarus-answers" in result.stderr and "no module named sympy" in result.stderr
    assert "pip install lazarus-trainers" not in result.stderr


def test_the_core_command_names_the_registry_reserves_are_the_clis():
    """The registry refuses plugin commands named like a core one without importing lazarus.cli:
    lazarus.commands lists them, and that list must stay what the CLI defines."""
    from lazarus.cli import main
    from lazarus.commands import CORE_COMMAND_NAMES, CORE_COMMANDS

    assert CORE_COMMAND_NAMES == set(CORE_COMMANDS) | set(main.commands)


def test_registration_hooks_are_called_through_pluggy():
    """A plugin's tryfirst/trylast implementations run in that order, and its hook wrapper runs
    around them, as pluggy documents (the registry calls hooks through pluggy, not directly)."""
    import types

    import lazarus
    from lazarus.plugins import Registry
    from lazarus.specs import RewardFunctionSpec

    order = []

    @lazarus.hookimpl(trylast=True, specname="register_reward_functions")
    def late(register):
        order.append("late")
        register(RewardFunctionSpec(name="late-reward", entry="math:fabs"))

    @lazarus.hookimpl(tryfirst=True, specname="register_reward_functions")
    def early(register):
        order.append("early")
        register(RewardFunctionSpec(name="early-reward", entry="math:fabs"))

    @lazarus.hookimpl(wrapper=True, specname="register_reward_functions")
    def around(register):
        order.append("wrapper before")
        result = yield
        order.append("wrapper after")
        return result

    plugin = types.ModuleType("ordered")
    plugin.late, plugin.early, plugin.around = late, early, around
    record = Registry().add_plugin(plugin, "ordered")
    assert record.status == "loaded", record.error
    assert order == ["wrapper before", "early", "late", "wrapper after"]
    assert sorted(record.provides["reward-functions"]) == ["early-reward", "late-reward"]
