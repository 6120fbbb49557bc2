"""lazarus.io: the one atomic-write implementation (files here; directories in test_checkpoints)."""

from __future__ import annotations

import os

import pytest

from lazarus import io


def test_write_text_replaces_whole_with_the_usual_mode_and_no_leftovers(tmp_path):
    target = tmp_path / "sub" / "out.json"
    io.write_text(target, "first\n")
    io.write_text(target, "second\r\n")
    assert target.read_bytes() == b"second\r\n"
    mask = os.umask(0)
    os.umask(mask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~mask  # not mkstemp's 0600
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.json"]


def test_a_failed_write_leaves_the_previous_file_and_no_temporary(tmp_path):
    target = tmp_path / "plot.png"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), io.atomic_path(target, suffix=".png") as tmp:
        assert tmp.suffix == ".png" and tmp.parent == tmp_path
        tmp.write_bytes(b"half")
        raise RuntimeError("the writer failed")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plot.png"]
