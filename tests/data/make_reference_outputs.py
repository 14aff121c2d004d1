"""Write the checkpoints and outputs that later code must reproduce (tests/test_compat.py).

Run once, with the code *before* a change to the model's numerics, and commit what it writes:

    .venv/bin/python -m tests.data.make_reference_outputs

The files in tests/data were written at commit aa22ade (STDHA with one K/V gather, fp32 on
CPU), before the copy-free STDHA. Do not regenerate them to make a test pass: they are the
old code's answers.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from model import ZeroI2VConfig, build_model, merge_adapters, save_merged
from model.detection import detect_actors
from tests.helpers import TINY, randomize_adapters

HERE = Path(__file__).parent

# Per-block layouts that exercise every STDHA path: several Δt groups, non-adjacent heads with
# the same Δt, |Δt| = T - 1 (most frames read their own), and six adapters (own Q/K/V adapters).
CLASSIFY = ZeroI2VConfig(
    backbone=TINY,
    image_size=32,
    num_frames=4,
    num_classes=6,
    temporal_offsets=[[1, -1, 0, 1], [0, 3, -2, -3]],
    num_adapters=6,
    head_dropout=0.0,
)
DETECT = ZeroI2VConfig(
    backbone=TINY,
    image_size=32,
    num_frames=4,
    num_classes=5,
    temporal_offsets=[2, -1, 0, 1],
    task="detect",
    roi_size=3,
    head_dropout=0.0,
)


def _unmerged(cfg: ZeroI2VConfig, seed: int):
    torch.manual_seed(seed)
    model = build_model(cfg).eval()
    randomize_adapters(model, seed=seed)
    with torch.no_grad():  # a non-trivial head and localiser too
        for p in model.head.parameters():
            p.normal_(std=0.2)
    return model


def main() -> None:
    g = torch.Generator().manual_seed(7)
    x = torch.randn(3, 3, 4, 32, 32, generator=g)
    boxes = [torch.tensor([[0.1, 0.1, 0.6, 0.9]]), torch.tensor([[0.3, 0.2, 0.9, 0.8]] * 2)]
    tensors = {"input": x}

    model = _unmerged(CLASSIFY, seed=1)
    # The unmerged model (what a training run holds): forward and adapter gradients.
    x_grad = x.clone().requires_grad_(True)
    logits = model(x_grad)
    (logits * torch.linspace(-1, 1, logits.shape[1])).sum().backward()
    tensors["classify_unmerged_logits"] = logits.detach()
    tensors["classify_unmerged_input_grad"] = x_grad.grad
    unmerged_state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(
        unmerged_state,
        HERE / "classify_unmerged_state.safetensors",
        metadata={"config": CLASSIFY.model_dump_json()},
    )
    merged = merge_adapters(model)
    save_merged(merged, HERE / "classify_merged.safetensors", [f"c{i}" for i in range(6)])
    with torch.no_grad():
        tensors["classify_merged_logits"] = merged(x)

    det = merge_adapters(_unmerged(DETECT, seed=2))
    save_merged(det, HERE / "detect_merged.safetensors", [f"a{i}" for i in range(5)])
    found = detect_actors(det, x[:2], boxes)
    own = detect_actors(det, x[2:], None, threshold=0.0, max_actors=3)
    for i, d in enumerate(found + own):
        tensors[f"detect_{i}_boxes"] = d.boxes
        tensors[f"detect_{i}_box_scores"] = d.box_scores
        tensors[f"detect_{i}_action_probs"] = d.action_probs
    with torch.no_grad():
        tensors["detect_feature_map"] = det.encode(x).key_frame_map()
    save_file(
        {k: v.contiguous() for k, v in tensors.items()},
        HERE / "reference_outputs.safetensors",
        metadata={"boxes": json.dumps([b.tolist() for b in boxes])},
    )


if __name__ == "__main__":
    main()
