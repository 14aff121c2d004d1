"""From a training run to the files a server loads.

- `export_merged`: the adapters folded into the frozen weights (model.merge_adapters), from a
  training checkpoint or from an adapter checkpoint plus its base. The file carries the class
  names and the preprocessing (frames, sampling, size, mean/std, views) the model was evaluated
  with, so a server needs nothing but this one file.
- `export_adapters`: the trained tensors alone over the run's pre-trained base (a few MB instead
  of the whole backbone); a server merges them onto the base at start.
"""

from __future__ import annotations

from pathlib import Path

import torch

from model import merge_adapters, save_merged
from model.checkpoint import load_adapters, read_info, save_adapters
from model.zeroi2v import ZeroI2V
from training import checkpoint as ckpt_io


class ExportError(ValueError):
    pass


def load_trained(source: str | Path, base: str | None = None) -> tuple[ZeroI2V, list[str], dict]:
    """The unmerged model, its class names and its preprocessing, from a training checkpoint
    (.pt) or an adapter checkpoint (.safetensors, merged onto `base` or the base it names)."""
    if is_safetensors(source):
        info = read_info(source)
        return load_adapters(source, base), info.class_names, info.preprocess
    if base is not None:
        raise ExportError(f"{source}: a training checkpoint names its own base; drop --base")
    ckpt = ckpt_io.load(source)
    model, class_names, _ = ckpt_io.rebuild_model(ckpt)
    return model, class_names, ckpt["preprocess"]


def is_safetensors(path: str | Path) -> bool:
    """By the content, not the name: a safetensors file opens with an 8-byte header length and
    its JSON header; a torch checkpoint is a zip file."""
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError:
        return Path(path).suffix == ".safetensors"  # let the loader name the problem
    return len(head) == 9 and head[8:9] == b"{"


@torch.no_grad()
def export_merged(
    source: str | Path, out: str | Path, base: str | None = None
) -> tuple[Path, float]:
    """Write the merged model; returns its path and the max |logit difference| merged vs not.

    The difference is measured on one random clip in float32, a cheap guard that the fold
    was exact for this very model (it must stay within float rounding).
    """
    model, class_names, preprocess = load_trained(source, base)
    merged = merge_adapters(model)
    cfg = model.cfg
    x = torch.randn(1, 3, cfg.num_frames, cfg.image_size, cfg.image_size)
    extra = model.head.example_inputs(1, x.device)  # a detection head's actor box
    reference, merged_out = (flat_outputs(m(x, *extra)) for m in (model, merged))
    diff = (merged_out - reference).abs().max().item()
    scale = reference.abs().max().item()
    if diff > 1e-4 * max(1.0, scale):
        raise RuntimeError(f"merged model differs from the trained one by {diff:.2e}")
    path = save_merged(merged, out, class_names=class_names, preprocess=preprocess)
    return path, diff


def flat_outputs(out: torch.Tensor | tuple[torch.Tensor, ...]) -> torch.Tensor:
    """A head's output, one tensor or several (detection: action logits and box maps), as one
    flat tensor to compare."""
    return torch.cat([o.flatten() for o in (out if isinstance(out, tuple) else (out,))])


def export_adapters(train_checkpoint: str | Path, out: str | Path, storage: str = "fp32") -> Path:
    """Write the run's adapter checkpoint over the pre-trained backbone it was built on."""
    ckpt = ckpt_io.load(train_checkpoint)
    base = ckpt_io.base_weights(ckpt)
    if base is None:
        raise ExportError(
            f"{train_checkpoint}: the backbone was randomly initialised, so there is no base to "
            f"merge adapters onto; write a merged checkpoint instead (zeroi2v merge)"
        )
    model, class_names, _ = ckpt_io.rebuild_model(ckpt, base)
    return save_adapters(
        model, out, base, class_names=class_names, preprocess=ckpt["preprocess"], storage=storage
    )
