"""Checkpoint formats: hf round trips, sharding, atomic saves, mlx-lm adapter files, legacy npz."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten

import lazarus
from lazarus import checkpoints
from lazarus.adapters import (
    AdapterConfig,
    LoraParameters,
    adapter_weights,
    apply_adapter,
    load_adapter,
    save_adapter,
)
from lazarus.errors import LazarusError

IDS = mx.array([[1, 7, 42, 99, 3, 250, 17, 8]], dtype=mx.int32)


def _logits(model) -> np.ndarray:
    out = model(IDS)
    mx.eval(out)
    return np.array(out.astype(mx.float32))


def _load(base: Path, adapter: Path | None = None, dtype=None):
    model, _, _ = lazarus.load_model(base, adapter_path=adapter, dtype=dtype)
    return model


def _params(model) -> dict[str, np.ndarray]:
    return {k: np.array(v.astype(mx.float32)) for k, v in tree_flatten(model.parameters())}


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


def _lora_model(base: Path, kind: str = "lora", seed: int = 1, scale: float = 2.0):
    model = _load(base)
    config = AdapterConfig(fine_tune_type=kind, num_layers=2,
                           lora_parameters=LoraParameters(rank=4, scale=scale, keys=("self_attn.q_proj", "mlp.up_proj")))
    apply_adapter(model, config)
    mx.random.seed(seed)
    model.load_weights([(k, v + 0.05 * mx.random.normal(v.shape)) for k, v in adapter_weights(model, config).items()],
                       strict=False)
    return model, config


@pytest.fixture(scope="module")
def tiny_llama(tiny_checkpoint) -> Path:
    """The shared tiny random llama checkpoint (read only: tests that write copy it first)."""
    return tiny_checkpoint("llama")


# -- hf -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["llama", "gemma", "qwen2"])
def test_hf_save_then_load_model_round_trips_exactly(tiny_checkpoint, tmp_path, family):
    base = tiny_checkpoint(family)
    model, tokenizer, config = lazarus.load_model(base)
    # no source=: the directory load_model read the model from supplies config and tokenizer files
    out = checkpoints.save("hf", tmp_path / "copy", model=model)
    loaded, loaded_tokenizer, loaded_config = lazarus.load_model(out)
    original, again = _params(model), _params(loaded)
    assert original.keys() == again.keys()
    for key in original:
        assert np.array_equal(original[key], again[key]), key
    assert {k: v.dtype for k, v in tree_flatten(loaded.parameters())} == {
        k: v.dtype for k, v in tree_flatten(model.parameters())}
    np.testing.assert_array_equal(_logits(loaded), _logits(model))
    assert loaded_config == config
    assert loaded_tokenizer.encode("12 + 7 = 19") == tokenizer.encode("12 + 7 = 19")
    record = json.loads((out / "lazarus.json").read_text())
    assert record["checkpoint_format"] == "hf" and record["source_model"]["model"] == str(base)
    assert record["files_sha256"]["model.safetensors"] and record["config_sha256"]
    assert not (out / "model.safetensors.index.json").exists()
    modes = {p.name: p.stat().st_mode & 0o777 for p in out.iterdir()}
    assert modes["lazarus.json"] == modes["model.safetensors"] == modes["config.json"]


def test_hf_sharded_save_writes_an_index_and_round_trips(tiny_llama, tmp_path):
    import mlx_lm

    model = _load(tiny_llama)
    out = checkpoints.save("hf", tmp_path / "sharded", model=model, source=tiny_llama, max_shard_size="40kB")
    shards = sorted(p.name for p in out.glob("model-*.safetensors"))
    assert len(shards) > 2 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    index = json.loads((out / "model.safetensors.index.json").read_text())
    weights = dict(tree_flatten(model.parameters()))
    assert set(index["weight_map"]) == set(weights)
    assert set(index["weight_map"].values()) == set(shards)
    assert index["metadata"]["total_size"] == sum(v.nbytes for v in weights.values())
    np.testing.assert_array_equal(_logits(_load(out)), _logits(model))
    reference, _ = mlx_lm.load(str(out))
    np.testing.assert_allclose(_logits(reference), _logits(model), atol=1e-4)


def test_hf_dtype_conversion_and_resharding_replace_stale_shards(tiny_llama, tmp_path):
    model = _load(tiny_llama)
    out = tmp_path / "model"
    checkpoints.save("hf", out, model=model, source=tiny_llama, max_shard_size="40kB")
    (out / "NOTES.md").write_text("my notes")
    checkpoints.save("hf", out, model=model, source=tiny_llama, dtype="bfloat16")
    # the old shards and index are gone, the user's own file is kept
    assert sorted(p.name for p in out.glob("*.safetensors")) == ["model.safetensors"]
    assert not (out / "model.safetensors.index.json").exists()
    assert (out / "NOTES.md").read_text() == "my notes"
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "bfloat16"
    loaded = _load(out)
    assert {v.dtype for _, v in tree_flatten(loaded.parameters())} == {mx.bfloat16}
    np.testing.assert_allclose(_logits(loaded), _logits(_load(tiny_llama, dtype="bfloat16")), atol=1e-6)


def test_hf_refuses_a_model_with_unfused_adapter(tiny_llama, tmp_path):
    model, _ = _lora_model(tiny_llama)
    with pytest.raises(LazarusError, match="still carries adapter layers.*fuse_adapter"):
        checkpoints.save("hf", tmp_path / "x", model=model, source=tiny_llama)
    assert not (tmp_path / "x").exists()
    with pytest.raises(LazarusError, match="not a size"):
        checkpoints.save("hf", tmp_path / "y", model=_load(tiny_llama), source=tiny_llama, max_shard_size="lots")


# -- atomic saves -------------------------------------------------------------------------------
def test_interrupted_hf_save_leaves_previous_checkpoint_intact(tiny_llama, tmp_path, monkeypatch):
    import lazarus.checkpoints.hf as hf

    model = _load(tiny_llama)
    out = checkpoints.save("hf", tmp_path / "ckpt", model=model, source=tiny_llama)
    before = _snapshot(out)

    def crash(*args, **kwargs):  # weights and config.json are already in the temp dir
        raise KeyboardInterrupt("interrupted")

    monkeypatch.setattr(hf, "write_provenance", crash)
    changed, _ = _lora_model(tiny_llama)
    from lazarus.adapters import fuse_adapter

    fuse_adapter(changed)
    with pytest.raises(KeyboardInterrupt):
        checkpoints.save("hf", out, model=changed, source=tiny_llama, max_shard_size="40kB")
    assert _snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no temp dirs left behind
    np.testing.assert_array_equal(_logits(_load(out)), _logits(model))


def test_interrupted_adapter_save_leaves_previous_adapter_intact(tiny_llama, tmp_path, monkeypatch):
    model, config = _lora_model(tiny_llama)
    save_adapter(model, tmp_path / "adapter", config)
    before = _snapshot(tmp_path / "adapter")
    real_save = mx.save_safetensors

    def partial_then_crash(path, arrays, metadata=None):
        real_save(path, dict(list(arrays.items())[:1]), metadata=metadata)  # a partial file first
        raise OSError("disk full")

    monkeypatch.setattr(mx, "save_safetensors", partial_then_crash)
    other, _ = _lora_model(tiny_llama, seed=7)
    with pytest.raises(OSError, match="disk full"):
        save_adapter(other, tmp_path / "adapter", config)
    monkeypatch.undo()
    assert _snapshot(tmp_path / "adapter") == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]
    np.testing.assert_allclose(_logits(_load(tiny_llama, tmp_path / "adapter")), _logits(model), atol=1e-6)


def test_saving_over_a_file_is_refused(tiny_llama, tmp_path):
    (tmp_path / "taken").write_text("precious")
    with pytest.raises(LazarusError, match="exists and is not a directory"):
        checkpoints.save("hf", tmp_path / "taken", model=_load(tiny_llama), source=tiny_llama)
    assert (tmp_path / "taken").read_text() == "precious"


# -- mlx-lm adapter directory -------------------------------------------------------------------
def test_mlx_lm_adapter_files_have_mlx_lm_names_and_fields(tiny_llama, tmp_path):
    model, config = _lora_model(tiny_llama, kind="dora")
    config.extra["iters"] = 100  # fields other tools put there survive a round trip
    save_adapter(model, tmp_path / "adapter", config)
    data = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert data == {"fine_tune_type": "dora", "iters": 100, "num_layers": 2,
                    "lora_parameters": {"rank": 4, "scale": 2.0, "dropout": 0.0,
                                        "keys": ["self_attn.q_proj", "mlp.up_proj"]}}
    from safetensors import safe_open

    with safe_open(str(tmp_path / "adapter" / "adapters.safetensors"), "numpy") as f:
        assert f.metadata() == {"format": "mlx"}
        keys = sorted(f.keys())
    assert keys[:3] == ["model.layers.0.mlp.up_proj.lora_a", "model.layers.0.mlp.up_proj.lora_b",
                        "model.layers.0.mlp.up_proj.m"]
    assert len(keys) == 2 * 2 * 3
    checkpoint = checkpoints.load("mlx-lm", tmp_path / "adapter")
    assert checkpoint.config == config


def test_formats_are_registered_and_npz_is_read_only(tmp_path):
    from lazarus.plugins import get_registry

    assert {"mlx-lm", "hf", "npz-legacy"} <= set(get_registry().names("checkpoint-format"))
    assert {"lora", "dora", "full"} <= set(get_registry().names("adapter"))
    with pytest.raises(LazarusError, match="'npz-legacy' is read-only"):
        checkpoints.save("npz-legacy", tmp_path / "x", weights={})


# -- npz-legacy ---------------------------------------------------------------------------------
OLD_NAMES = {"self_attn.q_proj": "attention.wq", "self_attn.k_proj": "attention.wk",
             "self_attn.v_proj": "attention.wv", "self_attn.o_proj": "attention.wo",
             "mlp.gate_proj": "feed_forward.w1", "mlp.down_proj": "feed_forward.w2",
             "mlp.up_proj": "feed_forward.w3"}


def _old_style_key(key: str) -> str:
    key = key.removeprefix("model.")
    for new, old in OLD_NAMES.items():
        key = key.replace(f".{new}.", f".{old}.")
    return key


@pytest.mark.parametrize("naming", ["mlx-examples", "hf-without-prefix"])
def test_legacy_npz_gives_the_same_logits_as_the_safetensors_adapter(tiny_llama, tmp_path, naming):
    # scale 20 is what the old tools used; the npz carries no config, so Lazarus assumes it
    model, config = _lora_model(tiny_llama, scale=20.0)
    save_adapter(model, tmp_path / "adapter", config)
    expected = _logits(_load(tiny_llama, tmp_path / "adapter"))

    weights = dict(mx.load(str(tmp_path / "adapter" / "adapters.safetensors")))
    rename = _old_style_key if naming == "mlx-examples" else (lambda k: k.removeprefix("model."))
    old = {rename(k): np.array(v) for k, v in weights.items()}
    assert any(".attention.wq." in k for k in old) == (naming == "mlx-examples")
    np.savez(tmp_path / "adapters.npz", **old)

    legacy = _load(tiny_llama)
    loaded_config = load_adapter(legacy, tmp_path / "adapters.npz")
    assert loaded_config.rank == 4 and loaded_config.num_layers == 2
    assert sorted(loaded_config.keys) == ["mlp.up_proj", "self_attn.q_proj"]
    np.testing.assert_allclose(_logits(legacy), expected, atol=1e-5)

    from click.testing import CliRunner

    from lazarus.cli import main

    result = CliRunner().invoke(main, ["adapters", "info", "--json", str(tmp_path / "adapters.npz")])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert (info["format"], info["type"], info["rank"], info["layers"]) == ("npz-legacy", "lora", 4, [0, 1])


def test_pickled_npz_is_refused(tiny_llama, tmp_path):
    np.savez(tmp_path / "objects.npz", **{"layers.0.attention.wq.lora_a": np.array([{"x": 1}], dtype=object)})
    with pytest.raises(LazarusError, match="objects.npz.*pickled.*refuses"):
        load_adapter(_load(tiny_llama), tmp_path / "objects.npz")
    (tmp_path / "raw.npz").write_bytes(pickle.dumps({"layers.0.attention.wq.lora_a": [1, 2]}))
    with pytest.raises(LazarusError, match="raw.npz.*pickle"):
        checkpoints.load("npz-legacy", tmp_path / "raw.npz")
    (tmp_path / "broken.npz").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(LazarusError, match="broken.npz"):
        checkpoints.load("npz-legacy", tmp_path / "broken.npz")


def test_atomic_directory_keeps_user_subdirectories(tmp_path):
    target = tmp_path / "out"
    (target / "logs").mkdir(parents=True)
    (target / "logs" / "train.jsonl").write_text("{}\n")
    (target / "adapters.safetensors").write_text("stale")
    fmt = checkpoints.get_format("mlx-lm")
    with checkpoints.atomic_directory(target, owned=fmt.owned) as tmp:
        (tmp / "adapter_config.json").write_text("{}")
    assert (target / "logs" / "train.jsonl").read_text() == "{}\n"
    assert not (target / "adapters.safetensors").exists()
    assert oct(target.stat().st_mode & 0o777) == oct(0o777 & ~_umask())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


KILLED_SAVE = """
import sys, time
from pathlib import Path
import mlx.core as mx
import lazarus
from lazarus import checkpoints

base, target, marker = sys.argv[1:4]
model, _, _ = lazarus.load_model(base)
real_save = mx.save_safetensors

def save_then_hang(path, arrays, metadata=None):
    real_save(path, dict(list(arrays.items())[:1]), metadata=metadata)
    Path(marker).write_text(path)
    time.sleep(60)

mx.save_safetensors = save_then_hang
checkpoints.save("hf", target, model=model, max_shard_size="40kB")
"""


def test_killed_save_leaves_previous_checkpoint_and_next_save_cleans_up(tiny_llama, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    model = _load(tiny_llama)
    target = checkpoints.save("hf", tmp_path / "ckpt", model=model)
    before = _snapshot(target)
    marker = tmp_path / "marker"
    child = subprocess.Popen([sys.executable, "-c", KILLED_SAVE, str(tiny_llama), str(target), str(marker)])
    try:
        deadline = time.time() + 120
        while not marker.exists() and child.poll() is None and time.time() < deadline:
            time.sleep(0.1)
        assert marker.exists(), "the child never started writing"
        partial = Path(marker.read_text())
        assert partial.parent.name.startswith(f".ckpt.tmp-{child.pid}-")
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    assert _snapshot(target) == before
    assert partial.parent.exists()  # the dead writer's temp dir is still there ...
    np.testing.assert_array_equal(_logits(_load(target)), _logits(model))
    checkpoints.save("hf", target, model=model)
    assert not partial.parent.exists()  # ... until the next save to the same place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "marker"]


def test_recover_moves_back_a_checkpoint_set_aside_by_a_dead_writer(tmp_path):
    import subprocess
    import sys

    from lazarus.checkpoints.atomic import recover_interrupted

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    aside = tmp_path / f".ckpt.old-{dead.pid}-1234abcd"
    aside.mkdir()
    (aside / "config.json").write_text("{}")
    recover_interrupted(tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / "config.json").read_text() == "{}"
    assert not aside.exists()
    # a writer that is still running is left alone
    alive = tmp_path / f".ckpt.tmp-{os.getpid()}-5678"
    alive.mkdir()
    recover_interrupted(tmp_path / "ckpt")
    assert alive.exists()
