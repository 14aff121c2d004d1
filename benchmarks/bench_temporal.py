"""The proof that the temporal modelling is real: ZeroI2V vs the same model with every offset 0.

Two datasets whose classes come in pairs of clips holding the same frames in opposite order:
  synth: the synthetic order-only dataset (`zeroi2v synth`): moving shapes, 8 classes;
  arrow: real footage that packages ship (video/packaged.py), forward vs time-reversed
         (training/synthetic/arrow_of_time.py).
Arms train with identical adapters, data, seed and budget; `image_model` differs from
`zeroi2v` only in `model.temporal_offsets` (all 0), `random_init` only in `model.pretrained`
(none). Then, per arm:
  - top-1 on the held-out test split, and within-pair accuracy (chance 0.5 for an order-blind
    model),
  - the merged checkpoint's predictions against the unmerged model's on every test clip,
  - training time and clips/s on this machine.

    python benchmarks/bench_temporal.py                  # synth, writes data/synth if missing
    python benchmarks/bench_temporal.py --dataset arrow  # writes data/arrow if missing
    python benchmarks/bench_temporal.py --set train.epochs=4 --json out.json
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch
from harness import train_arm, video_list_overrides

from model import load_merged
from model.classification import video_probabilities
from training.config import load_config
from training.data import load_annotations, test_loader
from training.synthetic.arrow_of_time import CLASS_NAMES as ARROW_CLASSES
from training.synthetic.arrow_of_time import write_arrow_dataset
from training.synthetic.shapes import CLASS_PAIRS, write_synthetic_dataset
from video.packaged import CLIPS, available_clips

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


def pair_accuracy(pred: torch.Tensor, labels: torch.Tensor, class_names: list[str], pairs) -> float:
    """Among test clips predicted inside their true pair, the fraction given the right member:
    telling a clip from its time reversal (chance 0.5 for any order-blind model)."""
    index = {n: i for i, n in enumerate(class_names)}
    partner = {}
    for a, b in pairs:
        partner[index[a]], partner[index[b]] = index[b], index[a]
    in_pair = [(int(p), int(y)) for p, y in zip(pred, labels, strict=True)
               if int(p) in (int(y), partner[int(y)])]  # fmt: skip
    return sum(p == y for p, y in in_pair) / max(1, len(in_pair))


def run_arm(name: str, config: Path, overrides: list[str], out_root: Path, pairs) -> dict:
    arm = train_arm(name, config, overrides, out_root)
    cfg, class_names = arm.cfg, arm.class_names
    (probs, merged_probs), labels = test_predictions(
        [arm.model, load_merged(arm.merged_path)], cfg, class_names
    )
    pred = probs.argmax(-1)
    return {
        "temporal_offsets": cfg.model.temporal_offsets,
        "pretrained": cfg.model.pretrained,
        "test_videos": len(labels),
        "test_top1": round(float((pred == labels).float().mean()), 4),
        "test_pair_accuracy": round(pair_accuracy(pred, labels, class_names, pairs), 4),
        "merged_same_predictions": int((merged_probs.argmax(-1) == pred).sum()),
        "merged_max_prob_diff": float((merged_probs - probs).abs().max()),
        **arm.timing(),
    }


DATASETS = {
    "synth": (ROOT / "training/configs/synth.yaml", CLASS_PAIRS),
    "arrow": (ROOT / "training/configs/arrow_dinov2.yaml", [tuple(ARROW_CLASSES)]),
}


def write_dataset(name: str, out: Path, args) -> None:
    print(f"writing the {name} dataset to {out}", flush=True)
    if name == "synth":
        write_synthetic_dataset(
            out, num_videos_per_class=args.videos_per_class, seed=0, clutter=args.clutter
        )
    else:
        clips = available_clips()
        missing = sorted(set(CLIPS) - set(clips))
        if missing:
            raise SystemExit(f"packaged clips missing: {missing}; run `make test-deps`")
        write_arrow_dataset(clips, out, target_fps=args.fps, size=args.size, crop=args.crop)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="synth")
    parser.add_argument("--config", type=Path, default=None, help="default: per dataset")
    parser.add_argument("--data", type=Path, default=None, help="default: data/<dataset>")
    parser.add_argument("--videos-per-class", type=int, default=200, help="synth only")
    parser.add_argument("--fps", type=float, default=8.0, help="arrow only: sampled frame rate")
    parser.add_argument("--size", type=int, default=128, help="arrow only: short side, px")
    parser.add_argument("--crop", type=int, default=None, help="arrow only: motion windows, px")
    parser.add_argument("--clutter", type=float, default=0.25, help="synth only")
    parser.add_argument("--arms", default="zeroi2v,image_model", help="also: random_init")
    parser.add_argument("--out", type=Path, default=None, help="default: runs/bench_<dataset>")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    config, pairs = DATASETS[args.dataset]
    config = args.config or config
    data_dir = args.data or Path("data") / args.dataset
    out = args.out or Path("runs") / f"bench_{args.dataset}"

    if not (data_dir / "classes.txt").exists():
        write_dataset(args.dataset, data_dir, args)
    overrides = [*video_list_overrides(data_dir), *args.overrides]
    cfg = load_config(config, overrides)
    heads = len(cfg.model.temporal_offsets)
    arms = {
        "zeroi2v": [],
        "image_model": [f"model.temporal_offsets={[0] * heads}"],
        "random_init": ["model.pretrained=null"],
    }
    results = {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} "
        f"threads, torch {torch.__version__}",
        "command": f"python benchmarks/bench_temporal.py --dataset {args.dataset} "
        f"--arms {args.arms} " + " ".join(f"--set {o}" for o in args.overrides),
    }
    for arm in args.arms.split(","):
        results[arm] = run_arm(arm, config, [*overrides, *arms[arm]], out, pairs)
        print(json.dumps({arm: results[arm]}, indent=1), flush=True)
    print(json.dumps(results, indent=1))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
