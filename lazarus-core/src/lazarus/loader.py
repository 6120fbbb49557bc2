"""``load_model``: a Hugging Face checkpoint (local directory or hub id) -> (model, tokenizer, config).

The family comes from ``config.json`` through the family registry (``model_type``, then
``architectures``). Weights are read only from safetensors (sharded through
``model.safetensors.index.json`` or not) and checked against the model key by key before anything
is loaded, so every problem is one :class:`LazarusError` line naming the file and the key.
"""

from __future__ import annotations

import json
import os
import re
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from lazarus.errors import LazarusError

if TYPE_CHECKING:
    from lazarus.specs import FamilySpec

#: what a checkpoint download fetches from the hub
HUB_PATTERNS = ["config.json", "generation_config.json", "*.safetensors", "model.safetensors.index.json",
                "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                "chat_template.json", "chat_template.jinja", "lazarus.json"]

DTYPES = ("float32", "bfloat16", "float16")
#: other spellings :func:`parse_dtype` accepts
DTYPE_ALIASES = {"fp16": "float16", "half": "float16", "bf16": "bfloat16", "fp32": "float32", "float": "float32"}

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


def load_model(model: str | os.PathLike, adapter_path: str | os.PathLike | None = None,
               dtype: str | None = None):
    """Load a model in Hugging Face layout; returns ``(model, tokenizer, config)``.

    ``model``: a local directory (config.json, *.safetensors, tokenizer files) or a hub id
    (``org/name``), fetched with huggingface_hub (``HF_HUB_OFFLINE=1`` uses only the local cache).
    ``adapter_path``: an adapter directory applied on top (``lazarus.adapters.load_adapter``).
    ``dtype``: "float32", "bfloat16" or "float16" to convert floating weights; None keeps the
    stored dtype. ``config`` is the ``config.json`` dict. The model carries ``model.source``
    (:class:`lazarus.models.transformer.ModelSource`) for :func:`lazarus.provenance.for_model`.
    """
    import attrs

    from lazarus.checkpoints import detect_model_format

    parse_dtype(dtype)  # an unknown dtype fails before any download
    path = resolve_model_path(model)
    net, tokenizer, config = detect_model_format(path).read(path, dtype=dtype)
    if getattr(net, "source", None) is not None:  # what the user passed, and the adapter put on top
        net.source = attrs.evolve(net.source, model=str(model), adapter_path=(
            str(adapter_path) if adapter_path is not None else None))
    if adapter_path is not None:
        apply_adapter(net, adapter_path)
        warn_if_other_base(adapter_path, net.source)
    return net, tokenizer, config


def read_hf_model(path: Path, dtype=None):
    """Read the Hugging Face layout directory ``path`` (the ``hf`` model format): ``(model,
    tokenizer, config)``, ``model.source`` set. :func:`load_model` is the public entry."""
    import mlx.core as mx

    from lazarus.models.quantize import apply_quantization, quantization_from_config
    from lazarus.models.transformer import ModelSource

    target = parse_dtype(dtype)
    config = read_config(path)
    spec = detect_family(config, path / "config.json")
    quant = quantization_from_config(config, path / "config.json")
    family = _load_family_module(spec)

    try:
        args = family.ModelArgs.from_hf_config(config)
        net = family.Model(args)
    except LazarusError as exc:
        raise LazarusError(f"{path / 'config.json'}: {exc}") from None

    weights, origin = read_safetensors(path)
    # the model contract (lazarus.models.contract): CausalLM's default drops rotary buffers and a
    # tied head; a family with key quirks (Phi-3's fused layers, mlx-lm's models) overrides it
    weights = net.sanitize(weights)
    if quant is not None:  # mlx-lm's layout: layers stored with `scales` become quantized layers
        fused = args.fused()
        apply_quantization(net, quant, weights,
                           {part: name for name, parts in fused.items() for part, _ in parts})
    check_weights(net, weights, origin, path)
    if target is not None:
        weights = {k: v.astype(target) if mx.issubdtype(v.dtype, mx.floating) else v
                   for k, v in weights.items()}
    net.load_weights(list(weights.items()), strict=False)  # already checked key by key above
    mx.eval(net.parameters())
    net.eval()
    from lazarus.models.fused import FUSE_AT_LOAD, fuse_projections

    if FUSE_AT_LOAD:  # q/k/v and gate/up as one matmul each; the separate layers stay as views
        del weights  # the separate tensors go as each group is fused
        fuse_projections(net)


    net.source = ModelSource(model=str(path), path=str(path), family=spec.name,
                             weight_files=tuple(sorted(set(origin.values()))))
    tokenizer = load_tokenizer(path)
    return net, tokenizer, config


def warn_if_other_base(adapter_path: str | os.PathLike, source) -> None:
    """Warn (:class:`lazarus.errors.AdapterBaseWarning`) when the adapter's ``lazarus.json`` names
    another base model than ``source``: shapes that happen to fit give silently wrong results."""
    import warnings

    from lazarus.errors import AdapterBaseWarning
    from lazarus.provenance import recorded_base_differs

    other = recorded_base_differs(adapter_path, source)
    if other is not None:
        warnings.warn(f"adapter {os.fspath(adapter_path)} was trained on {other}, not on {source.model}; "
                      "its results on this model may be meaningless", AdapterBaseWarning, stacklevel=3)


# -- locating the checkpoint ---------------------------------------------------------------------
def resolve_model_path(model: str | os.PathLike) -> Path:
    """The local directory of ``model``: itself when it is a directory, the packaged directory of
    an embedded model (``lazarus:tiny-math``), else a hub snapshot."""
    text = os.fspath(model)
    if text.startswith("lazarus:"):
        from lazarus.embedded import embedded_path

        return embedded_path(text)
    from lazarus.options import utf8_problem

    problem = utf8_problem(text)
    if problem:  # mlx cannot open files under such a path (it reads as a "corrupt" file)
        raise LazarusError(f"--model {os.fsencode(text)!r}: {problem}; mlx reads only UTF-8 paths: rename or "
                           "link the directory")
    path = Path(text).expanduser()
    if not path.exists():
        from lazarus.io import recover_output

        recover_output(path, "--model")  # an output directory an interrupted save left hidden
    if path.is_dir():
        return path
    if path.exists():
        raise LazarusError(f"{text}: is a file; give the model's directory (with config.json and *.safetensors)")
    if not _HUB_ID.match(text) or text.startswith((".", "/", "~")):
        raise LazarusError(f"{text}: no such model directory (and not a hub id like 'org/name'); check the path")
    return download(text)


def download(repo_id: str) -> Path:
    """Fetch (or reuse from the local cache) the checkpoint files of ``repo_id`` from the hub."""
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import (
            GatedRepoError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )
    except ImportError:  # pragma: no cover - a dependency of lazarus-core
        raise LazarusError(f"{repo_id}: not a local directory, and huggingface_hub is not installed to "
                           "download it; pip install huggingface_hub") from None
    try:
        return Path(snapshot_download(repo_id=repo_id, allow_patterns=HUB_PATTERNS))
    except GatedRepoError:
        raise LazarusError(f"{repo_id}: gated on the hub; accept its licence on huggingface.co and log in "
                           "with `hf auth login` (or set HF_TOKEN)") from None
    except RepositoryNotFoundError:
        raise LazarusError(f"{repo_id}: no local directory of that name and no such hub repository (or it is "
                           "private: log in with `hf auth login`); check the spelling") from None
    except RevisionNotFoundError:
        raise LazarusError(f"{repo_id}: revision not found on the hub") from None
    except LocalEntryNotFoundError:
        raise LazarusError(f"{repo_id}: not in the local hub cache and the hub cannot be reached "
                           "(HF_HUB_OFFLINE set or no network); download it once online, or give a local "
                           "directory") from None
    except Exception as exc:  # network errors come in many types; all mean the same to the user
        raise LazarusError(f"{repo_id}: download failed ({type(exc).__name__}: {' '.join(str(exc).split())}); "
                           "check the network, or set HF_HUB_OFFLINE=1 to use the local cache") from None


def read_config(path: Path) -> dict:
    """``path/config.json`` as a dict, with one-line errors for missing or malformed files."""
    config_path = path / "config.json"
    if not config_path.is_file():
        raise LazarusError(f"{config_path}: missing; a model directory needs config.json "
                           "(Hugging Face layout), e.g. one written by `lazarus models create`")
    try:
        config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LazarusError(f"{config_path}: not valid JSON ({exc})") from None
    if not isinstance(config, dict):
        raise LazarusError(f"{config_path}: must hold a JSON object")
    return config


def detect_family(config: dict, config_path: Path | str = "config.json"):
    """The registered :class:`FamilySpec` for a config: by ``model_type``, then by ``architectures``,
    then a fallback family registered for ``model_types=["*"]`` (so named families always win)."""
    from lazarus.plugins import get_registry

    families = cast("dict[str, FamilySpec]", get_registry().all("family"))
    model_type = config.get("model_type")
    for spec in families.values():
        if model_type in spec.model_types:
            return spec
    architectures = config.get("architectures") or []
    for spec in families.values():
        if any(arch in spec.architectures for arch in architectures):
            return spec
    # a family registered for model_types ["*"] (the mlx-lm bridge) takes what no other family
    # claims, if its module's supports(config) agrees
    for spec in families.values():
        if "*" in spec.model_types and model_type:
            supports = getattr(_load_family_module(spec), "supports", None)
            if supports is None or supports(config):
                return spec
    installed = ", ".join(f"{name} ({'/'.join(s.model_types)})" for name, s in families.items()) or "none"
    what = f"model_type {model_type!r}" if model_type else "no model_type"
    raise LazarusError(
        f"{config_path}: unsupported {what} (architectures {architectures or 'none'}); installed "
        f"families: {installed}; install more with `pip install lazarus-families` or write a family "
        "plugin (docs/plugins.md)"
    )


def _load_family_module(spec):
    try:
        return spec.load()
    except Exception as exc:
        raise LazarusError(f"family {spec.name!r} ({spec.entry}) failed to import: "
                           f"{type(exc).__name__}: {exc}; reinstall the plugin that provides it") from None


def parse_dtype(value):
    """The one dtype parser: an ``mx.Dtype`` from None (None), an ``mx.Dtype`` or a name: one of
    :data:`DTYPES`, an alias of :data:`DTYPE_ALIASES` (fp16, bf16 ...), with or without ``mx.``."""
    if value is None:
        return None
    import mlx.core as mx

    if isinstance(value, mx.Dtype):
        return value
    text = str(value).lower().removeprefix("mlx.core.").removeprefix("mx.")
    name = DTYPE_ALIASES.get(text, text)
    if name not in DTYPES:
        raise LazarusError(f"dtype {value!r} is not supported; use one of {', '.join(DTYPES)}")
    return getattr(mx, name)


# -- weights -------------------------------------------------------------------------------------
def weight_files(path: Path) -> list[Path]:
    """The safetensors files of a checkpoint, from the index when there is one."""
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as exc:
            raise LazarusError(f"{index}: not a valid safetensors index ({type(exc).__name__}: {exc})") from None
        files = [path / name for name in sorted(set(weight_map.values()))]
        for f in files:
            if not f.is_file():
                raise LazarusError(f"{index}: names shard {f.name}, which is missing; re-download the model")
        return files
    files = sorted(path.glob("model*.safetensors")) or sorted(
        p for p in path.glob("*.safetensors") if p.name != "adapters.safetensors")
    if not files:
        extra = [p.name for p in path.iterdir() if p.suffix in {".bin", ".pt", ".pth", ".npz", ".gguf"}]
        hint = f" (found {', '.join(extra)}: convert to safetensors first)" if extra else ""
        raise LazarusError(f"{path}: no *.safetensors weights{hint}; Lazarus loads only safetensors")
    return files


def read_safetensors_header(path: Path) -> dict:
    """The JSON header of a safetensors file (tensor name -> dtype, shape, data_offsets), checked
    against the file size so that truncated or corrupt files fail here with a one-line error."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ValueError("shorter than a safetensors header")
            (header_len,) = struct.unpack("<Q", head)
            if header_len > size - 8:
                raise ValueError(f"header length {header_len} exceeds the file size {size}")
            header = json.loads(f.read(header_len))
        end = 0
        for key, entry in header.items():
            if key != "__metadata__":
                end = max(end, int(entry["data_offsets"][1]))
    except (ValueError, KeyError, TypeError, IndexError, UnicodeDecodeError, AttributeError) as exc:
        raise LazarusError(f"{path}: corrupt safetensors file ({exc}); re-download or re-create it") from None
    if 8 + header_len + end > size:
        raise LazarusError(f"{path}: truncated safetensors file ({size} bytes, its header needs "
                           f"{8 + header_len + end}); re-download or re-create it")
    header.pop("__metadata__", None)
    return header


def read_safetensors(path: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """All tensors of a checkpoint: ``(weights, origin)`` where ``origin`` maps key -> file name."""
    import mlx.core as mx

    weights: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for f in weight_files(path):
        read_safetensors_header(f)
        try:
            tensors = cast("dict[str, mx.array]", mx.load(str(f)))  # (safetensors: a dict)
        except Exception as exc:
            raise LazarusError(f"{f}: corrupt safetensors file ({' '.join(str(exc).split())}); "
                               "re-download or re-create it") from None
        for key, value in tensors.items():
            weights[key] = value
            origin[key] = str(f)
    return weights, origin


def check_weights(model, weights: dict, origin: dict[str, str], path: Path) -> None:
    """Raise a one-line LazarusError for the first missing, unexpected or mis-shaped tensor."""
    from mlx.utils import tree_flatten

    expected = dict(tree_flatten(model.parameters()))
    files = sorted(set(origin.values())) or [str(path)]
    where = files[0] if len(files) == 1 else f"{path} (safetensors shards)"
    for key, param in expected.items():
        if key not in weights:
            hint = ("; config.json says tie_word_embeddings=false, set it to true if the head is tied"
                    if key == "lm_head.weight" else "; the checkpoint is incomplete or of another family")
            raise LazarusError(f"{where}: missing weight tensor {key!r} (shape {tuple(param.shape)}) that "
                               f"the {model.family} model needs{hint}")
    for key, value in weights.items():
        if key not in expected:
            raise LazarusError(f"{origin.get(key, where)}: unexpected tensor {key!r} (shape {tuple(value.shape)}); "
                               f"it does not belong to a {model.family} model with this config.json")
        if tuple(value.shape) != tuple(expected[key].shape):
            raise LazarusError(f"{origin.get(key, where)}: tensor {key!r} has shape {tuple(value.shape)}, but "
                               f"config.json implies {tuple(expected[key].shape)}")


# -- tokenizer and adapters ----------------------------------------------------------------------
def load_tokenizer(path: Path):
    """The checkpoint's tokenizer (``lazarus.tokenizer.Tokenizer.from_dir``)."""
    from lazarus.tokenizer import Tokenizer

    return Tokenizer.from_dir(path)


def apply_adapter(model, adapter_path: str | os.PathLike) -> None:
    """Apply an adapter in place through ``lazarus.adapters.load_adapter``."""
    from lazarus.adapters import load_adapter

    load_adapter(model, adapter_path)
