"""sampling=fast beside exact sampling on a labelled video list: top-1 accuracy, frames
decoded and decode core-ms per video, and how many predictions change.

    python benchmarks/fast_sampling.py --model demo.safetensors --data DIR [--views 3x1]

DIR holds test.txt ("relative/path.mp4 label" per line) and the videos, as `zeroi2v demo build`
writes them. --views overrides the checkpoint's temporal clips x spatial crops.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from model import read_info
from service.model_runner import ModelRunner
from video.decode import DecodeLimits
from video.views import ViewSpec, decode_clips


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--views", default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    spec = ViewSpec.from_preprocess(read_info(args.model).preprocess)
    if args.views:
        spec = spec.with_views(*map(int, args.views.split("x")))
    runner = ModelRunner(str(args.model), device="cpu", precision="fp32")
    limits = DecodeLimits(threads=1)
    rows = [line.split() for line in (args.data / "test.txt").read_text().splitlines() if line]
    result, predictions = {}, {}
    for mode in ("exact", "fast"):
        correct, frames, core_s, preds = 0, 0, 0.0, []
        for rel, label in rows:
            start = time.process_time()
            decoded = decode_clips(args.data / rel, spec, limits, sampling=mode)
            core_s += time.process_time() - start
            probs = torch.stack(runner.run(runner.views(decoded.clips, spec))).mean(0)
            preds.append(int(probs.argmax()))
            correct += preds[-1] == int(label)
            frames += decoded.frames_decoded
        predictions[mode] = preds
        result[mode] = {
            "top1": round(correct / len(rows), 4),
            "frames_decoded_per_video": round(frames / len(rows), 2),
            "decode_core_ms_per_video": round(core_s / len(rows) * 1e3, 2),
        }
    changed = sum(a != b for a, b in zip(predictions["exact"], predictions["fast"], strict=True))
    result.update(
        videos=len(rows),
        views=f"{spec.sampling.num_clips}x{spec.spatial_crops}",
        frames_per_clip=spec.sampling.num_frames,
        frame_interval=spec.sampling.interval,
        predictions_changed=changed,
    )
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
