"""Training callbacks: the loop calls on_step, on_log, on_eval and on_checkpoint at their moments,
for callbacks given to the trainer and for those a plugin contributes (register_training_callbacks),
and a callback can stop a run early by raising."""

from __future__ import annotations

import pytest

from tests.trainers.conftest import quiet_console, sft_config


class Recorder:
    def __init__(self, trainer=None):
        self.events = []

    def on_step(self, trainer, step, loss):
        self.events.append(("step", step, loss))

    def on_log(self, trainer, row):
        self.events.append(("log", row["step"], row["split"]))

    def on_eval(self, trainer, row):
        self.events.append(("eval", row["step"], row["split"]))

    def on_checkpoint(self, trainer, step, path):
        self.events.append(("checkpoint", step, path.name))


def test_callbacks_are_called_at_their_moments(tiny_llama, math_sft_data, tmp_path):
    from lazarus_trainers.sft import SFTTrainer

    recorder = Recorder()
    config = sft_config(tiny_llama, math_sft_data, tmp_path / "out", max_steps=4, log_interval=2,
                        eval_interval=2, save_interval=2)
    result = SFTTrainer(config, console=quiet_console(), callbacks=[recorder]).train()
    assert result.step == 4
    kinds = [(kind, step) for kind, step, _ in recorder.events]
    assert kinds == [("eval", 0), ("step", 1), ("step", 2), ("log", 2), ("eval", 2), ("checkpoint", 2),
                     ("step", 3), ("step", 4), ("log", 4), ("eval", 4), ("checkpoint", 4)]
    losses = [loss for kind, _, loss in recorder.events if kind == "step"]
    assert all(isinstance(v, float) and v > 0 for v in losses)
    assert recorder.events[-1][2] == "step-00000004" or recorder.events[-1][2].endswith("4")


def test_a_plugin_contributes_callbacks_and_one_can_stop_the_run(tiny_llama, math_sft_data, tmp_path,
                                                                 plugin_registry):
    import types

    import lazarus
    from lazarus_trainers.sft import SFTTrainer

    seen = []

    class StopAtTwo:
        def __init__(self, trainer):
            self.trainer = trainer

        def on_step(self, trainer, step, loss):
            seen.append(step)
            if step == 2:
                raise RuntimeError("stopped by a callback")

    plugin = types.ModuleType("stop_plugin")

    @lazarus.hookimpl
    def register_training_callbacks(register):
        register(StopAtTwo)
        register(lambda trainer: None)  # a factory may decline

    plugin.register_training_callbacks = register_training_callbacks
    plugin_registry("lazarus-families", "lazarus-trainers", plugin)
    config = sft_config(tiny_llama, math_sft_data, tmp_path / "out", max_steps=5)
    with pytest.raises(RuntimeError, match="stopped by a callback"):
        SFTTrainer(config, console=quiet_console()).train()
    assert seen == [1, 2]
    assert not (tmp_path / "out" / "adapters.safetensors").exists()  # nothing final was written
