"""Models shipped inside lazarus-core, loadable offline by a short name: ``lazarus:tiny-math``.

Each embedded model is a directory in Hugging Face layout next to this file, with a
``lazarus.json`` that records how it was built (the build script beside it rebuilds it).
Importing this module does not import mlx.
"""

from __future__ import annotations

from pathlib import Path

from lazarus.errors import LazarusError

#: the prefix that marks a short name in ``--model`` / ``load_model``
PREFIX = "lazarus:"

#: short name -> what it is (``lazarus models list`` shows these lines)
EMBEDDED = {
    "tiny-math": "3.5M-parameter Llama pretrained by Lazarus on generated arithmetic: completes equations "
                 "('74 * 5 =' -> 370) but never answers a question with the right number; SFT teaches "
                 "that (build_tiny_math.py rebuilds it)",
}

HERE = Path(__file__).resolve().parent


def embedded_path(model: str) -> Path:
    """The directory of the embedded model ``lazarus:NAME`` (or bare ``NAME``).

    Raises :class:`LazarusError` naming the known models when the name is unknown or its files
    are missing from this install.
    """
    name = model.removeprefix(PREFIX)
    known = ", ".join(PREFIX + n for n in EMBEDDED)
    if name not in EMBEDDED:
        raise LazarusError(f"{model}: no embedded model of that name; known: {known}")
    path = HERE / name
    if not (path / "config.json").is_file():
        raise LazarusError(f"{model}: the embedded model's files are missing from this install ({path}); "
                           "reinstall lazarus-core, or rebuild it with "
                           f"`python -m lazarus.embedded.build_{name.replace('-', '_')}`")
    return path
