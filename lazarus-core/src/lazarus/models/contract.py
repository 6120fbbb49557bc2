"""The model contract, written down: what the loader, generation, adapters, trainers and probes
may rely on in a family module and in the model it builds.

:class:`FamilyModule` is what a ``FamilySpec.entry`` names; :class:`CausalModel` is the model its
``Model(args)`` returns. :class:`lazarus.models.transformer.CausalLM` (with
:class:`~lazarus.models.transformer.TransformerArgs`) is the base that supplies every default, so a
family states only what differs: its args' behaviour properties, ``block_class`` for another
block shape (MoE, parallel residual), ``sanitize``/``hf_weights`` when its module tree differs
from its checkpoint layout, ``gguf_architecture`` when llama.cpp runs it. Code calls these
members directly instead of probing for them with ``hasattr``.

Both are :func:`typing.runtime_checkable`, so ``isinstance(model, CausalModel)`` checks that the
members exist (not their signatures). This module imports no mlx.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Protocol, runtime_checkable


@runtime_checkable
class ModelArgsLike(Protocol):
    """A family's ``ModelArgs``: built from ``config.json`` by ``from_hf_config``."""

    @classmethod
    def from_hf_config(cls, config: dict) -> Any:
        """The args from a Hugging Face ``config.json`` dict (a LazarusError for a bad config)."""
        ...

    def fused(self) -> dict[str, tuple[tuple[str, int], ...]]:
        """The checkpoint's fused layers the family splits on load (``{}``: none)."""
        ...


@runtime_checkable
class CausalModel(Protocol):
    """A decoder-only language model as every part of Lazarus uses it.

    ``model(ids, cache=None, mask=None) -> logits`` (B, T, vocab) for int ids (B, T); ``blocks``
    the transformer blocks in order (adapters and hooks find layers there); ``make_cache()`` one
    KV cache per block; ``embed``/``unembed``/``final_hidden`` the parts of the forward pass
    (probes and chunked scorers start there); ``sanitize(weights)`` turns checkpoint tensors into
    parameters and ``hf_weights()`` the parameters back into checkpoint tensors; ``family`` the
    registered family name; ``args`` its ``ModelArgs``; ``source`` where the loader read it.
    """

    family: ClassVar[str]
    args: Any
    source: Any

    @property
    def blocks(self) -> Sequence[Any]: ...

    def __call__(self, ids: Any, cache: Any = None, mask: Any = None) -> Any: ...

    def make_cache(self) -> list: ...

    def embed(self, ids: Any) -> Any: ...

    def unembed(self, h: Any) -> Any: ...

    def sanitize(self, weights: dict[str, Any]) -> dict[str, Any]: ...

    def hf_weights(self) -> dict[str, Any]: ...


@runtime_checkable
class FamilyModule(Protocol):
    """What a family entry names (a module, or any object with these attributes).

    ``ModelArgs`` and ``Model`` are required; ``Model(args)`` returns a :class:`CausalModel`.
    Optional, looked up by name where used: ``tiny_config(vocab_size)`` and ``small_config(vocab_size)``
    (the ``config.json`` dicts ``lazarus models create --size`` and the test fixtures build).
    """

    ModelArgs: type
    Model: Any  # a class, or a factory function (the mlx-lm bridge builds a class per architecture)


__all__ = ["CausalModel", "FamilyModule", "ModelArgsLike"]
