"""Dual-reward training: teach an answer and, at once, a logit-lens classifier inside the model.

Each record is ``{"prompt", "completion", "label"}``. The classifier reads the residual stream
after block ``L`` (the ``blocks.{L}.hook_resid_post`` hook point: no family is special-cased) at
the last prompt token, maps it through the model's own final norm and head (the logit lens), and
keeps the logits of one target token per class (``--classifier-targets yes=" yes",no=" no"``).
The loss of an example is

    ``w · CE(classifier logits, label) + (1 − w) · mean cross-entropy of the completion tokens``

with ``w`` = ``--classifier-weight``. Logged: ``classifier/accuracy`` and ``classifier/loss`` at
layer L, ``answer/loss``.
"""

from __future__ import annotations

import warnings

import attrs
import mlx.core as mx
import mlx.nn as nn
import numpy as np

from lazarus.errors import LazarusError
from lazarus.training.config import TrainingConfig, setting
from lazarus.training.trainer import Trainer


@attrs.define(kw_only=True)
class DualRewardConfig(TrainingConfig):
    """:class:`TrainingConfig` plus the classifier read at one layer."""

    classifier_targets: tuple[str, ...] | None = setting(
        None, "One target token per class, as LABEL=TOKEN pairs: yes=' yes',no=' no' (each TOKEN must be "
              "one token of the tokenizer).", metavar="PAIRS", many=True)
    classifier_layer: int | None = setting(
        None, "Block whose output the classifier reads (negative counts from the end; default: the "
              "middle block).")
    classifier_weight: float = setting(0.5, "w: weight of the classifier loss; the answer loss gets 1 − w.",
                                       minimum=0.0)
    mask_prompt: bool = setting(True, "Answer loss only on completion tokens (off: the prompt too).")

    def __attrs_post_init__(self):
        if self.classifier_weight > 1:
            raise ValueError(f"classifier_weight must be in [0, 1], got {self.classifier_weight!r}")


def parse_targets(pairs: tuple[str, ...]) -> dict[str, str]:
    """``("yes= yes", "no= no")`` -> ``{"yes": " yes", "no": " no"}`` (quotes around TOKEN are dropped)."""
    targets: dict[str, str] = {}
    for pair in pairs:
        label, sep, token = pair.partition("=")
        label = label.strip()
        if len(token) >= 2 and token[0] == token[-1] and token[0] in "'\"":
            token = token[1:-1]
        if not sep or not label or not token:
            raise LazarusError(f"--classifier-targets: {pair!r} must look like LABEL=TOKEN, e.g. yes=' yes'")
        if label in targets:
            raise LazarusError(f"--classifier-targets: label {label!r} is given twice")
        targets[label] = token
    if len(targets) < 2:
        raise LazarusError("--classifier-targets needs at least two classes, e.g. yes=' yes',no=' no'")
    return targets


class DualRewardTrainer(Trainer):
    """``lazarus train dual-reward``: answer cross-entropy plus a logit-lens classifier at layer L."""

    name = "dual-reward"
    config_class = DualRewardConfig
    config: DualRewardConfig  # (an instance of config_class)
    data_format = "prompt"
    headline_metrics = ("classifier/accuracy", "loss")

    def load(self) -> None:
        super().load()
        config = self.config
        if not config.classifier_targets:
            raise LazarusError("dual-reward needs --classifier-targets LABEL=TOKEN,... (one token per class)")
        targets = parse_targets(config.classifier_targets)
        self.labels = list(targets)
        ids = []
        for label, token in targets.items():
            encoded = list(self.tokenizer.encode(token, add_special_tokens=False))
            if len(encoded) != 1:
                pieces = [self.tokenizer.decode([i]) for i in encoded]
                raise LazarusError(f"--classifier-targets: {label}={token!r} is {len(encoded)} tokens "
                                   f"{pieces} for this tokenizer; choose a string that is one token")
            ids.append(encoded[0])
        if len(set(ids)) != len(ids):
            raise LazarusError("--classifier-targets: two classes map to the same token; choose distinct tokens")
        self.target_ids = mx.array(ids)
        blocks = len(self.model.blocks)
        layer = blocks // 2 if config.classifier_layer is None else config.classifier_layer
        if not -blocks <= layer < blocks:
            raise LazarusError(f"--classifier-layer {layer}: the model has {blocks} blocks "
                               f"(use 0..{blocks - 1}, or -1..-{blocks} from the end)")
        self.layer = layer % blocks
        self.hook = f"blocks.{self.layer}.hook_resid_post"

    def setup(self) -> None:
        self.log(f"Classifier: {', '.join(self.labels)} read at {self.hook} through the final norm and head; "
                 f"weight {self.config.classifier_weight:g}")

    def tokenize(self, dataset):
        from lazarus.data.examples import tokenize_sft
        from lazarus.data.records import CompletionRecord, Dataset

        records, labels = [], []
        for record in dataset.records:
            completion, label = record.extra.get("completion"), record.extra.get("label")
            if not isinstance(completion, str):
                raise LazarusError(f"{record.source}: dual-reward records need a string 'completion' next to "
                                   "'prompt' and 'label'")
            if label is None or str(label) not in self.labels:
                raise LazarusError(f"{record.source}: 'label' is {label!r}; --classifier-targets knows "
                                   f"{', '.join(self.labels)}")
            records.append(CompletionRecord(record.prompt, completion, record.source))
            labels.append(self.labels.index(str(label)))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            examples = tokenize_sft(Dataset(tuple(records), "completion", dataset.path), self.tokenizer,
                                    max_seq_length=self.config.max_seq_length, mask_prompt=self.config.mask_prompt)
        if examples.num_truncated:
            self.log(f"[yellow]{dataset.path}: {examples.num_truncated} examples were cut to --max-seq-length "
                     f"{self.config.max_seq_length}[/]")
        # the label travels with each example into its batch (SFTBatch.extra)
        return attrs.evolve(examples, examples=tuple(
            attrs.evolve(e, extra={**e.extra, "label": labels[e.record_index], "prompt_length": e.prompt_length})
            for e in examples))

    def batch_arrays(self, batch, training: bool = True) -> dict:
        labels = batch.extra["label"].astype(np.int32)
        # the last prompt token: where the classifier reads (kept inside the input ids[:, :-1])
        width = batch.ids.shape[1] - 1
        positions = (np.minimum(np.maximum(batch.extra["prompt_length"], 1), width) - 1).astype(np.int32)
        weight = (batch.indices >= 0).astype(np.float32)
        return {"ids": mx.array(batch.ids), "loss_mask": mx.array(batch.loss_mask), "labels": mx.array(labels),
                "positions": mx.array(positions), "weight": mx.array(weight)}

    def loss(self, model, ids, loss_mask, labels, positions, weight):
        logits, captured = model.run_with_cache(ids[:, :-1], names=[self.hook])
        hidden = captured[self.hook]
        rows = mx.arange(ids.shape[0])
        lens = model.unembed(model.ln_final(hidden[rows, positions][:, None, :]))[:, 0]
        class_logits = lens.astype(mx.float32)[:, self.target_ids]
        classifier = nn.losses.cross_entropy(class_logits, labels, reduction="none")
        correct = (mx.argmax(class_logits, axis=-1) == labels).astype(mx.float32)

        targets, mask = ids[:, 1:], loss_mask[:, 1:].astype(mx.float32)
        per_token = nn.losses.cross_entropy(logits.astype(mx.float32), targets, reduction="none") * mask
        answer = per_token.sum(axis=-1) / mx.maximum(mask.sum(axis=-1), 1.0)

        w = self.config.classifier_weight
        losses = w * classifier + (1 - w) * answer
        metrics = {
            "classifier/loss": (mx.stop_gradient(classifier) * weight).sum(),
            "classifier/accuracy": (correct * weight).sum(),
            "answer/loss": (mx.stop_gradient(answer) * weight).sum(),
        }
        return (losses * weight).sum(), weight.sum(), metrics
