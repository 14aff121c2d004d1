"""The proof that the temporal modelling is real: ZeroI2V vs the same model with every offset 0.

On the synthetic order-only dataset (`zeroi2v synth`), classes come in pairs whose clips hold
the same frames in opposite order. Both arms train with identical adapters, data, seed and
budget (training/configs/synth.yaml); the only difference is `model.temporal_offsets`. Then:
  - multi-view top-1 on the held-out test split, for both arms,
  - the merged checkpoint's predictions against the unmerged model's on every test clip,
  - training time and clips/s on this machine.

    python benchmarks/bench_temporal.py                 # writes data/synth if missing
    python benchmarks/bench_temporal.py --set train.epochs=4 --json out.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from model import load_merged
from model.zeroi2v import video_probabilities
from training import checkpoint as ckpt_io
from training.config import load_config
from training.data import load_annotations, test_loader
from training.export import export_merged
from training.synth import write_synthetic_dataset
from training.train import train

ROOT = Path(__file__).resolve().parent.parent


def test_predictions(models: list, cfg, class_names) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Per model, (N, C) probabilities over the test split (all views, file order); labels.

    Each video is decoded once and every model sees the same views."""
    annotations = load_annotations(cfg, "test", class_names=class_names)
    loader = test_loader(annotations, cfg.view_spec(train=False), cfg.data.num_workers)
    probs: list[list[torch.Tensor]] = [[] for _ in models]
    labels = []
    for views, y, broken in loader:
        if broken:
            raise RuntimeError(f"unreadable test videos: {broken}")
        for out, model in zip(probs, models, strict=True):
            out.append(video_probabilities(model, views))
        labels.append(y)
    return [torch.cat(p) for p in probs], torch.cat(labels)


def pair_accuracy(pred: torch.Tensor, labels: torch.Tensor, class_names: list[str]) -> float:
    """Among test clips predicted inside their true pair, the fraction given the right member:
    telling a clip from its time reversal (chance 0.5 for any order-blind model)."""
    from training.synth import CLASS_PAIRS

    index = {n: i for i, n in enumerate(class_names)}
    partner = {}
    for a, b in CLASS_PAIRS:
        partner[index[a]], partner[index[b]] = index[b], index[a]
    in_pair = [(int(p), int(y)) for p, y in zip(pred, labels, strict=True)
               if int(p) in (int(y), partner[int(y)])]  # fmt: skip
    return sum(p == y for p, y in in_pair) / max(1, len(in_pair))


def run_arm(name: str, config: Path, overrides: list[str], out_root: Path) -> dict:
    cfg = load_config(config, [*overrides, f"train.out_dir={out_root / name}"])
    start = time.perf_counter()
    train(cfg)
    seconds = time.perf_counter() - start
    log = [json.loads(x) for x in (out_root / name / "log.jsonl").read_text().splitlines()]
    rates = [r["clips_per_s"] for r in log if "clips_per_s" in r]
    last = out_root / name / "last.pt"
    model, class_names, _ = ckpt_io.rebuild_model(ckpt_io.load(last))
    merged_path, fold_error = export_merged(last, out_root / f"{name}.safetensors")
    (probs, merged_probs), labels = test_predictions(
        [model, load_merged(merged_path)], cfg, class_names
    )
    pred = probs.argmax(-1)
    return {
        "temporal_offsets": cfg.model.temporal_offsets,
        "test_videos": len(labels),
        "test_top1": round(float((pred == labels).float().mean()), 4),
        "test_pair_accuracy": round(pair_accuracy(pred, labels, class_names), 4),
        "merged_same_predictions": int((merged_probs.argmax(-1) == pred).sum()),
        "merged_max_prob_diff": float((merged_probs - probs).abs().max()),
        "fold_check_max_logit_diff": fold_error,
        "train_seconds": round(seconds, 1),
        "train_clips_per_s_median": round(sorted(rates)[len(rates) // 2], 1) if rates else None,
        "epochs": cfg.train.epochs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "training/configs/synth.yaml")
    parser.add_argument("--data", type=Path, default=Path("data/synth"))
    parser.add_argument("--videos-per-class", type=int, default=200)
    parser.add_argument("--clutter", type=float, default=0.25)
    parser.add_argument("--out", type=Path, default=Path("runs/bench_temporal"))
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    if not (args.data / "classes.txt").exists():
        print(f"writing the synthetic dataset to {args.data}", flush=True)
        write_synthetic_dataset(
            args.data, num_videos_per_class=args.videos_per_class, seed=0, clutter=args.clutter
        )
    data = [
        f"data.root={args.data}",
        f"data.train={args.data / 'train.txt'}",
        f"data.val={args.data / 'val.txt'}",
        f"data.test={args.data / 'test.txt'}",
        f"data.class_names={args.data / 'classes.txt'}",
    ]
    overrides = [*data, *args.overrides]
    cfg = load_config(args.config, overrides)
    heads = len(cfg.model.temporal_offsets)
    results = {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} "
        f"threads, torch {torch.__version__}",
        "command": "python benchmarks/bench_temporal.py "
        + " ".join(f"--set {o}" for o in args.overrides),
        "zeroi2v": run_arm("zeroi2v", args.config, overrides, args.out),
        "image_model": run_arm(
            "image_model",
            args.config,
            [*overrides, f"model.temporal_offsets={[0] * heads}"],
            args.out,
        ),  # fmt: skip
    }
    print(json.dumps(results, indent=1))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
