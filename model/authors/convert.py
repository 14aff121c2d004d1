"""The authors' checkpoints as this project's models: their tensors under our names, adapters
folded, written as a merged checkpoint whose outputs are theirs.

Their state dict (mmengine): `backbone.*` is the CLIP tower without `proj` plus, per block, the
adapters `T_Adapter_in` (or `T_Adapter_in_q/_k/_v`), `S_Adapter`, `MLP_Adapter` and
`MLP_Adapter_out`, each `D_fc1` (down) and `D_fc2` (up), and `temporal_embedding` (1, T, D);
`cls_head.fc_cls.*` is the classifier. A checkpoint merged by their tools/weight_reparam.py has
no adapters. Every tensor must be there with its shape, and nothing else: a checkpoint of another
model is refused by name, not half-loaded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch

from model.adapters import adapters_of
from model.authors.config import (
    AuthorsConfig,
    AuthorsConfigError,
    backbone_class,
    class_names,
    preprocess_of,
    zeroi2v_config,
)
from model.backbone import (
    BackboneError,
    PretrainedWeights,
    read_pretrained,
    resize_positional_embedding,
)
from model.checkpoint import CheckpointError, check_tensors, save_adapters, save_merged
from model.merge import merge_adapters
from model.safe_pickle import load_checkpoint
from model.tasks import build_model
from model.zeroi2v import ZeroI2V

_ADAPTERS = {
    "T_Adapter_in": "attn.adapter_in",
    "T_Adapter_in_q": "attn.adapter_q",
    "T_Adapter_in_k": "attn.adapter_k",
    "T_Adapter_in_v": "attn.adapter_v",
    "S_Adapter": "attn.adapter_out",
    "MLP_Adapter": "mlp.adapter_in",
    "MLP_Adapter_out": "mlp.adapter_out",
}
_ADAPTER_KEY = re.compile(r"transformer\.resblocks\.(\d+)\.(\w+)\.D_fc([12])\.(weight|bias)")
# Their backbone deletes CLIP's projection; the video model never uses it, and a merged file
# keeps the open_clip tower's keys, so it is written as zeros (nothing to project with).
_UNUSED = "backbone.proj"


@dataclass(frozen=True)
class Imported:
    loaded: ZeroI2V  # their tensors in our model, eval mode: with their adapters, or without
    # when their reparam tool merged the checkpoint already
    class_names: list[str]
    preprocess: dict

    @cached_property
    def merged(self) -> ZeroI2V:
        """The merged video model: the open_clip tower's tensors with the adapters folded in."""
        model = merge_adapters(self.loaded) if adapters_of(self.loaded) else self.loaded
        for p in model.parameters():
            p.requires_grad = False
        return model.eval()


def our_name(key: str) -> str | None:
    """Our state-dict name of one of their keys (None: not a tensor of their model)."""
    if key.startswith("cls_head.fc_cls."):
        return "head.fc." + key.removeprefix("cls_head.fc_cls.")
    if not key.startswith("backbone."):
        return None
    key = key.removeprefix("backbone.")
    if key == "temporal_embedding":
        return key
    m = _ADAPTER_KEY.fullmatch(key)
    if m and m.group(2) in _ADAPTERS:
        block, adapter, fc, kind = m.groups()
        linear = "down" if fc == "1" else "up"
        return f"backbone.transformer.resblocks.{block}.{_ADAPTERS[adapter]}.{linear}.{kind}"
    return "backbone." + key


def authors_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of an authors' checkpoint, read without running anything in the file."""
    ckpt = load_checkpoint(path)
    state = ckpt.get("state_dict", ckpt)
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: `state_dict` is a {type(state).__name__}, not a dict")
    if not all(isinstance(k, str) for k in state):
        raise CheckpointError(f"{path}: state_dict has keys that are not strings")
    other = sorted(str(k) for k, v in state.items() if not isinstance(v, torch.Tensor))
    if other:
        raise CheckpointError(f"{path}: state_dict entries that are not tensors: {other[:5]}")
    if "backbone.class_embedding" not in state or "cls_head.fc_cls.weight" not in state:
        keys = sorted(state)[:4]
        raise CheckpointError(
            f"{path}: not a ZeroI2V CLIP checkpoint: no backbone.class_embedding and "
            f"cls_head.fc_cls.weight (its first keys: {keys}; another mmaction2 model?)"
        )
    return state


def import_model(
    checkpoint: str | Path, cfg: AuthorsConfig, labels: str | Path | None = None
) -> Imported:
    """An authors' checkpoint and config as our model (merged on demand: `.merged`), with its
    class names and test protocol. Raises CheckpointError or AuthorsConfigError, naming the
    problem."""
    state = authors_state(checkpoint)
    has_adapters = any(".D_fc" in k for k in state)
    if backbone_class(cfg) == "ViT_Zero_CLIP_eval" and has_adapters:
        raise CheckpointError(
            f"{checkpoint}: has adapter tensors, but {cfg.source} is their merged model "
            f"(ViT_Zero_CLIP_eval): give the training config"
        )
    zcfg = zeroi2v_config(cfg, adapters=has_adapters)
    preprocess = preprocess_of(cfg)
    names = class_names(cfg, zcfg.num_classes, Path(labels) if labels is not None else None)
    model = build_model(zcfg, quick_gelu=True)  # their blocks use QuickGELU, whatever the size
    ours = model.state_dict()
    expected = {k for k in ours if k != _UNUSED}
    mapped: dict[str, torch.Tensor] = {}  # under our names; the rest under theirs, unexpected
    for key, value in state.items():
        name = our_name(key)
        if name not in expected or name in mapped:  # none of ours, or one already taken
            name = key if key not in expected else f"{key} (as the file names it)"
        elif name == "temporal_embedding" and value.ndim == 3 and value.shape[0] == 1:
            value = value[0]  # theirs is (1, T, D)
        mapped[name] = value
    what = f"{cfg.source} ({zcfg.backbone}, {'adapters' if has_adapters else 'merged'})"
    check_tensors(checkpoint, mapped, {k: ours[k] for k in expected}, what)
    mapped[_UNUSED] = torch.zeros_like(ours[_UNUSED])
    with torch.no_grad():
        model.load_state_dict({k: v.float() for k, v in mapped.items()}, strict=True)
    return Imported(model.eval(), names, preprocess)


def with_base(imported: Imported, base: PretrainedWeights) -> ZeroI2V:
    """The unmerged model over `base`, the CLIP weights it was trained from, for an adapter
    file: every tensor their training froze must equal the base's (their training also tuned
    ln_post, which the adapter file carries)."""
    model = imported.loaded
    if not adapters_of(model):
        raise CheckpointError(
            "the checkpoint is merged already (no adapters): there is no adapter file to write"
        )
    grid = model.backbone.grid_size
    trained = {n.removeprefix("backbone.") for n, p in model.named_parameters() if p.requires_grad}
    for key, mine in model.backbone.state_dict().items():
        if key in trained or key == "proj" or ".adapter_" in key:
            continue
        theirs = base.state.get(key)
        if theirs is not None and key == "positional_embedding":
            theirs = resize_positional_embedding(theirs, grid)
        if theirs is None or theirs.shape != mine.shape or not torch.equal(theirs.float(), mine):
            raise CheckpointError(
                f"base {base.source!r} is not the backbone this checkpoint was trained from: "
                f"its {key} differs (or is missing); name the CLIP weights it was trained from "
                f"with --base"
            )
    if "proj" in base.state:
        model.backbone.proj.data.copy_(base.state["proj"])
    return model


def import_checkpoint(
    checkpoint: str | Path,
    cfg: AuthorsConfig,
    out: str | Path,
    labels: str | Path | None = None,
    adapters: str | Path | None = None,
    base: str = "openai",
) -> Imported:
    """Import and write the merged checkpoint `out` and, with `adapters`, the adapter file over
    the CLIP weights `base` names (a file or a cached open_clip tag; their training started from
    OpenAI's). Everything is checked before anything is written, and each file is written
    atomically."""
    imported = import_model(checkpoint, cfg, labels)
    merged, unmerged = imported.merged, None
    if adapters is not None:
        try:
            weights = read_pretrained(merged.cfg.backbone, base)
        except BackboneError as e:
            raise CheckpointError(f"--base {base!r}: {e}") from None
        unmerged = with_base(imported, weights)
    for path in (out, adapters):
        if path is not None and Path(path).is_dir():
            raise CheckpointError(f"{path}: a directory; give the file to write")
    save_merged(merged, out, imported.class_names, imported.preprocess)
    if unmerged is not None:
        try:
            save_adapters(unmerged, adapters, weights, imported.class_names, imported.preprocess)
        except BaseException:
            Path(out).unlink(missing_ok=True)  # both files or neither
            raise
    return imported


__all__ = ["AuthorsConfigError", "Imported", "authors_state", "import_checkpoint", "import_model"]
