"""One training run from a JSON file of settings, for the multi-rank tests:

    mlx.launch -n 2 -- python -m tests.trainers.distributed_worker grpo SETTINGS.json

The toy rewards are registered first (the way a pip-installed reward plugin would be), then the
named trainer runs on every rank, exactly as ``lazarus train NAME`` does.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(argv: list[str]) -> None:
    from lazarus.plugins import get_registry
    from tests.trainers.toy_rewards import register_toy_rewards

    name, settings = argv[0], json.loads(Path(argv[1]).read_text())
    register_toy_rewards()
    trainer_cls = get_registry().get("trainer", name).load()
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in settings.items()}
    trainer_cls(trainer_cls.config_class(**values), progress=False).train()


if __name__ == "__main__":
    main(sys.argv[1:])
