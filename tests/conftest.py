"""Shared fixtures (``tiny_checkpoint``, ``tiny_dataset``, ``lazarus_cli``, ``plugin_registry``) come from
lazarus-core's pytest plugin, :mod:`lazarus.testing.pytest_plugin`, the same ones plugin authors use."""

import pytest

#: every family of lazarus-families, the one list the family-parametrised tests share
#: (``from tests.conftest import FAMILIES``)
FAMILIES = ("llama", "mistral", "qwen2", "gemma", "gemma2", "granite", "qwen3", "gemma3", "phi3", "starcoder2")


#: test files whose tests share one expensive run (a module fixture): under pytest-xdist one worker
#: runs all of such a file's tests, so the run is made once
SHARED_RUN_FILES = ("tests/test_examples.py", "tests/trainers/test_quickstart.py")


def pytest_collection_modifyitems(config, items):
    """The test files holding slow tests first (each file's tests kept together and in order, so a
    worker makes a module fixture once), so parallel workers start the long tests early."""
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """`-n N` (`make test`: `-n auto`): tests handed out one at a time in collection order (slow
    files first, above) to whichever worker is free, the files of SHARED_RUN_FILES as one unit
    each, handed out first. pytest-xdist's own `load` first sends each worker an eighth of the
    suite in one consecutive chunk (the slow files all to one worker), and its `loadgroup` marks
    do not group under pytest 9. Another `--dist` is kept."""
    if config.getvalue("dist") != "load":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class OneTestOrSharedFile(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return path if path in SHARED_RUN_FILES else nodeid

    return OneTestOrSharedFile(config, log)
