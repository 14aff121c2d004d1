"""AVA-style detection proof on the synthetic AVA set: ZeroI2V vs the same model, offsets all 0.

Arms train with identical adapters, heads, data, seed and budget; `image_model` differs from
`zeroi2v` only in `model.temporal_offsets` (all 0: image features, mean over time). Per arm,
on the val split (exclusions honoured):
  - frame mAP@0.5 with the proposals' boxes (the AVA protocol), with the model's own actor
    localiser, and with the ground-truth boxes (the action head alone);
  - AP of the order-only actions (move left/right, turn clockwise/anticlockwise, approach/
    retreat) against the rest;
  - the localiser's recall at IoU 0.5;
  - the merged checkpoint against the unmerged model: max |score difference| over all boxes;
  - training time and clips/s on this machine.

    python benchmarks/bench_detection.py              # writes data/synth_ava if missing
    python benchmarks/bench_detection.py --data data/synth_ava_144 --train-videos 144
    python benchmarks/bench_detection.py --set train.epochs=4 --json out.json
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch
from harness import train_arm

from model import load_merged
from model.detection import detect_actors
from training.config import load_config
from training.detection import evaluate_detection, keyframe_loader, load_ava
from training.synthetic.ava import write_synthetic_ava

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "training/configs/synth_ava_dinov2.yaml"
ORDER_ONLY = {
    "move_left", "move_right", "turn_clockwise", "turn_anticlockwise", "approach", "retreat",
}  # fmt: skip


def class_group_map(report) -> dict[str, float]:
    groups: dict[str, list[float]] = {"order_only": [], "other": []}
    for c, ap in report.per_class.items():
        if ap is not None:
            name = report.class_names[c]
            groups["order_only" if name in ORDER_ONLY else "other"].append(ap)
    return {f"mAP_{g}": round(sum(v) / len(v), 4) for g, v in groups.items() if v}


@torch.no_grad()
def max_score_difference(model, merged, loader) -> float:
    """Same clips, same (ground-truth) boxes: the largest |AVA score| change from merging."""
    worst = 0.0
    for clips, targets, _ in loader:
        a = detect_actors(model, clips, targets.boxes)
        b = detect_actors(merged, clips, targets.boxes)
        for x, y in zip(a, b, strict=True):
            worst = max(worst, float((x.scores - y.scores).abs().max()))
    return worst


def run_arm(name: str, overrides: list[str], out_root: Path) -> dict:
    arm = train_arm(name, CONFIG, overrides, out_root)
    cfg, model, merged = arm.cfg, arm.model, load_merged(arm.merged_path)
    split = load_ava(cfg, "val")
    device, d = torch.device("cpu"), cfg.data
    loader = keyframe_loader(split, cfg.view_spec(train=False), d.num_workers, d.time_offset)
    out = {"temporal_offsets": cfg.model.temporal_offsets, "key_frames": len(split.keys)}
    for boxes in ("proposals", "localiser", "groundtruth"):
        report = evaluate_detection(model, loader, split, boxes, d.detect_threshold, device)
        out[f"mAP_{boxes}"] = round(report.mAP, 4)
        out[f"box_recall_{boxes}"] = round(report.box_recall, 4)
        if boxes == "proposals":
            out.update(class_group_map(report))
            out["per_class_AP_proposals"] = {
                report.class_names[c]: None if ap is None else round(ap, 4)
                for c, ap in report.per_class.items()
            }
    merged_report = evaluate_detection(
        merged, loader, split, "proposals", d.detect_threshold, device
    )
    out["merged_mAP_proposals"] = round(merged_report.mAP, 4)
    out["merged_max_score_diff"] = max_score_difference(model, merged, loader)
    return out | arm.timing()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("data/synth_ava"))
    parser.add_argument("--train-videos", type=int, default=48, help="when writing --data")
    parser.add_argument("--val-videos", type=int, default=16, help="when writing --data")
    parser.add_argument("--arms", default="zeroi2v,image_model")
    parser.add_argument("--out", type=Path, default=Path("runs/bench_detection"))
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    data, ann = args.data, args.data / "annotations"
    if not (ann / "ava_val_v2.2.csv").exists():
        print(f"writing the synthetic AVA set to {data}", flush=True)
        write_synthetic_ava(
            data, num_train_videos=args.train_videos, num_val_videos=args.val_videos
        )
    overrides = [
        f"data.root={data / 'videos'}",
        f"data.labels={ann / 'ava_action_list_v2.2.pbtxt'}",
        f"data.train={ann / 'ava_train_v2.2.csv'}",
        f"data.val={ann / 'ava_val_v2.2.csv'}",
        f"data.exclusions={ann / 'ava_val_excluded_timestamps_v2.2.csv'}",
        f"data.proposals={ann / 'ava_val_proposals.csv'}",
        *args.overrides,
    ]
    heads = len(load_config(CONFIG, overrides).model.temporal_offsets)
    arms = {"zeroi2v": [], "image_model": [f"model.temporal_offsets={[0] * heads}"]}
    results = {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} "
        f"threads, torch {torch.__version__}",
        "command": f"python benchmarks/bench_detection.py --data {data} --train-videos "
        f"{args.train_videos} --val-videos {args.val_videos} --arms {args.arms} "
        + " ".join(f"--set {o}" for o in args.overrides),
    }
    for arm in args.arms.split(","):
        results[arm] = run_arm(arm, [*overrides, *arms[arm]], args.out)
        print(json.dumps({arm: results[arm]}, indent=1), flush=True)
    print(json.dumps(results, indent=1))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
