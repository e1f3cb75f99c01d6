"""Safe loading and saving of weights.

Formats read by :func:`load_weights`:

* our weight files (``.safetensors``, config JSON in the metadata), written by :func:`save_weights`;
* our training checkpoints (``torch.save`` dicts with ``model`` and ``config``), read with ``weights_only``;
* the original SiLK Lightning checkpoints (``pvgg-4.ckpt``, ``coco-rgb-aug.ckpt``): weights under
  ``state_dict`` with the ``_mods.model.`` prefix, renamed to this package's module names.

No file is ever unpickled with a general unpickler: ``torch.load(weights_only=True)`` first, and for
Lightning files holding other pickled objects a restricted unpickler that rebuilds tensors and plain
containers only and replaces every other object by an inert placeholder.
"""

from __future__ import annotations

import json
import os
import pickle
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..errors import SilkError
from ..files import atomic_write, check_input_file
from .config import SiLKConfig

ORIGINAL_PREFIX = "_mods.model."
_FORMAT = "silk-keypoints-weights"

# original name (prefix stripped) -> ours
_RENAMES = [
    (r"^descriptor_scale_factor$", "descriptor_scale"),
    (r"^backbone\._backbone\.layers\.(\d+)\.(\d+)\.0\.", r"backbone.stages.\1.\2.conv."),
    (r"^backbone\._backbone\.layers\.(\d+)\.(\d+)\.2\.", r"backbone.stages.\1.\2.bn."),
    (r"^backbone\._heads\._mods\.logits\._detH1\.0\.", "keypoint_head.hidden.conv."),
    (r"^backbone\._heads\._mods\.logits\._detH1\.2\.", "keypoint_head.hidden.bn."),
    (r"^backbone\._heads\._mods\.logits\._detH2\.0\.", "keypoint_head.out.conv."),
    (r"^backbone\._heads\._mods\.logits\._detH2\.1\.", "keypoint_head.out.bn."),
    (r"^backbone\._heads\._mods\.raw_descriptors\._desH1\.0\.", "descriptor_head.hidden.conv."),
    (r"^backbone\._heads\._mods\.raw_descriptors\._desH1\.2\.", "descriptor_head.hidden.bn."),
    (r"^backbone\._heads\._mods\.raw_descriptors\._desH2\.0\.", "descriptor_head.out.conv."),
    (r"^backbone\._heads\._mods\.raw_descriptors\._desH2\.1\.", "descriptor_head.out.bn."),
]


class _Inert:
    """Stands in for any pickled object that is not a tensor or a plain container. Does nothing."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass

    def __call__(self, *args: Any, **kwargs: Any) -> _Inert:
        return _Inert()


# numpy arrays, scalars and dtypes (numpy 1 and 2 module names), beside torch's weights-only allow-list
_NUMPY_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
}


class RestrictedUnpickler(pickle.Unpickler):
    """The package's one unpickler for files it does not trust (checkpoints, LoFTR's pickled ``.npz`` infos).

    Rebuilds only tensors (torch's ``weights_only`` allow-list), numpy arrays / scalars / dtypes, ``OrderedDict``
    and plain values; nothing else is imported or called. Any other global becomes an inert placeholder, or,
    with ``strict=True``, raises ``pickle.UnpicklingError("refusing to load module.name ...")``.
    """

    def __init__(self, file: Any, *, strict: bool = False, **kwargs: Any) -> None:
        super().__init__(file, **kwargs)
        self.strict = strict

    def find_class(self, module: str, name: str) -> Any:
        from torch._weights_only_unpickler import _get_allowed_globals

        allowed = _get_allowed_globals()
        key = f"{module}.{name}"
        if key in allowed:
            return allowed[key]
        if (module, name) in _NUMPY_GLOBALS:
            return super().find_class(module, name)
        if module == "collections" and name == "OrderedDict":
            import collections

            return collections.OrderedDict
        if self.strict:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data file")
        return _Inert


class _RestrictedPickle:
    """A ``pickle_module`` for ``torch.load`` that never imports or calls anything outside an allow-list."""

    Unpickler = RestrictedUnpickler
    load = staticmethod(lambda f, **kw: RestrictedUnpickler(f, **kw).load())
    __name__ = "silk_restricted_pickle"


UNSAFE_MESSAGE = "checkpoint contains objects that are not plain tensors/containers (refused for safety)"


def contains_inert(obj: Any) -> bool:
    """Whether ``obj`` (nested dicts, lists, tuples) holds an object the restricted unpickler neutralised."""
    if isinstance(obj, _Inert):
        return True
    if isinstance(obj, dict):
        return any(contains_inert(k) or contains_inert(v) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return any(contains_inert(v) for v in obj)
    return False


def load_error(path: Path, e: BaseException) -> SilkError:
    """One line for a torch file that cannot be loaded: never torch's advice to unpickle it unsafely."""
    if "weights_only" in str(e) or "Unsupported global" in str(e):
        return SilkError(f"cannot read {path}: {UNSAFE_MESSAGE}")
    first = next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)
    return SilkError(f"cannot read checkpoint {path}: the file is corrupt, truncated or not a torch file ({first})")


def check_finite(state: dict[str, torch.Tensor], source: str) -> None:
    """Raise :class:`SilkError` if a floating tensor of ``state`` holds NaN or inf values (such weights give
    no keypoints, silently)."""
    bad = [k for k, v in state.items() if torch.is_floating_point(v) and not bool(torch.isfinite(v).all())]
    if bad:
        raise SilkError(f"weights in {source} contain NaN or inf values ({len(bad)} of {len(state)} tensors, "
                        f"e.g. {bad[:3]})")


def _torch_load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # Lightning files may pickle callback states etc.: rebuild tensors only, replace the rest.
        return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_RestrictedPickle)


def rename_original(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Original SiLK names (``_mods.model.`` prefix optional) -> this package's names. Unknown keys kept as is."""
    out = {}
    for key, value in state.items():
        name = key.removeprefix(ORIGINAL_PREFIX)
        for pattern, repl in _RENAMES:
            new, n = re.subn(pattern, repl, name)
            if n:
                name = new
                break
        out[name] = value
    return out


def _config_from_original(state: dict[str, torch.Tensor]) -> SiLKConfig:
    first = state.get("backbone.stages.0.0.conv.weight")
    if first is None or first.ndim != 4:
        raise SilkError("not a SiLK VGG checkpoint: no first convolution 'backbone._backbone.layers.0.0.0.weight'")
    scale = state.get("descriptor_scale")
    return SiLKConfig(
        in_channels=int(first.shape[1]),
        descriptor_scale=float(scale) if scale is not None and scale.numel() == 1 else 1.41,
    )


def load_weights(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], SiLKConfig]:
    """Read a weight file in any supported format -> (state dict in our names, model config).

    Raises:
        SilkError: missing, empty, truncated or unrecognised file.
    """
    path = check_input_file(path, "checkpoint")
    if path.suffix == ".safetensors":
        return _load_safetensors(path)
    try:
        obj = _torch_load(path)
    except Exception as e:  # noqa: BLE001 -- truncated zip, garbage bytes: any failure means a bad file
        raise load_error(path, e) from None
    if isinstance(obj, _Inert):
        raise SilkError(f"cannot read {path}: {UNSAFE_MESSAGE}")
    if not isinstance(obj, dict):
        raise SilkError(f"cannot read checkpoint {path}: expected a dict, found {type(obj).__name__}")
    if "model" in obj and "config" in obj:  # our training checkpoint: the weight average when it has one
        return _training_weights(path, obj)
    state = obj.get("state_dict", obj)
    if contains_inert(state):
        raise SilkError(f"cannot read {path}: {UNSAFE_MESSAGE}")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise SilkError(f"cannot read checkpoint {path}: no 'state_dict' of tensors in it "
                        f"(keys: {sorted(map(str, obj))[:8]})")
    state = rename_original(state)
    return state, _config_from_original(state)


def _training_weights(path: Path, obj: dict) -> tuple[dict[str, torch.Tensor], SiLKConfig]:
    """Weights (the weight average when there is one) and model config of one of our training checkpoints."""
    parts = {"model": obj["model"], "config": obj["config"], "ema": obj.get("ema")}
    if contains_inert(parts):
        raise SilkError(f"cannot read {path}: {UNSAFE_MESSAGE}")
    config = obj["config"]
    config = config.get("model", config) if isinstance(config, dict) else config
    if not isinstance(config, dict):
        raise SilkError(f"checkpoint {path}: 'config' must be a table of model settings, got {type(config).__name__}")
    try:
        config = SiLKConfig.from_dict(config)
    except SilkError as e:
        raise SilkError(f"checkpoint {path}: {e}") from None
    average = obj.get("ema")
    if average is not None and not (isinstance(average, dict) and isinstance(average.get("weights"), dict)):
        raise SilkError(f"checkpoint {path}: 'ema' (the weight average) has no 'weights' table of tensors")
    state = average["weights"] if average is not None else obj["model"]
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise SilkError(f"checkpoint {path}: its weights are not a table of named tensors")
    return dict(state), config



def read_safetensors(path: str | os.PathLike, fmt: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and string metadata of a ``.safetensors`` file whose metadata says ``format == fmt`` and has a
    ``config`` (no pickle is involved).

    Raises:
        SilkError: unreadable or truncated file, or metadata of another format.
    """
    path = Path(path)
    check_input_file(path, "weight file")
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise SilkError(f"cannot read weight file {path}: corrupt or truncated safetensors file ({e})") from None
    if meta.get("format") != fmt or "config" not in meta:
        raise SilkError(f"weight file {path} is not a {fmt} file (no such config in its metadata)")
    return state, meta


def write_safetensors(state: dict[str, torch.Tensor], path: str | os.PathLike, fmt: str, meta: dict[str, str]) -> Path:
    """Write tensors + string metadata (``format`` set to ``fmt``) as ``.safetensors`` atomically. Returns the path."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    meta = {"format": fmt, **meta}
    return atomic_write(Path(path), lambda tmp: save_file(tensors, str(tmp), metadata=meta))


def _load_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], SiLKConfig]:
    state, meta = read_safetensors(path, _FORMAT)
    try:
        config = SiLKConfig.from_dict(json.loads(meta["config"]))
    except SilkError as e:
        raise SilkError(f"weight file {path}: {e}") from None
    except (json.JSONDecodeError, TypeError) as e:
        raise SilkError(f"weight file {path}: garbled config metadata ({e})") from None
    return state, config


def save_weights(
    state: dict[str, torch.Tensor], config: SiLKConfig, path: str | os.PathLike, info: dict | None = None
) -> Path:
    """Write weights + config as ``.safetensors`` atomically (temp file, then rename). Returns the path."""
    return write_safetensors(state, path, _FORMAT, {"config": config.to_json(), "info": json.dumps(info or {})})


def check_state_dict(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Raise a SilkError naming missing/unexpected keys and shape mismatches between ``state`` and ``model``."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(state))
        if tuple(state[k].shape) != tuple(own[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys (e.g. {missing[:3]})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[:3]})")
    if shapes:
        problems.append(f"{len(shapes)} shape mismatches (e.g. {shapes[:2]})")
    if problems:
        raise SilkError(f"weights in {source} do not fit the model: " + "; ".join(problems))
