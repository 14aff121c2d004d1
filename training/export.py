"""From a training checkpoint to the merged checkpoint the service loads.

The adapters are folded into the frozen weights (model.merge_adapters); the file carries the
class names and the preprocessing (frames, sampling, size, mean/std, views) the model was
evaluated with, so a server needs nothing but this one file.
"""

from __future__ import annotations

from pathlib import Path

import torch

from model import merge_adapters, save_merged
from training import checkpoint as ckpt_io


@torch.no_grad()
def export_merged(train_checkpoint: str | Path, out: str | Path) -> tuple[Path, float]:
    """Write the merged model; returns its path and the max |logit difference| merged vs not.

    The difference is measured on one random clip in float32, a cheap guard that the fold
    was exact for this very model (it must stay within float rounding).
    """
    ckpt = ckpt_io.load(train_checkpoint)
    model, class_names, _ = ckpt_io.rebuild_model(ckpt)
    merged = merge_adapters(model)
    cfg = model.cfg
    x = torch.randn(1, 3, cfg.num_frames, cfg.image_size, cfg.image_size)
    if cfg.task == "detect":  # compare action logits of one box and the localiser's maps
        boxes = [torch.tensor([[0.2, 0.1, 0.8, 0.9]])]
        reference, merged_out = (
            torch.cat([o.flatten() for o in model(x, boxes)]),
            torch.cat([o.flatten() for o in merged(x, boxes)]),
        )
    else:
        reference, merged_out = model(x), merged(x)
    diff = (merged_out - reference).abs().max().item()
    scale = reference.abs().max().item()
    if diff > 1e-4 * max(1.0, scale):
        raise RuntimeError(f"merged model differs from the trained one by {diff:.2e}")
    path = save_merged(merged, out, class_names=class_names, preprocess=ckpt["preprocess"])
    return path, diff
