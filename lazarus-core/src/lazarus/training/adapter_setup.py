"""Adapter set-up of a training run (part of :class:`~lazarus.training.trainer.Trainer`): load the
base model, then put the trainable adapter on it: the one in ``--adapter DIR`` (training continues
its weights) or a fresh one of ``--fine-tune-type``."""

from __future__ import annotations

from typing import cast

import attrs
import mlx.core as mx
from mlx.utils import tree_flatten

from lazarus.errors import LazarusError
from lazarus.training.parts import TrainerParts


class AdapterSetup(TrainerParts):
    """Model loading and the trainable adapter; mixed into the trainer base."""

    @property
    def full_fine_tune(self) -> bool:
        """Whether the adapter type trains the model's own weights (its ``replaces_weights``)."""
        from lazarus.adapters import get_adapter_type

        return get_adapter_type(self.config.fine_tune_type).replaces_weights

    def load(self) -> None:
        """Load the base model and tokenizer and apply the configured adapter."""
        from lazarus.loader import load_model

        config = self.config
        if not config.model:
            raise LazarusError("no model given: pass --model PATH (a Hugging Face layout directory)")
        self.model, self.tokenizer, self.model_config = load_model(config.model, dtype=config.dtype)
        self.apply_adapter()

    def apply_adapter(self) -> None:
        """Put the trainable adapter on the model: the one in ``--adapter DIR`` (training continues
        its weights), else a fresh one of ``--fine-tune-type``."""
        from lazarus.adapters import AdapterConfig, LoraParameters, apply_adapter
        from lazarus.training.config import resolve_num_layers

        config = self.config
        if config.adapter:
            self._start_from_adapter(config.adapter)
            return
        # one rule for every path: not given = min(16, blocks), -1 = all, too many = an error
        num_layers = resolve_num_layers(config.num_layers, len(self.model.blocks))
        keys = self._resolve_targets(config.lora_targets, num_layers) if config.lora_targets else None
        try:
            lora = LoraParameters(rank=config.rank, scale=config.scale, dropout=config.dropout, keys=keys)
        except ValueError as exc:
            raise LazarusError(f"invalid adapter setting: {exc}") from None
        self.adapter_config = AdapterConfig(fine_tune_type=config.fine_tune_type, num_layers=num_layers,
                                            lora_parameters=lora)
        mx.random.seed(config.seed)  # adapter initialisation is part of the run's seed
        apply_adapter(self.model, self.adapter_config)
        self._count_trainable()

    def _start_from_adapter(self, path: str) -> None:
        """Load a saved adapter to continue training it; its own settings replace --fine-tune-type,
        --rank, --scale, --num-layers and --lora-targets (a note says so when they disagree)."""
        from lazarus.adapters import load_adapter
        from lazarus.io import recover_output

        if not recover_output(path, "--adapter").exists():
            raise LazarusError(f"--adapter {path}: no such adapter directory (to choose the adapter *type*, "
                               "use --fine-tune-type lora|dora|full)")
        config = self.config
        self.adapter_config = load_adapter(self.model, path)
        params = self.adapter_config.lora_parameters
        saved = {"fine_tune_type": self.adapter_config.fine_tune_type, "rank": params.rank,
                 "scale": params.scale}
        defaults = {f.name: f.default for f in attrs.fields(type(config))}
        differing = [f"--{k.replace('_', '-')} {getattr(config, k)} (the adapter has {v})"
                     for k, v in saved.items() if getattr(config, k) != defaults[k] and getattr(config, k) != v]
        if differing:
            self.log(f"[yellow]--adapter {path} keeps its own settings; ignoring {', '.join(differing)}[/]")
        config.fine_tune_type = self.adapter_config.fine_tune_type
        from lazarus.loader import warn_if_other_base

        warn_if_other_base(path, getattr(self.model, "source", None))
        self._count_trainable()

    def _count_trainable(self) -> None:
        self.model.train()
        parameters = cast("list[tuple[str, mx.array]]", tree_flatten(self.model.trainable_parameters()))
        trainable = sum(v.size for _, v in parameters)
        if trainable == 0:
            raise LazarusError(f"the {self.config.fine_tune_type} adapter left nothing to train; check "
                               "--lora-targets and --num-layers")
        self.num_trainable = trainable

    def _resolve_targets(self, targets: tuple[str, ...], num_layers: int) -> tuple[str, ...]:
        """Expand short names (``q_proj``) to block-relative paths (``self_attn.q_proj``) of the last
        ``num_layers`` blocks."""
        from lazarus.adapters.base import default_keys, is_linear, select_blocks

        available = default_keys(select_blocks(self.model, num_layers))
        root_modules = dict(self.model.named_modules())
        resolved: list[str] = []
        for target in targets:
            matches = [k for k in available if k == target or k.endswith("." + target)]
            if not matches and target in root_modules and is_linear(root_modules[target]):
                matches = [target]  # a layer outside the blocks, such as lm_head
            if not matches:
                raise LazarusError(f"--lora-targets: {target!r} matches no linear layer of the adapted "
                                   f"blocks; available: {', '.join(available)}")
            resolved.extend(m for m in matches if m not in resolved)
        return tuple(resolved)
