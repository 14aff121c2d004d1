"""What the benchmark scripts share: a data set's config overrides, and training one arm then
exporting its merged checkpoint (with timing and throughput from the run's log)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from training import checkpoint as ckpt_io
from training.config import ExperimentConfig, load_config
from training.export import export_merged
from training.train import train


def video_list_overrides(data_dir: Path) -> list[str]:
    """Point a video-list config at `data_dir` (train.txt, test.txt, classes.txt; val.txt if
    present, else the test split)."""
    val = data_dir / ("val.txt" if (data_dir / "val.txt").exists() else "test.txt")
    return [
        f"data.root={data_dir}",
        f"data.train={data_dir / 'train.txt'}",
        f"data.val={val}",
        f"data.test={data_dir / 'test.txt'}",
        f"data.class_names={data_dir / 'classes.txt'}",
    ]


@dataclass
class TrainedArm:
    cfg: ExperimentConfig
    model: torch.nn.Module  # the trained model, adapters unmerged
    class_names: list[str]
    merged_path: Path
    fold_error: float  # export's own merged-vs-unmerged logit check
    seconds: float
    clips_per_s_median: float | None

    def timing(self) -> dict:
        return {
            "fold_check_max_logit_diff": self.fold_error,
            "train_seconds": round(self.seconds, 1),
            "train_clips_per_s_median": self.clips_per_s_median,
            "epochs": self.cfg.train.epochs,
        }


def train_arm(name: str, config: Path, overrides: list[str], out_root: Path) -> TrainedArm:
    """Train `config` + `overrides` into out_root/name, export out_root/name.safetensors."""
    cfg = load_config(config, [*overrides, f"train.out_dir={out_root / name}"])
    start = time.perf_counter()
    train(cfg)
    seconds = time.perf_counter() - start
    log = [json.loads(x) for x in (out_root / name / "log.jsonl").read_text().splitlines()]
    rates = sorted(r["clips_per_s"] for r in log if "clips_per_s" in r)
    last = out_root / name / "last.pt"
    model, class_names, _ = ckpt_io.rebuild_model(ckpt_io.load(last))
    merged_path, fold_error = export_merged(last, out_root / f"{name}.safetensors")
    median = round(rates[len(rates) // 2], 1) if rates else None
    return TrainedArm(cfg, model, class_names, merged_path, fold_error, seconds, median)
