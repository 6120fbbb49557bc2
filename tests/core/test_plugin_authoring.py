"""The plugin authoring kit as an outside author meets it: `lazarus plugins new` for every kind,
the generated plugin installed, listed and its own tests run; `plugins check`; install/uninstall.

Installing: the nine generated plugins are "installed" the way an editable pip install appears to
``importlib.metadata``: a ``NAME-VERSION.dist-info`` (METADATA + entry_points.txt written from the
generated pyproject.toml) and the plugin's ``src/`` on ``PYTHONPATH`` of a subprocess (nine
editable installs would cost about 20 s on a 2-core machine). A real ``pip install -e`` through
``lazarus install`` into a temporary venv is tested once, in the round-trip test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import textwrap
import types
from pathlib import Path

import pytest

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

from lazarus.scaffold import KINDS


def installed_env(*roots: Path, site: Path) -> dict[str, str]:
    """Environment for a subprocess that sees the plugins in ``roots`` as installed."""
    site.mkdir(exist_ok=True)
    paths = [str(site)]
    for root in roots:
        project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
        info = site / f"{project['name'].replace('-', '_')}-{project['version']}.dist-info"
        info.mkdir(exist_ok=True)
        (info / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n")
        entry_points = project["entry-points"]["lazarus"]
        (info / "entry_points.txt").write_text(
            "[lazarus]\n" + "".join(f"{name} = {value}\n" for name, value in entry_points.items()))
        paths.append(str(root / "src"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAZARUS_")}
    env["PYTHONPATH"] = os.pathsep.join(paths + [env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["LAZARUS_STRICT_PLUGINS"] = "1"
    return env


def lazarus(*args, env=None, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lazarus.cli", *map(str, args)], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """kind -> directory of the plugin `lazarus plugins new KIND demo-KIND` wrote."""
    from click.testing import CliRunner

    from lazarus.cli import main

    root = tmp_path_factory.mktemp("generated")
    out = {}
    for kind in KINDS:
        result = CliRunner().invoke(main, ["plugins", "new", kind, f"demo-{kind}", "--output",
                                           str(root / kind)], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        out[kind] = root / kind
    return out


def test_every_kind_is_a_complete_distribution(generated):
    for kind, root in generated.items():
        package = f"lazarus_demo_{kind.replace('-', '_')}"
        files = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
        assert {"pyproject.toml", "README.md", f"src/{package}/__init__.py", f"src/{package}/plugin.py",
                f"tests/test_{package}.py"} <= files, kind
        project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
        assert project["entry-points"]["lazarus"] == {f"demo-{kind}": f"{package}.plugin"}
        assert project["dependencies"][0] == "lazarus-core>=0.1,<0.2"


@pytest.mark.slow
def test_every_kind_installed_is_loaded_and_its_own_tests_pass(generated, tmp_path):
    env = installed_env(*generated.values(), site=tmp_path / "site")
    listed = lazarus("plugins", "list", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    rows = {row["name"]: row for row in json.loads(listed.stdout)}
    for kind in KINDS:
        row = rows[f"demo-{kind}"]
        assert (row["status"], row["distribution"], row["version"]) == (
            "loaded", f"lazarus-demo-{kind}", "0.1.0"), row
        assert row["provides"] == {
            ("commands" if kind == "command" else f"{kind}s" if kind != "family" else "families"):
            [f"demo-{kind}"]}
    # the generated tests use the fixtures of lazarus-core's pytest plugin, in a fresh pytest
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             *map(str, generated.values())], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    summary = result.stdout.strip().splitlines()[-1]
    assert "passed" in summary and "failed" not in summary and "skipped" not in summary, summary
    for kind, root in generated.items():
        checked = lazarus("plugins", "check", root, "--json", env=env) if kind in ("probe", "family") else None
        if checked is not None:
            assert checked.returncode == 0, checked.stdout + checked.stderr
            assert all(row["ok"] for row in json.loads(checked.stdout))


def test_plugins_new_refuses_bad_names_and_non_empty_directories(lazarus_cli, tmp_path):
    cases = [
        (("reward-function", "My_Reward"), "not kebab-case"),
        (("reward-function", "keyword"), "reward-function 'keyword' is already provided by 'example'"),
        (("command", "train"), "command 'train' is already provided by 'lazarus-core'"),
        (("trainer", "example"), "collides with the installed plugin 'example'"),
    ]
    for args, message in cases:
        result = lazarus_cli("plugins", "new", *args, "--output", tmp_path / "out")
        assert result.exit_code == 2 and message in result.stderr, result.output
        assert not (tmp_path / "out").exists()
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "mine.txt").write_text("keep me")
    result = lazarus_cli("plugins", "new", "probe", "fresh-probe", "--output", occupied)
    assert result.exit_code == 2 and "not empty" in result.stderr
    assert [p.name for p in occupied.iterdir()] == ["mine.txt"]
    assert lazarus_cli("plugins", "new", "widget", "x").exit_code == 2  # unknown kind
    assert [p.name for p in tmp_path.iterdir()] == ["occupied"]  # no temporary directory left


BROKEN_PLUGINS = {
    "does-not-import": ("import lazarus\nraise ImportError('no module named acme_sdk')\n",
                        "entry point imports", "no module named acme_sdk"),
    "unknown-hook": ("import lazarus\n\n@lazarus.hookimpl\ndef register_trainer(register):\n    pass\n",
                     "hooks are known", "unknown hook register_trainer"),
    "not-kebab": ("import lazarus\nfrom lazarus.specs import RewardFunctionSpec\n\n@lazarus.hookimpl\n"
                  "def register_reward_functions(register):\n"
                  "    register(RewardFunctionSpec(name='My_Reward', entry='json:dumps'))\n",
                  "specs are valid", "kebab-case"),
    "collision": ("import lazarus\nfrom lazarus.specs import RewardFunctionSpec\n\n@lazarus.hookimpl\n"
                  "def register_reward_functions(register):\n"
                  "    register(RewardFunctionSpec(name='keyword', entry='json:dumps'))\n",
                  "no name collisions", "'keyword' is also registered by 'example'"),
    "heavy-import": ("import mlx.core\nimport lazarus\n", "import does not load mlx", "imports mlx"),
}


@pytest.mark.parametrize("case", sorted(BROKEN_PLUGINS))
def test_plugins_check_catches_what_would_break_users(lazarus_cli, tmp_path, case):
    source, failing, message = BROKEN_PLUGINS[case]
    package = f"broken_{case.replace('-', '_')}"
    (tmp_path / "src" / package).mkdir(parents=True)
    (tmp_path / "src" / package / "__init__.py").write_text("")
    (tmp_path / "src" / package / "plugin.py").write_text(source)
    (tmp_path / "pyproject.toml").write_text(textwrap.dedent(f"""
        [project]
        name = "lazarus-{case}"
        version = "0.1.0"
        [project.entry-points.lazarus]
        {case} = "{package}.plugin"
        """))
    result = lazarus_cli("plugins", "check", tmp_path, "--json")
    assert result.exit_code == 1
    rows = {row["check"]: row for row in json.loads(result.stdout)}
    assert rows[failing]["ok"] is False and message in rows[failing]["detail"], rows[failing]
    assert [name for name, row in rows.items() if row["ok"] is False] == [failing]
    text = lazarus_cli("plugins", "check", tmp_path)
    assert text.exit_code == 1 and f"FAIL {case}: {failing}" in text.stdout and "1 problem(s)" in text.stdout


def test_plugins_check_of_an_installed_plugin_and_of_nothing(lazarus_cli, tmp_path):
    result = lazarus_cli("plugins", "check", "lazarus-example")
    assert result.exit_code == 0 and "all checks passed" in result.stdout
    missing = lazarus_cli("plugins", "check", "no-such-plugin")
    assert missing.exit_code == 2 and "neither a directory nor an installed plugin" in missing.stderr
    empty = lazarus_cli("plugins", "check", tmp_path)
    assert empty.exit_code == 2 and "no pyproject.toml" in empty.stderr


@pytest.mark.slow
def test_install_and_uninstall_a_local_directory_in_a_temp_venv(generated, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    # the venv sees this environment's packages (lazarus-core, pip, setuptools) through a .pth
    (Path(site) / "parent-env.pth").write_text(
        f"import site; site.addsitedir({sysconfig.get_paths()['purelib']!r})\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LAZARUS_", "PYTHONPATH", "VIRTUAL_ENV"))}
    plugin = generated["reward-function"]

    def run(*args):
        return subprocess.run([python, "-m", "lazarus.cli", *map(str, args)], env=env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=300)

    installed = run("install", "--no-build-isolation", "--no-deps", "--no-index", "-e", plugin)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    assert ("demo-reward-function (lazarus-demo-reward-function 0.1.0): loaded — provides "
            "reward-functions: demo-reward-function") in installed.stdout
    assert list(Path(site).glob("lazarus_demo_reward_function-0.1.0.dist-info"))  # into the venv
    rows = {row["name"]: row for row in json.loads(run("plugins", "list", "--json").stdout)}
    assert rows["demo-reward-function"]["status"] == "loaded"
    # this environment itself is untouched
    assert "demo-reward-function" not in lazarus("plugins", "list", "--json").stdout

    removed = run("uninstall", "demo-reward-function")
    assert removed.returncode == 0, removed.stdout + removed.stderr
    assert "removed demo-reward-function (lazarus-demo-reward-function 0.1.0)" in removed.stdout
    assert "demo-reward-function" not in run("plugins", "list", "--json").stdout
    assert run("install").returncode == 2


def test_plugin_registry_fixture_holds_only_what_the_test_names(plugin_registry, lazarus_cli):
    import lazarus
    from lazarus.plugins import get
    from lazarus.specs import RewardFunctionSpec

    @lazarus.hookimpl
    def register_reward_functions(register):
        register(RewardFunctionSpec(name="always-one", entry="json:dumps"))

    in_process = types.ModuleType("in_process")  # a plugin module made in the test
    in_process.register_reward_functions = register_reward_functions
    registry = plugin_registry("example", in_process)
    assert set(registry.plugins) == {"lazarus-core", "example", "in-process"}
    assert registry.names("reward-function") == ["always-one", "keyword"]
    assert get("reward-function", "always-one").entry == "json:dumps"
    assert registry.names("trainer") == []
    listed = {row["name"] for row in lazarus_cli("plugins", "list", "--json").json()}
    assert listed == {"example", "in-process"}


@pytest.mark.parametrize("kind,format", [("completion", "sft"), ("chat", "sft"), ("text", "sft"),
                                         ("preference", "preference"), ("prompt", "prompt")])
def test_tiny_dataset_fixture_reads_as_its_format(tiny_dataset, kind, format):
    from lazarus.data.records import load_splits

    splits = load_splits(tiny_dataset(kind, count=8), format)
    assert len(splits.train) == 8 and len(splits.valid) == 2
    assert splits.train.kind == kind
