"""The merged checkpoint: one .safetensors file, zero new parameters.

Tensors: `backbone.<key>` with `<key>` exactly a key of
`open_clip.create_model(backbone).visual.state_dict()` (they load strictly into a plain open_clip
visual tower), `head.<key>` for the classifier, and `temporal_embedding` only when the optional,
not zero-cost temporal embedding was enabled. Metadata (strings): format, format_version, the
JSON config, JSON class names and JSON preprocessing (frames, size, mean/std, views).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from pydantic import ValidationError
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from model.adapters import adapters_of
from model.backbone import normalization
from model.config import ZeroI2VConfig
from model.zeroi2v import ZeroI2V, build_model

FORMAT = "zeroi2v.merged"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A file that is not a usable zeroi2v merged checkpoint; the message names the problem."""


@dataclass(frozen=True)
class CheckpointInfo:
    config: ZeroI2VConfig
    class_names: list[str]
    preprocess: dict = field(default_factory=dict)
    format_version: int = FORMAT_VERSION


def default_preprocess(cfg: ZeroI2VConfig) -> dict:
    mean, std = normalization(cfg.backbone)
    return {
        "num_frames": cfg.num_frames,
        "image_size": cfg.image_size,
        "mean": list(mean),
        "std": list(std),
        "temporal_clips": 1,
        "spatial_crops": 1,
    }


def save_merged(
    model: ZeroI2V,
    path: str | os.PathLike,
    class_names: list[str] | None = None,
    preprocess: dict | None = None,
) -> Path:
    """Write a merged model atomically (temp file + rename). Unmerged models are refused."""
    if adapters_of(model):
        raise ValueError("model still has adapters: save merge_adapters(model), not the model")
    cfg = model.cfg
    names = (
        list(class_names) if class_names is not None else [str(i) for i in range(cfg.num_classes)]
    )
    if len(names) != cfg.num_classes:
        raise ValueError(f"{len(names)} class names for {cfg.num_classes} classes")
    tensors = {f"backbone.{k}": v for k, v in model.backbone.state_dict().items()}
    tensors.update({f"head.{k}": v for k, v in model.head.state_dict().items()})
    if model.temporal_embedding is not None:
        tensors["temporal_embedding"] = model.temporal_embedding.detach()
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    metadata = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "config": cfg.model_dump_json(),
        "class_names": json.dumps(names),
        "preprocess": json.dumps({**default_preprocess(cfg), **(preprocess or {})}),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a model file is for sharing
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def read_info(path: str | os.PathLike) -> CheckpointInfo:
    """Validate the file's header and metadata without loading tensors."""
    path = Path(path)
    with _open(path) as f:
        meta = f.metadata() or {}
    return _info(path, meta)


def load_merged(path: str | os.PathLike, device: str | torch.device = "cpu") -> ZeroI2V:
    """Rebuild the merged video model from a checkpoint, in eval mode on `device`."""
    path = Path(path)
    with _open(path) as f:
        info = _info(path, f.metadata() or {})
        try:
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no iter)
        except (SafetensorError, OSError) as e:
            raise CheckpointError(f"{path}: tensor data unreadable (truncated?): {e}") from e
    cfg = info.config.model_copy(update={"pretrained": None, "num_adapters": 0})
    model = build_model(cfg)
    groups = {"backbone.": model.backbone, "head.": model.head}
    for prefix, module in groups.items():
        part = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        try:
            module.load_state_dict(part, strict=True)
        except RuntimeError as e:
            raise CheckpointError(
                f"{path}: {prefix[:-1]} tensors do not match {cfg.backbone} "
                f"(wrong architecture?): {_first_lines(e)}"
            ) from e
    if model.temporal_embedding is not None:
        if "temporal_embedding" not in tensors:
            raise CheckpointError(f"{path}: config enables temporal_embedding but it is missing")
        model.temporal_embedding.data.copy_(tensors["temporal_embedding"])
    unknown = [k for k in tensors if not k.startswith(tuple(groups)) and k != "temporal_embedding"]
    if unknown:
        raise CheckpointError(f"{path}: unexpected tensors {unknown[:5]}")
    for p in model.parameters():
        p.requires_grad = False
    return model.to(device).eval()


def _open(path: Path):
    if not path.exists():
        raise CheckpointError(f"{path}: no such file")
    if not path.is_file():
        raise CheckpointError(f"{path}: not a regular file")
    try:
        return safe_open(str(path), framework="pt", device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(
            f"{path}: not a readable safetensors file (truncated or another format): {e}"
        ) from e


def _info(path: Path, meta: dict[str, str]) -> CheckpointInfo:
    if meta.get("format") != FORMAT:
        raise CheckpointError(
            f"{path}: not a zeroi2v merged checkpoint (metadata format is "
            f"{meta.get('format')!r}, expected {FORMAT!r})"
        )
    try:
        version = int(meta.get("format_version", ""))
    except ValueError:
        raise CheckpointError(
            f"{path}: bad format_version {meta.get('format_version')!r}"
        ) from None
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: format version {version} is newer than this zeroi2v ({FORMAT_VERSION})"
        )
    try:
        config = ZeroI2VConfig.model_validate_json(meta.get("config", ""))
        class_names = json.loads(meta.get("class_names", "null"))
        preprocess = json.loads(meta.get("preprocess", "{}"))
    except (ValidationError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: invalid metadata: {_first_lines(e)}") from e
    if not isinstance(class_names, list) or len(class_names) != config.num_classes:
        raise CheckpointError(f"{path}: class_names does not list {config.num_classes} classes")
    return CheckpointInfo(config, [str(c) for c in class_names], preprocess, version)


def _first_lines(e: Exception, n: int = 4) -> str:
    return " ".join(str(e).splitlines()[:n])
