"""The adapter configuration, field for field the ``adapter_config.json`` that mlx-lm writes and reads.

mlx-lm writes its whole training configuration into ``adapter_config.json`` and reads back three
fields: ``fine_tune_type``, ``num_layers`` and ``lora_parameters`` (``rank``, ``scale``, ``dropout``
and the optional ``keys``). :class:`AdapterConfig` holds those three as typed fields and keeps every
other field in ``extra`` so that reading and writing a file loses nothing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import attrs

from lazarus.errors import LazarusError

#: file name of the configuration inside an adapter directory (mlx-lm's name)
CONFIG_FILE = "adapter_config.json"


def _positive(instance, attribute, value):
    if value <= 0:
        raise ValueError(f"{attribute.name} must be > 0, got {value!r}")


def _probability(instance, attribute, value):
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{attribute.name} must be in [0, 1), got {value!r}")


def _keys(value):
    if value is None:
        return None
    if isinstance(value, str):
        value = [value]
    return tuple(str(k) for k in value)


@attrs.define
class LoraParameters:
    """Low-rank settings: ``rank`` r, ``scale`` (the update is multiplied by it, mlx-lm's name for
    alpha/r), ``dropout`` on the adapter input, and ``keys``: module paths relative to a block
    (``self_attn.q_proj``, ``mlp.down_proj``); ``None`` means every linear layer of the block."""

    rank: int = attrs.field(default=8, converter=int, validator=_positive)
    scale: float = attrs.field(default=20.0, converter=float)
    dropout: float = attrs.field(default=0.0, converter=float, validator=_probability)
    keys: tuple[str, ...] | None = attrs.field(default=None, converter=_keys)

    def to_dict(self) -> dict[str, Any]:
        """The ``lora_parameters`` object of ``adapter_config.json`` (``keys`` only when set, as mlx-lm)."""
        out: dict[str, Any] = {"rank": self.rank, "scale": self.scale, "dropout": self.dropout}
        if self.keys is not None:
            out["keys"] = list(self.keys)
        return out


@attrs.define
class AdapterConfig:
    """What kind of adapter, on which blocks and layers.

    ``fine_tune_type``: a registered adapter name (built-ins ``lora``, ``dora``, ``full``).
    ``num_layers``: adapt the last N blocks; ``-1`` (or 0, as in mlx-lm) means all blocks.
    ``lora_parameters``: see :class:`LoraParameters` (ignored by ``full``).
    ``extra``: every other field of ``adapter_config.json`` (mlx-lm stores its training options
    there), written back unchanged.
    """

    fine_tune_type: str = attrs.field(default="lora", converter=str)
    num_layers: int = attrs.field(default=16, converter=int)
    lora_parameters: LoraParameters = attrs.field(factory=LoraParameters)
    extra: dict[str, Any] = attrs.field(factory=dict)

    @property
    def rank(self) -> int:
        return self.lora_parameters.rank

    @property
    def scale(self) -> float:
        return self.lora_parameters.scale

    @property
    def replaces_weights(self) -> bool:
        """Whether this adapter's tensors are the model's own weights (full fine-tuning): the
        registered adapter type's :attr:`~lazarus.adapters.base.AdapterType.replaces_weights`."""
        from lazarus.adapters import get_adapter_type

        return get_adapter_type(self.fine_tune_type).replaces_weights

    def _writes_as_full(self) -> bool:
        """``replaces_weights``, or False for a type no installed plugin provides (the config is
        still written back as it was read)."""
        from lazarus.errors import UnknownNameError

        try:
            return self.replaces_weights
        except UnknownNameError:
            return False

    @property
    def keys(self) -> tuple[str, ...] | None:
        return self.lora_parameters.keys

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "adapter config") -> AdapterConfig:
        """Build from the JSON object of an ``adapter_config.json``; ``source`` names it in errors.

        Raises :class:`LazarusError` naming the field when a value has the wrong type or range.
        """
        if not isinstance(data, dict):
            raise LazarusError(f"{source}: expected a JSON object, got {type(data).__name__}")
        extra = {k: v for k, v in data.items()
                 if k not in ("fine_tune_type", "num_layers", "lora_parameters")}
        lora = data.get("lora_parameters") or {}
        if not isinstance(lora, dict):
            raise LazarusError(f"{source}: 'lora_parameters' must be an object with rank, scale, dropout, keys")
        if "alpha" in lora and "scale" not in lora:
            raise LazarusError(f"{source}: lora_parameters has 'alpha' but no 'scale'; mlx-lm adapters "
                               "use 'scale' (the multiplier of the low-rank update), add it")
        known = {f.name for f in attrs.fields(LoraParameters)}
        try:
            params = LoraParameters(**{k: v for k, v in lora.items() if k in known})
            extra_lora = {k: v for k, v in lora.items() if k not in known}
            if extra_lora:
                extra["lora_parameters_extra"] = extra_lora
            return cls(
                fine_tune_type=data.get("fine_tune_type", "lora"),
                num_layers=data.get("num_layers", 16),
                lora_parameters=params,
                extra=extra,
            )
        except (TypeError, ValueError) as exc:
            raise LazarusError(f"{source}: invalid adapter configuration: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        """The JSON object written to ``adapter_config.json``: sorted keys, as mlx-lm writes it.

        ``full`` writes ``lora_parameters: null`` exactly as mlx-lm does for full fine-tuning.
        """
        out = {k: v for k, v in self.extra.items() if k != "lora_parameters_extra"}
        out["fine_tune_type"] = self.fine_tune_type
        out["num_layers"] = self.num_layers
        if self._writes_as_full():
            out["lora_parameters"] = None
        else:
            out["lora_parameters"] = self.lora_parameters.to_dict() | self.extra.get(
                "lora_parameters_extra", {})
        return dict(sorted(out.items()))

    @classmethod
    def from_file(cls, path: str | Path) -> AdapterConfig:
        """Read an ``adapter_config.json`` (or the one inside the directory ``path``)."""
        path = Path(path)
        if path.is_dir():
            path = path / CONFIG_FILE
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise LazarusError(f"{path}: not found; an adapter directory holds {CONFIG_FILE} and "
                               "adapters.safetensors") from None
        except json.JSONDecodeError as exc:
            raise LazarusError(f"{path}: line {exc.lineno}: not valid JSON ({exc.msg})") from None
        return cls.from_dict(data, source=str(path))

    def to_json(self) -> str:
        """The text of ``adapter_config.json`` (indent 4, sorted, as mlx-lm's ``save_config``)."""
        return json.dumps(self.to_dict(), indent=4)
