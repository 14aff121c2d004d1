"""Reduced-precision inference against fp32, on a trained merged model and its data set.

The split is decoded once; then the same model is loaded per precision (backbone weights in that
dtype, heads fp32: what the service and `zeroi2v predict / eval` run) and evaluated.
Classification: top-1 per precision, the fraction of videos whose top-1 matches fp32's, and the
largest / mean absolute difference of the averaged probabilities. Detection: frame mAP@0.5 per
precision with the config's box source, and the largest action-probability difference on the
ground-truth boxes (the same boxes for every precision).

    python benchmarks/precision_agreement.py --model demo.safetensors \\
        --config training/configs/synth_dinov2.yaml --set data.root=... [--split test]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from model import load_merged, read_info
from model.classification import video_probabilities
from model.detection import detect_actors
from model.precision import inference_dtype
from training.config import load_config


def load(path, device, precision):
    return load_merged(path, device).cast_backbone(inference_dtype(precision, device))


def classification(args, cfg, device) -> dict:
    from training.data import load_annotations, test_loader

    names = read_info(args.model).class_names
    annotations = load_annotations(cfg, args.split, class_names=names)
    spec = cfg.view_spec(train=False)
    batches = list(test_loader(annotations, spec, cfg.data.num_workers, 8))
    out, reference = {}, None
    for precision in args.precisions:
        model = load(args.model, device, precision)
        started = time.perf_counter()
        probs = torch.cat(
            [video_probabilities(model, v.to(device)).cpu() for v, _, _ in batches if v is not None]
        )
        labels = torch.cat([y for v, y, _ in batches if v is not None])
        row = {"top1": round(float((probs.argmax(-1) == labels).float().mean()), 4)}
        row["videos"] = len(labels)
        row["seconds"] = round(time.perf_counter() - started, 1)
        if reference is None:
            reference = probs
        else:
            row["top1_agreement_with_first"] = round(
                float((probs.argmax(-1) == reference.argmax(-1)).float().mean()), 4
            )
            diff = (probs - reference).abs()
            row["max_prob_diff"] = round(float(diff.max()), 5)
            row["mean_prob_diff"] = round(float(diff.mean()), 6)
        out[precision] = row
        print(json.dumps({precision: row}), flush=True)
    return out


def detection(args, cfg, device) -> dict:
    from training.detection import evaluate_detection, keyframe_loader, load_ava

    d = cfg.data
    split = load_ava(cfg, args.split)
    batches = list(keyframe_loader(split, cfg.view_spec(train=False), d.num_workers, d.time_offset))
    out, reference = {}, None
    for precision in args.precisions:
        model = load(args.model, device, precision)
        started = time.perf_counter()
        report = evaluate_detection(
            model, batches, split, d.detect_boxes, d.detect_threshold, device
        )
        on_truth = [
            a.action_probs
            for clips, targets, _ in batches
            if clips is not None
            for a in detect_actors(model, clips.to(device), targets.boxes)
        ]
        probs = torch.cat(on_truth)
        row = {
            "mAP": round(report.mAP, 4),
            "boxes": d.detect_boxes,
            "key_frames": report.key_frames,
            "seconds": round(time.perf_counter() - started, 1),
        }
        if reference is None:
            reference = probs
        else:
            diff = (probs - reference).abs()
            row["max_action_prob_diff"] = round(float(diff.max()), 5)
            row["mean_action_prob_diff"] = round(float(diff.mean()), 6)
            row["top_action_agreement"] = round(
                float((probs.argmax(-1) == reference.argmax(-1)).float().mean()), 4
            )
        out[precision] = row
        print(json.dumps({precision: row}), flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="merged .safetensors")
    parser.add_argument("--config", required=True, help="the experiment YAML of its data set")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--split", default="test", help="test or val (classification)")
    parser.add_argument("--precisions", default="fp32,bf16,fp16", help="the first is the reference")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    args.precisions = args.precisions.split(",")
    device = torch.device(args.device)
    cfg = load_config(args.config, args.overrides)
    task = read_info(args.model).config.task
    results = {
        "model": str(args.model),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "split": args.split,
        "results": (detection if task == "detect" else classification)(args, cfg, device),
    }
    print(json.dumps(results, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
