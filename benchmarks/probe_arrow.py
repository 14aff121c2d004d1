"""Linear probes on frozen features of the arrow-of-time data: before any training, is the
direction of time linearly readable, and does what is readable carry from the early part of each
video (train) to its later part (test)?

Per clip, pre-trained backbone frozen, adapters at their initial identity:
  zeroi2v_pooled  ZeroI2V's pooled feature (class token, mean over frames), Δt from the config:
                  exactly what its head sees at the start of training
  image_pooled    the same with every Δt = 0: 0.5 on test by construction (a check)
  image_frames    the image model's per-frame class tokens, concatenated in order (T x D): an
                  order-aware linear readout of frozen per-frame features
For each, an L2-regularised logistic regression (L-BFGS on standardised features) is fitted on
train and scored on train and test, with test accuracy per source video.

    python benchmarks/probe_arrow.py --data data/arrow_crop --set model.image_size=112
"""

from __future__ import annotations

import argparse
import json
import re
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn.functional as F
from harness import video_list_overrides

from model import build_model
from training.config import ExperimentConfig, load_config
from training.data import load_annotations, test_loader

ROOT = Path(__file__).resolve().parent.parent


def features(
    models: dict[str, torch.nn.Module], cfg: ExperimentConfig, split: str
) -> tuple[dict[str, torch.Tensor], torch.Tensor, list[str]]:
    """Per model, (N, T, D) per-frame class tokens; (N,) labels; source video names. Each clip
    is decoded once for all models."""
    annotations = load_annotations(cfg, split)
    loader = test_loader(annotations, cfg.view_spec(train=False), cfg.data.num_workers)
    feats: dict[str, list[torch.Tensor]] = {name: [] for name in models}
    labels = []
    for views, y, broken in loader:
        if broken:
            raise RuntimeError(f"unreadable clips: {broken}")
        with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
            for name, model in models.items():
                feats[name].append(model.forward_features(views.flatten(0, 1)).float())
        labels.append(y)
    videos = [re.sub(r"_\d{5}_.*$", "", s.path.name) for s in annotations.samples]
    return {name: torch.cat(f) for name, f in feats.items()}, torch.cat(labels), videos


def frozen_model(cfg: ExperimentConfig) -> torch.nn.Module:
    torch.manual_seed(0)  # adapters start as the identity; the head is unused
    return build_model(cfg.model).eval()


def fit_probe(x: torch.Tensor, y: torch.Tensor, weight_decay: float):
    """Logistic regression on standardised x; returns a function x -> predicted labels."""
    mean, std = x.mean(0), x.std(0) + 1e-6
    z = (x - mean) / std
    w = torch.zeros(x.shape[1], requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=500, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = (
            F.binary_cross_entropy_with_logits(z @ w + b, y.float())
            + weight_decay * w.square().sum()
        )
        loss.backward()
        return loss

    opt.step(closure)
    return lambda v: (((v - mean) / std @ w + b) > 0).long().detach()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "training/configs/arrow_dinov2.yaml")
    parser.add_argument("--data", type=Path, default=Path("data/arrow"))
    parser.add_argument("--weight-decay", type=float, default=1e-3)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    overrides = [*video_list_overrides(args.data), *args.overrides]
    cfg = load_config(args.config, overrides)
    heads = len(cfg.model.temporal_offsets)
    image_cfg = load_config(args.config, [*overrides, f"model.temporal_offsets={[0] * heads}"])
    models = {"zeroi2v": frozen_model(cfg), "image": frozen_model(image_cfg)}
    splits = {s: features(models, cfg, s) for s in ("train", "test")}
    sets = {
        "zeroi2v_pooled": lambda feats: feats["zeroi2v"].mean(1),
        "image_pooled": lambda feats: feats["image"].mean(1),
        "image_frames": lambda feats: feats["image"].flatten(1),
    }
    results = {
        "command": "python benchmarks/probe_arrow.py --data "
        f"{args.data} " + " ".join(f"--set {o}" for o in args.overrides),
        "temporal_offsets": cfg.model.temporal_offsets,
        "image_size": cfg.model.image_size,
        "clips": {s: len(splits[s][1]) for s in splits},
    }
    for name, select in sets.items():
        (xtr, ytr), (xte, yte) = ((select(splits[s][0]), splits[s][1]) for s in ("train", "test"))
        predict = fit_probe(xtr, ytr, args.weight_decay)
        right = predict(xte) == yte
        per_video = defaultdict(list)
        for video, ok in zip(splits["test"][2], right.tolist(), strict=True):
            per_video[video].append(ok)
        results[name] = {
            "train_accuracy": round((predict(xtr) == ytr).float().mean().item(), 3),
            "test_accuracy": round(right.float().mean().item(), 3),
            "test_accuracy_per_video": {
                v: [round(sum(oks) / len(oks), 3), len(oks)] for v, oks in per_video.items()
            },
        }
        print(name, json.dumps(results[name]), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
