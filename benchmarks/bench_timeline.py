"""Timeline throughput: video-seconds processed per wall-second, beside the decode-only rate.

A synthetic video of demo-class clips back to back (the shipped demo model's look: 64 px,
8 fps), `--minutes` long. Decode only: video.views.stream_windows alone (one decode front to
back, each window's frames resized). Timeline: service.timeline.local_timeline with the shipped
demo model, as `zeroi2v predict --timeline` runs it. Same video, same stride, one process;
torch on every core.

    .venv/bin/python benchmarks/bench_timeline.py --json benchmarks/results/timeline_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from service.model_runner import ModelRunner
from service.timeline import local_timeline
from training import demo
from video.decode import DecodeLimits, VideoReader
from video.views import ViewSpec, windows_plan


def long_video(path: Path, minutes: float) -> Path:
    clips, frames = int(minutes * 60 / 2), []  # 2 s per clip
    for k in range(clips):
        name = demo.CLASSES[k % len(demo.CLASSES)]
        rng = np.random.default_rng([7, k])
        frames.append(demo.synth_frames(name, rng, 16, 64, demo.DATA["clutter"]))
    demo.write_mp4(path, np.concatenate(frames))
    return path


def main(args) -> dict:
    torch.set_num_threads(os.cpu_count() or 1)
    video = long_video(Path(tempfile.mkdtemp()) / "long.mp4", args.minutes)
    runner = ModelRunner(str(demo.SHIPPED), "cpu")
    runner.warm_up()
    spec = ViewSpec.from_preprocess(runner.info.preprocess)
    limits = DecodeLimits(max_duration_s=3600, max_frames=10**6)
    out: dict = {"machine": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                 "minutes": args.minutes, "stride_s": args.stride}  # fmt: skip
    for _ in range(args.reps):
        with VideoReader(video, limits) as reader:
            start = time.perf_counter()
            windows = sum(1 for _ in windows_plan(reader, spec, args.stride).stream(reader))
            decode_s = time.perf_counter() - start
            seconds = reader.info.duration_s
        with VideoReader(video, limits) as reader:
            start = time.perf_counter()
            records = list(local_timeline(runner, reader, spec, args.stride, 5))
            timeline_s = time.perf_counter() - start
        out.setdefault("runs", []).append({
            "windows": windows,
            "decode_only_video_s_per_s": round(seconds / decode_s, 1),
            "timeline_video_s_per_s": round(seconds / timeline_s, 2),
            "segments": len(records[-1].segments),
        })  # fmt: skip
        print(out["runs"][-1], flush=True)
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=2.0)
    parser.add_argument("--stride", type=float, default=1.0)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    result = main(args)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
