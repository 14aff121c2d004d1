"""The demo model `zeroi2v serve` uses when no model is given: trained here, once, then cached.

Synthetic order-only data (training/synth.py) -> a training run of the pre-trained
DINOv2 ViT-S/14 recipe (training/configs/synth_dinov2.yaml, the one benchmarked) -> merge ->
a merged checkpoint in the cache folder. The cache key hashes the config, the overrides and the
data settings, so a changed recipe builds a new model. A randomly initialised backbone stays at
chance on this task within CPU minutes (benchmarks/README.md), hence the pre-trained one.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

from training.config import load_config
from training.export import export_merged
from training.synth import write_synthetic_dataset
from training.train import train

CONFIG = Path(__file__).parent / "configs" / "synth_dinov2.yaml"
# Evaluate once, at the end: the recipe's periodic evaluations only cost build time here.
OVERRIDES = ["train.eval_every_epochs=0"]
DATA = {"num_videos_per_class": 200, "clutter": 0.25, "seed": 0}


def cache_dir() -> Path:
    root = os.environ.get("ZEROI2V_CACHE") or Path.home() / ".cache" / "zeroi2v"
    return Path(root)


def demo_model(cache: Path | None = None) -> Path:
    """Path of the demo model, building it first if it is not cached yet."""
    cache = cache or cache_dir()
    recipe = CONFIG.read_bytes() + repr(OVERRIDES).encode() + repr(sorted(DATA.items())).encode()
    key = hashlib.sha256(recipe).hexdigest()
    path = cache / f"demo-{key[:12]}.safetensors"
    if path.exists():
        return path
    work = cache / f"demo-{key[:12]}-build"
    data = work / "data"
    print(
        f"building the demo model in {work} (once; about 20 minutes on 2 CPU cores)",
        file=sys.stderr,
    )
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
    summary = train(cfg, resume=True)  # an interrupted build continues where it stopped
    export_merged(work / "run" / "last.pt", path)
    top1 = summary.get("top1")
    print(f"demo model ready: {path} (val top-1 {top1})", file=sys.stderr)
    return path
