"""The reference policy of preference and RL trainers (DPO, ORPO-free, GRPO, PPO), and log-probs.

Which model is the reference (the policy's trained weights never move it):

=================  =======================================================================  =========
kind               when                                                                     memory
=================  =======================================================================  =========
``adapter-off``    a fresh LoRA/DoRA adapter: the same model with its adapter layers        none
                   switched off, i.e. the base model
``start-adapter``  ``--adapter DIR``: the base plus the starting adapter as it was loaded   adapter
                   (TRL/PEFT practice: the SFT model is the reference)                     tensors
``snapshot``       a full fine-tune: the trained blocks' weights as they were at step 0     those
                                                                                           blocks
``separate``       ``--ref-model DIR``: another checkpoint, loaded once                     a model
``none``           ``beta = 0`` (or a reference-free loss): nothing is kept                 none
=================  =======================================================================  =========

Reference outputs never carry gradients: :meth:`ReferenceModel.sequence_logprobs` stops them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_unflatten

from lazarus.errors import LazarusError

KINDS = ("adapter-off", "start-adapter", "snapshot", "separate", "none")


# -- log-probs -------------------------------------------------------------------------------------
def token_logprobs(logits: mx.array, targets: mx.array) -> mx.array:
    """``log p(targets[b, t] | ...)`` from ``logits`` (B, T, V) and int ``targets`` (B, T): (B, T),
    computed in float32."""
    logits = logits.astype(mx.float32)
    picked = mx.take_along_axis(logits, targets[..., None], axis=-1).squeeze(-1)
    return picked - mx.logsumexp(logits, axis=-1)


#: most bytes of float32 logits that :func:`model_token_logprobs` holds at once (rows x positions x vocab x 4)
LOGITS_CHUNK_BYTES = 128 * 2**20
#: rows :func:`frozen_sequence_logprobs` scores at a time
SCORE_ROWS = 8


def model_token_logprobs(model, ids: mx.array, *, start: int = 0) -> mx.array:
    """``log p(ids[:, t + 1] | ids[:, :t + 1])``, (B, T-1) float32, for ``model`` on ``ids`` (B, T).

    For a model with ``final_hidden`` (Lazarus's decoders) the vocabulary projection runs in
    chunks of positions, so at most :data:`LOGITS_CHUNK_BYTES` of float32 logits exist at a time,
    never the (B, T, vocab) block; ``start`` > 0 skips the projection of the first ``start``
    positions (their log-probs are 0: pass the first position any row scores). Other models: the
    whole logits, as :func:`token_logprobs`. Under a gradient the chunks' logits are kept for the
    backward pass all the same: bound those by scoring fewer rows at a time.
    """
    inputs, targets = ids[:, :-1], ids[:, 1:]
    if not callable(getattr(model, "final_hidden", None)) or not callable(getattr(model, "unembed", None)):
        return token_logprobs(model(inputs), targets)
    hidden = model.final_hidden(inputs)[:, start:]
    targets = targets[:, start:]
    rows, length, _ = hidden.shape
    vocab = getattr(getattr(model, "args", None), "vocab_size", None) or 1
    step = max(1, LOGITS_CHUNK_BYTES // (rows * vocab * 4))

    parts = [mx.zeros((rows, start), mx.float32)] if start else []
    parts += [token_logprobs(model.unembed(hidden[:, i:i + step]), targets[:, i:i + step])
              for i in range(0, length, step)]
    return parts[0] if len(parts) == 1 else mx.concatenate(parts, axis=1)


def sequence_logprobs(model, ids: mx.array, mask: mx.array) -> tuple[mx.array, mx.array]:
    """Per-row sums of token log-probs where ``mask`` is 1, and the per-token log-probs.

    ``ids`` (B, T) int; ``mask`` (B, T) marks the *target* tokens (``mask[:, t] = 1``: token t is
    scored given ids[:, :t]), so position 0 never counts. Returns ``(sums (B,), per_token (B, T-1))``
    where ``per_token`` is already multiplied by ``mask[:, 1:]``.
    """
    logits = model(ids[:, :-1])
    per_token = token_logprobs(logits, ids[:, 1:]) * mask[:, 1:].astype(mx.float32)
    return per_token.sum(axis=-1), per_token


def frozen_sequence_logprobs(model, ids: mx.array, mask: mx.array) -> tuple[mx.array, mx.array]:
    """:func:`sequence_logprobs` in eval mode (no dropout), without gradient, evaluated now (so
    that weights swapped in for the call are the ones used). Scores :data:`SCORE_ROWS` rows at a
    time, projecting onto the vocabulary only from the first target position of any row on."""
    training = model.training
    model.eval()
    try:
        # positions before the first target of any row are never projected onto the vocabulary
        targets = mask[:, 1:].astype(mx.float32)
        scored = mx.any(targets > 0, axis=0)
        start = int(mx.argmax(scored).item()) if scored.any().item() else 0  # type: ignore[arg-type]  # mlx's stub: item() may be complex
        parts = []
        for i in range(0, ids.shape[0], SCORE_ROWS):  # a few rows at a time: activations stay small
            parts.append(mx.stop_gradient(model_token_logprobs(model, ids[i:i + SCORE_ROWS], start=start)))
            mx.eval(parts[-1])
        per_token = (parts[0] if len(parts) == 1 else mx.concatenate(parts, axis=0)) * targets
        sums = per_token.sum(axis=-1)
        mx.eval(sums, per_token)
    finally:
        model.train(training)
    return sums, per_token


# -- switching the trained weights out ---------------------------------------------------------------
@contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block, ``model`` runs without its LoRA/DoRA layers (the base layers they wrap
    stand in their place); on exit the adapter layers, and their trained weights, come back."""
    from lazarus.adapters.lora import LoRALinear

    wrapped = [(path, module) for path, module in model.named_modules() if isinstance(module, LoRALinear)]
    if not wrapped:
        yield model
        return
    model.update_modules(tree_unflatten([(path, module.linear) for path, module in wrapped]))
    try:
        yield model
    finally:
        model.update_modules(tree_unflatten(wrapped))


@contextmanager
def swapped_parameters(model: nn.Module, weights: dict[str, mx.array]) -> Iterator[nn.Module]:
    """Within the block, ``model`` holds ``weights`` (flat ``{key: array}``) in place of its own;
    they are put back on exit. Swapping is by reference: nothing is copied."""
    current = dict(tree_flatten(model.parameters()))
    saved = [(key, current[key]) for key in weights]
    model.update(tree_unflatten(list(weights.items())))
    try:
        yield model
    finally:
        model.update(tree_unflatten(saved))


class ReferenceModel:
    """The reference policy. Build it with :meth:`for_trainer` once the policy's adapter is on
    (and before any training step), then call :meth:`sequence_logprobs`."""

    def __init__(self, kind: str, policy: nn.Module | None = None, *, weights: dict | None = None,
                 model: nn.Module | None = None, source: str | None = None) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown reference kind {kind!r}; known: {', '.join(KINDS)}")
        self.kind = kind
        self.policy = policy
        self.weights = weights  #: start-adapter / snapshot: the tensors swapped in
        self.model = model  #: separate: the other checkpoint
        self.source = source

    @classmethod
    def for_trainer(cls, trainer, ref_model: str | None = None, *, needed: bool = True) -> ReferenceModel:
        """The reference of a trainer whose model and adapter are ready (see the module table).

        ``needed=False`` (``beta = 0``) returns the ``none`` reference and keeps nothing.
        """
        if not needed:
            return cls("none")
        policy = trainer.model
        if ref_model:
            from lazarus.loader import load_model

            model, _, _ = load_model(ref_model, dtype=trainer.config.dtype)
            model.freeze()
            model.eval()
            if getattr(model.args, "vocab_size", None) != getattr(policy.args, "vocab_size", None):
                raise LazarusError(f"ref_model {ref_model}: its vocabulary ({model.args.vocab_size}) differs "
                                   f"from the policy's ({policy.args.vocab_size}); use a checkpoint of the "
                                   "same model", field="ref_model")
            return cls("separate", policy, model=model, source=ref_model)
        trainable = dict(tree_flatten(policy.trainable_parameters()))
        # copies: the optimizer replaces the policy's arrays, never mutates them, but be explicit
        frozen = {k: mx.array(v) for k, v in trainable.items()}
        if trainer.full_fine_tune:
            return cls("snapshot", policy, weights=frozen, source=trainer.config.model)
        if trainer.config.adapter:
            return cls("start-adapter", policy, weights=frozen, source=trainer.config.adapter)
        return cls("adapter-off", policy, source=trainer.config.model)

    @property
    def exists(self) -> bool:
        return self.kind != "none"

    def describe(self) -> str:
        """One line for the run log: what the reference is and what it costs."""
        return {
            "adapter-off": f"the base model {self.source} (the policy with its adapter switched off)",
            "start-adapter": f"the starting adapter {self.source} on the base (kept frozen)",
            "snapshot": "the model as it was at step 0 (a copy of the trained blocks' weights)",
            "separate": f"{self.source} (a separate model)",
            "none": "none",
        }[self.kind]

    @contextmanager
    def active(self) -> Iterator[nn.Module]:
        """The module that computes the reference, usable within the block."""
        if self.kind == "none":
            raise LazarusError("this run keeps no reference model (beta = 0)")
        if self.kind == "separate":
            assert self.model is not None  # (for_trainer gives each kind what it uses)
            yield self.model
            return
        assert self.policy is not None
        if self.kind == "adapter-off":
            with adapters_disabled(self.policy) as model:
                yield model
        else:
            assert self.weights is not None
            with swapped_parameters(self.policy, self.weights) as model:
                yield model

    def sequence_logprobs(self, ids: mx.array, mask: mx.array) -> tuple[mx.array, mx.array]:
        """:func:`sequence_logprobs` under the reference, without gradient."""
        with self.active() as model:
            return frozen_sequence_logprobs(model, ids, mask)

    def release(self) -> None:
        """Drop what the reference holds (after reference log-probs were precomputed)."""
        self.model = None
        self.weights = None
        self.kind = "none"
