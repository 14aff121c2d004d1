"""The image backbone: an open_clip VisionTransformer, built and loaded without network access.

`pretrained` is None (random init), a local checkpoint file (a whole open_clip model or a
visual-only state dict, .safetensors or torch), or an open_clip pretrained tag whose weights are
already in the local cache. Nothing is ever downloaded.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import open_clip
from open_clip.factory import load_state_dict
from open_clip.model import _build_vision_tower, resize_pos_embed
from open_clip.transformer import ResidualAttentionBlock, VisionTransformer

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

# Small open_clip-shaped configs that ship with this package (tests, demos, CPU benchmarks).
open_clip.add_model_config(Path(__file__).parent / "open_clip_configs")


class BackboneError(ValueError):
    """A backbone name, pretrained tag or checkpoint that cannot be used."""


def vision_config(name: str, image_size: int | None = None) -> tuple[dict, bool]:
    """(vision_cfg, quick_gelu) of an open_clip model, with the image size overridden."""
    cfg = open_clip.get_model_config(name)
    if cfg is None:
        vits = [m for m in open_clip.list_models() if m.startswith(("ViT", "zeroi2v"))]
        raise BackboneError(f"unknown open_clip model {name!r}; ViT models: {', '.join(vits)}")
    vision = dict(cfg["vision_cfg"])
    if vision.get("timm_model_name") or isinstance(vision.get("layers"), (list, tuple)):
        raise BackboneError(
            f"{name!r} is not an open_clip VisionTransformer (timm or ResNet tower)"
        )
    if image_size is not None:
        vision["image_size"] = image_size
    return vision, bool(cfg.get("quick_gelu", False))


def create_visual(
    name: str, image_size: int, pretrained: str | None = None, cache_dir: str | None = None
) -> VisionTransformer:
    """The open_clip visual tower `open_clip.create_model(name).visual`, with weights if asked."""
    vision, quick_gelu = vision_config(name, image_size)
    checkpoint = None
    if pretrained is not None:
        checkpoint, tag_quick_gelu = resolve_pretrained(name, pretrained, cache_dir)
        quick_gelu = quick_gelu or tag_quick_gelu
    embed_dim = open_clip.get_model_config(name)["embed_dim"]
    visual = _build_vision_tower(embed_dim, vision, quick_gelu=quick_gelu)
    blocks = visual.transformer.resblocks
    if not all(type(b) is ResidualAttentionBlock for b in blocks):
        raise BackboneError(f"{name!r} uses custom attention blocks, which STDHA does not support")
    if checkpoint is not None:
        load_visual_weights(visual, checkpoint)
    return visual


def resolve_pretrained(name: str, pretrained: str, cache_dir: str | None) -> tuple[Path, bool]:
    """A local file for `pretrained` (a path, or a cached tag), and the tag's QuickGELU flag."""
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


def load_visual_weights(visual: VisionTransformer, path: Path) -> None:
    """Load a whole open_clip checkpoint's visual tower, or a visual-only state dict, strictly."""
    try:
        state = load_state_dict(str(path))
    except Exception as e:  # torch and safetensors raise many types for unreadable files
        raise BackboneError(f"cannot read pretrained checkpoint {path}: {e}") from e
    if not isinstance(state, dict) or not state:
        raise BackboneError(f"{path} does not hold a state dict")
    if any(k.startswith("visual.") for k in state):
        state = {k[len("visual.") :]: v for k, v in state.items() if k.startswith("visual.")}
    if "positional_embedding" in state:
        # open_clip's resizer reads whole-model keys and `model.visual.grid_size`.
        wrapped = {"visual.positional_embedding": state["positional_embedding"]}
        resize_pos_embed(wrapped, SimpleNamespace(visual=visual))
        state["positional_embedding"] = wrapped["visual.positional_embedding"]
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
