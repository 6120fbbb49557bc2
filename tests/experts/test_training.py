"""Expert training: PPO on `reach` beats a random policy over several seeds; the CLI writes the
expert, metrics, curve and checkpoints; resume equals the straight run; environments and experts
are listed by kind; a third-party environment is trainable by name."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.experts.toy_envs import MatchCuePlugin


@pytest.mark.slow
def test_short_training_on_reach_beats_random_over_seeds(tmp_path):
    from lazarus_experts.experts import load_expert
    from lazarus_experts.training import ExpertTrainConfig, ExpertTrainer, expert_returns, random_returns

    random_mean = random_returns("reach", 64, seed=10_000).mean()
    trained = []
    for seed in (1, 2, 3):
        config = ExpertTrainConfig(output=str(tmp_path / f"s{seed}"), steps=12, seed=seed, save_interval=0)
        ExpertTrainer(config).train()
        trained.append(expert_returns(load_expert(tmp_path / f"s{seed}"), "reach", 64, seed=10_000).mean())
    # random about -11, trained about -2 to -3 (a perfect policy about -1.5)
    assert random_mean < -9
    assert all(mean > random_mean + 5 for mean in trained), (random_mean, trained)


def test_train_and_eval_from_the_cli(lazarus_cli, tmp_path):
    out = tmp_path / "run dir é"
    result = lazarus_cli("experts", "train", "--expert", "lstm", "--env", "reach", "--steps", "4",
                         "--num-envs", "8", "--save-interval", "2", "--output", str(out))
    assert result.exit_code == 0, result.output
    names = {p.name for p in out.iterdir()}
    assert {"expert_config.json", "expert.safetensors", "lazarus.json", "metrics.jsonl", "return.png",
            "checkpoints"} <= names
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert {"step", "loss", "learning_rate", "return", "reward_mean", "value_loss", "clip_fraction"} <= set(rows[0])
    assert (out / "checkpoints" / "latest").read_text().strip() == "step-00000004"
    record = json.loads((out / "lazarus.json").read_text())
    assert record["environment"] == "reach" and record["expert"] == "lstm"
    report = lazarus_cli("experts", "eval", str(out), "--episodes", "8", "--json").json()
    assert report["env"] == "reach" and report["episodes"] == 8
    assert report["improvement"] == pytest.approx(report["expert"]["mean"] - report["random"]["mean"])
    text = lazarus_cli("experts", "eval", str(out), "--episodes", "4")
    assert "expert - random" in text.output


def test_user_mistakes_are_one_line_errors(lazarus_cli, tmp_path):
    (tmp_path / "file").write_text("x")
    for args, message in [
        (("--output", str(tmp_path / "file")), "a file of that name exists"),
        (("--output", str(tmp_path / "o"), "--env", "chess"), "no environment named 'chess'"),
        (("--output", str(tmp_path / "o"), "--expert", "transformer"), "no expert named 'transformer'"),
        (("--output", str(tmp_path / "o"), "--env-option", "speed"), "KEY=VALUE"),
        (("--output", str(tmp_path / "o"), "--env-option", "colour=3"), "unexpected keyword argument 'colour'"),
        (("--output", str(tmp_path / "o"), "--steps", "0"), "Invalid value for '--steps': 0 is not in the range"),
    ]:
        result = lazarus_cli("experts", "train", *args)
        assert result.exit_code == 2, result.output
        assert message in result.output and "Traceback" not in result.output


def test_resume_equals_the_straight_run(tmp_path):
    import mlx.core as mx

    from lazarus_experts.training import ExpertTrainConfig, ExpertTrainer

    settings = dict(steps=4, num_envs=4, save_interval=2, keep_checkpoints=0, seed=5)
    ExpertTrainer(ExpertTrainConfig(output=str(tmp_path / "a"), **settings)).train()
    middle = tmp_path / "a" / "checkpoints" / "step-00000002"
    ExpertTrainer(ExpertTrainConfig(output=str(tmp_path / "b"), resume=str(middle), **settings)).train()
    a, b = mx.load(str(tmp_path / "a" / "expert.safetensors")), mx.load(str(tmp_path / "b" / "expert.safetensors"))
    for key in a:
        np.testing.assert_allclose(np.array(a[key]), np.array(b[key]), atol=1e-6)
    steps = [json.loads(line)["step"] for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]


def test_experts_and_environments_are_listed_by_kind(lazarus_cli):
    rows = {row["name"]: row for row in lazarus_cli("plugins", "list", "--json").json()}
    provides = rows["lazarus-experts"]["provides"]
    assert provides["experts"] == ["gru", "lstm"]
    assert {"reach", "arith-delegate"} <= set(provides["environments"])
    assert rows["lazarus-experts"]["status"] == "loaded"
    listed = {(r["kind"], r["name"]) for r in lazarus_cli("experts", "list", "--json").json()}
    assert {("expert", "gru"), ("expert", "lstm"), ("environment", "reach")} <= listed


def test_a_third_party_environment_is_trainable_by_name(plugin_registry, lazarus_cli, tmp_path):
    plugin_registry("lazarus-experts", MatchCuePlugin())
    rows = {row["name"]: row for row in lazarus_cli("plugins", "list", "--json").json()}
    assert rows["match-cue-plugin"]["provides"] == {"environments": ["match-cue"]}
    result = lazarus_cli("experts", "train", "--env", "match-cue", "--steps", "15", "--output", str(tmp_path / "m"))
    assert result.exit_code == 0, result.output
    report = lazarus_cli("experts", "eval", str(tmp_path / "m"), "--episodes", "32", "--json").json()
    assert report["random"]["mean"] == pytest.approx(2.5, abs=0.6)
    assert report["expert"]["mean"] > 4.5  # out of 5


def test_an_earlier_run_is_kept_unless_overwrite(lazarus_cli, tmp_path):
    args = ("experts", "train", "--steps", "1", "--num-envs", "2", "--output", str(tmp_path / "o"))
    assert lazarus_cli(*args).exit_code == 0
    again = lazarus_cli(*args)
    assert again.exit_code == 2 and "already holds a training run" in again.output and "--overwrite" in again.output
    assert lazarus_cli(*args, "--overwrite").exit_code == 0
    assert len((tmp_path / "o" / "metrics.jsonl").read_text().splitlines()) == 1
