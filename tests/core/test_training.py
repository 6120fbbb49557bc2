"""The trainer base without a model: config schema -> CLI/config file, schedules, clipping,
checkpoint atomicity and RNG state, metrics and the loss-curve PNG."""

from __future__ import annotations

import json
import math

import attrs
import click
import pytest

from lazarus.errors import LazarusError
from lazarus.training import checkpoint as ckpt
from lazarus.training.config import (
    TrainingConfig,
    build_config,
    click_options,
    field_kind,
    option_name,
    read_config_file,
    setting,
)
from lazarus.training.schedules import build_schedule, learning_rate_at


@attrs.define(kw_only=True)
class ExampleConfig(TrainingConfig):
    """A trainer's config: the base plus its own fields, declared the same way."""

    beta: float = setting(0.1, "A trainer-specific knob.", minimum=0.0)
    reference: str | None = setting(None, "A trainer-specific path.")
    use_thing: bool = setting(False, "A trainer-specific switch.")


# -- one schema: CLI options and config-file keys ---------------------------------------------------
def _command(cls=ExampleConfig):
    seen = {}

    @click.command(params=click_options(cls))
    def command(**values):
        seen.update(values)

    return command, seen


def test_every_field_is_an_option_and_every_option_reaches_the_config():
    command, seen = _command()
    option_names = {opt for param in command.params for opt in param.opts}
    for field in attrs.fields(ExampleConfig):
        assert option_name(field.name) in option_names, field.name
        assert field.metadata["help"], f"{field.name} has no help text"

    # give every option a non-default value and check each one lands in the config
    args, expected = [], {}
    for field in attrs.fields(ExampleConfig):
        kind = field_kind(ExampleConfig, field)
        name = option_name(field.name)
        if kind.base is bool:
            args.append(f"--no-{name[2:]}" if field.default else name)
            expected[field.name] = not field.default
        elif field.metadata.get("choices"):
            value = [c for c in field.metadata["choices"] if c != field.default][0]
            args += [name, value]
            expected[field.name] = value
        elif kind.many:
            args += [name, "q_proj,v_proj"]
            expected[field.name] = ("q_proj", "v_proj")
        elif kind.base is int:
            args += [name, "7"]
            expected[field.name] = 7
        elif kind.base is float:
            args += [name, "0.25"]
            expected[field.name] = 0.25
        else:
            args += [name, f"value-of-{field.name}"]
            expected[field.name] = f"value-of-{field.name}"
    command.main(args, standalone_mode=False)
    config = build_config(ExampleConfig, cli_values=seen)
    for name, value in expected.items():
        assert getattr(config, name) == value, name


def test_config_file_sets_fields_and_cli_overrides_them(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('learning_rate = 3e-4\nrank = 4\nlora-targets = ["q_proj", "v_proj"]\nbeta = 0.5\n'
                    'use_thing = true\n')
    command, seen = _command()
    command.main(["--rank", "16"], standalone_mode=False)
    config = build_config(ExampleConfig, cli_values=seen, config_file=str(path))
    assert config.learning_rate == 3e-4  # from the file
    assert config.rank == 16  # the command line wins
    assert config.lora_targets == ("q_proj", "v_proj")
    assert config.beta == 0.5 and config.use_thing is True
    assert config.batch_size == TrainingConfig().batch_size  # untouched: the default


def test_saved_config_sits_between_defaults_and_file(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text("rank = 2\n")
    config = build_config(ExampleConfig, saved={"rank": 32, "seed": 5, "not_a_field": 1},
                          config_file=str(path), cli_values={"seed": None})
    assert config.rank == 2 and config.seed == 5


@pytest.mark.parametrize("text, message", [
    ("learning_rat = 1e-4\n", "unknown key 'learning_rat'"),
    ("rank = 'eight'\n", "key 'rank' must be int"),
    ("rank = true\n", "key 'rank' must be int"),
    ("lora_targets = [1, 2]\n", "key 'lora_targets' must be a list of strings"),
    ("rank = \n", "not valid TOML"),
])
def test_bad_config_file_names_file_and_key(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(LazarusError, match=message) as info:
        read_config_file(path, ExampleConfig)
    assert str(path) in str(info.value)


def test_validator_errors_name_the_option():
    with pytest.raises(LazarusError, match=r"--lr-schedule .*must be one of constant, linear, cosine"):
        build_config(TrainingConfig, cli_values={"lr_schedule": "exponential"})
    with pytest.raises(LazarusError, match=r"--grad-accumulation"):
        build_config(TrainingConfig, cli_values={"grad_accumulation": 0})


def test_yaml_config_needs_a_yaml_library_or_reads(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("rank: 4\n")
    try:
        import yaml  # noqa: F401
    except ImportError:
        with pytest.raises(LazarusError, match="PyYAML"):
            read_config_file(path, ExampleConfig)
    else:
        assert read_config_file(path, ExampleConfig) == {"rank": 4}


def test_unknown_config_file_type(tmp_path):
    path = tmp_path / "run.json"
    path.write_text("{}")
    with pytest.raises(LazarusError, match="use .toml or .yaml"):
        read_config_file(path, ExampleConfig)


# -- schedules and the optimizer --------------------------------------------------------------------
def test_schedules_by_definition():
    common = {"peak": 1.0, "warmup_steps": 4, "total_steps": 14, "end": 0.1}
    assert [learning_rate_at(s, kind="constant", **common) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert learning_rate_at(9, kind="constant", **common) == 1.0
    assert learning_rate_at(4, kind="linear", **common) == 1.0
    assert learning_rate_at(9, kind="linear", **common) == pytest.approx(0.55)
    assert learning_rate_at(14, kind="linear", **common) == pytest.approx(0.1)
    assert learning_rate_at(9, kind="cosine", **common) == pytest.approx(0.55)
    assert learning_rate_at(14, kind="cosine", **common) == pytest.approx(0.1)
    assert learning_rate_at(99, kind="cosine", **common) == pytest.approx(0.1)


@pytest.mark.parametrize("kind", ["constant", "linear", "cosine"])
def test_mlx_schedule_matches_python_definition(kind):
    import mlx.core as mx

    common = {"peak": 2e-3, "kind": kind, "warmup_steps": 3, "total_steps": 20, "end": 1e-4}
    schedule = build_schedule(**common)
    for step in range(25):
        assert schedule(mx.array(step)).item() == pytest.approx(learning_rate_at(step, **common), rel=1e-5)


def test_optimizer_follows_the_schedule_step_by_step():
    import mlx.core as mx
    import mlx.nn as nn

    from lazarus.training.optimizer import build_optimizer

    config = TrainingConfig(learning_rate=1e-2, lr_schedule="linear", warmup_steps=2, min_learning_rate=0.0)
    model = nn.Linear(3, 2)
    optimizer = build_optimizer(config, total_steps=6)
    grads = {k: mx.ones_like(v) for k, v in model.trainable_parameters().items()}
    for step in range(6):
        optimizer.update(model, grads)
        expected = learning_rate_at(step, peak=1e-2, kind="linear", warmup_steps=2, total_steps=6)
        assert optimizer.state["learning_rate"].item() == pytest.approx(expected, rel=1e-5)


def test_clip_by_global_norm():
    import mlx.core as mx

    from lazarus.training.optimizer import clip_by_global_norm

    grads = {"a": mx.array([3.0, 0.0]), "b": [mx.array([[4.0]])]}
    clipped, norm = clip_by_global_norm(grads, 1.0)
    assert norm.item() == pytest.approx(5.0)
    new_norm = math.sqrt(sum(float((g * g).sum()) for g in (clipped["a"], clipped["b"][0])))
    assert new_norm == pytest.approx(1.0, rel=1e-5)
    unclipped, _ = clip_by_global_norm(grads, 10.0)
    assert unclipped["a"].tolist() == [3.0, 0.0]
    off, _ = clip_by_global_norm(grads, 0.0)
    assert off["b"][0].item() == 4.0


# -- checkpoints ------------------------------------------------------------------------------------
def _write_adapter_like(directory, value):
    import mlx.core as mx

    mx.save_safetensors(str(directory / "adapters.safetensors"), {"w": mx.array([value])})


def _save(output, step, value, **kwargs):
    import mlx.core as mx

    return ckpt.save_checkpoint(output, step, write_weights=lambda d: _write_adapter_like(d, value),
                                optimizer_state={"step": mx.array(step)},
                                state={"step": step, "trainer": "sft", "config": {}}, **kwargs)


def test_interrupted_save_leaves_previous_checkpoint_intact(tmp_path):
    import mlx.core as mx

    first = _save(tmp_path, 10, 1.0)
    before = {p.name: p.read_bytes() for p in first.iterdir()}

    def dies_half_way(directory):
        _write_adapter_like(directory, 2.0)  # some files are already written ...
        raise KeyboardInterrupt  # ... when the process is interrupted

    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint(tmp_path, 20, write_weights=dies_half_way, optimizer_state={"step": mx.array(20)},
                             state={"step": 20, "trainer": "sft", "config": {}})
    root = tmp_path / ckpt.CHECKPOINTS_DIR
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step-00000010"]  # no half checkpoint left
    assert ckpt.find_checkpoint(tmp_path) == first
    assert {p.name: p.read_bytes() for p in first.iterdir()} == before
    assert ckpt.read_state(first)["step"] == 10

    # re-saving the same step (a resumed run) replaces it whole, or not at all
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint(tmp_path, 10, write_weights=dies_half_way, optimizer_state={"step": mx.array(99)},
                             state={"step": 10, "trainer": "sft", "config": {}})
    assert {p.name: p.read_bytes() for p in first.iterdir()} == before


def test_keep_prunes_old_checkpoints_and_latest_moves(tmp_path):
    for step in (1, 2, 3, 4):
        _save(tmp_path, step, float(step), keep=2)
    root = tmp_path / ckpt.CHECKPOINTS_DIR
    assert sorted(p.name for p in root.glob("step-*")) == ["step-00000003", "step-00000004"]
    assert ckpt.find_checkpoint(tmp_path).name == "step-00000004"
    assert ckpt.read_optimizer_state(root / "step-00000004")["step"].item() == 4


def test_find_checkpoint_errors(tmp_path):
    with pytest.raises(LazarusError, match="no such directory"):
        ckpt.find_checkpoint(tmp_path / "missing")
    with pytest.raises(LazarusError, match="not a training checkpoint"):
        ckpt.find_checkpoint(tmp_path)
    saved = _save(tmp_path / "out", 5, 1.0)
    (saved / ckpt.STATE_FILE).write_text("{")
    with pytest.raises(LazarusError, match="not valid JSON"):
        ckpt.read_state(saved)


def test_rng_state_round_trip():
    import mlx.core as mx

    mx.random.seed(123)
    mx.random.uniform(shape=(3,))  # move the key away from a plain seed
    key = ckpt.rng_state()
    expected = mx.random.normal(shape=(4,)).tolist()
    mx.random.seed(7)
    ckpt.set_rng_state(key)
    assert mx.random.normal(shape=(4,)).tolist() == expected


# -- metrics ----------------------------------------------------------------------------------------
def test_metrics_log_and_loss_curve_png(tmp_path):
    from lazarus.training.metrics import MetricsLog, plot_loss_curve, read_metrics

    log = MetricsLog(tmp_path / "metrics.jsonl")
    for step in range(1, 11):
        log.write({"split": "train", "step": step, "loss": 5.0 / step})
    log.write({"split": "eval", "step": 10, "loss": 0.7})
    with (tmp_path / "metrics.jsonl").open("a") as handle:
        handle.write('{"split": "train", "st')  # a killed run's half line
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert len(rows) == 11 and rows[-1] == {"split": "eval", "step": 10, "loss": 0.7}
    log.drop_after(5)
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1, 2, 3, 4, 5]

    png = plot_loss_curve(tmp_path / "metrics.jsonl", tmp_path / "loss.png", title="t")
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert width > 300 and height > 200


def test_metrics_rows_are_json(tmp_path):
    from lazarus.training.metrics import MetricsLog

    MetricsLog(tmp_path / "m.jsonl", enabled=False).write({"step": 1})
    assert not (tmp_path / "m.jsonl").exists()  # ranks other than 0 write nothing
    MetricsLog(tmp_path / "m.jsonl").write({"step": 1, "loss": 2.5})
    assert json.loads((tmp_path / "m.jsonl").read_text()) == {"step": 1, "loss": 2.5}
