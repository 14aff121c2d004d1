"""Timeline throughput: video-seconds processed per wall-second, beside the decode-only rate; and
with --service, /classify's latency alone and beside a running /timeline.

A synthetic video of demo-class clips back to back (the shipped demo model's look: 64 px,
8 fps), `--minutes` long. Decode only: video.views.windows_plan(...).stream alone (one decode
front to back, each window's frames resized). Timeline: VideoService.timeline with the shipped
demo model in this process, as `zeroi2v predict --timeline` runs it. Same video, same stride,
one process; torch on every core.

--service starts the Ray service (`zeroi2v serve`'s defaults, the demo model) and, in
interleaved rounds, times sequential /classify requests of a demo clip alone and while a
/timeline of the long video streams beside them; and the timeline's own rate through the
service.

    .venv/bin/python benchmarks/bench_timeline.py --json benchmarks/results/timeline_cpu.json
    .venv/bin/python benchmarks/bench_timeline.py --service --json \
        benchmarks/results/timeline_service_cpu.json

On a GPU machine, benchmarks/gpu_timeline.sh runs the first with the paper's ViT-B/16.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

from service.local import LocalBackend
from service.model_runner import ModelRunner
from service.settings import ServiceSettings
from service.timeline import TimelineParams
from service.video_service import VideoService
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


def machine() -> dict:
    return {"machine": platform.processor() or platform.machine(), "cores": os.cpu_count()}


async def local_timeline(service: VideoService, video: Path, stride: float) -> list:
    async with contextlib.AsyncExitStack() as stack:
        return [r async for r in await service.timeline(video, TimelineParams(stride), stack)]


def random_vitb(folder: Path) -> Path:
    """The paper's K400 ViT-B/16 8-frame layout with random weights, merged (a GPU machine has
    no pre-trained weights; the time does not depend on their values)."""
    from model import build_model, merge_adapters, paper_preset, save_merged

    cfg = paper_preset("k400", "ViT-B-16", 8)
    return save_merged(merge_adapters(build_model(cfg).eval()), folder / "vitb16.safetensors")


def offline(args, video: Path) -> dict:
    torch.set_num_threads(os.cpu_count() or 1)
    model = random_vitb(video.parent) if args.random_vitb else (args.model or demo.SHIPPED)
    runner = ModelRunner(str(model), args.device)
    runner.warm_up()
    settings = ServiceSettings(model_path=str(model), max_timeline_seconds=3600)
    backend = LocalBackend(runner, settings)
    service = VideoService(settings, runner.info, backend, timeline_threads=0)
    spec = ViewSpec.from_preprocess(runner.info.preprocess).with_views(temporal_clips=1)
    out: dict = {**machine(), "minutes": args.minutes, "stride_s": args.stride,
                 "model": runner.card()["backbone"], "device": str(runner.device),
                 "dtype": str(runner.dtype)}  # fmt: skip
    for _ in range(args.reps):
        with VideoReader(video, DecodeLimits(max_duration_s=3600, max_frames=10**6)) as reader:
            start = time.perf_counter()
            windows = sum(1 for _ in windows_plan(reader, spec, args.stride).stream(reader))
            decode_s = time.perf_counter() - start
            seconds = reader.info.duration_s
        start = time.perf_counter()
        records = asyncio.run(local_timeline(service, video, args.stride))
        timeline_s = time.perf_counter() - start
        out.setdefault("runs", []).append({
            "windows": windows,
            "decode_only_video_s_per_s": round(seconds / decode_s, 1),
            "timeline_video_s_per_s": round(seconds / timeline_s, 2),
            "segments": len(records[-1].segments),
        })  # fmt: skip
        print(out["runs"][-1], flush=True)
    return out


def p95(values: list[float]) -> float:
    return float(np.percentile(values, 95))


def under_load(args, video: Path) -> dict:
    """/classify latency alone and beside a streaming /timeline, interleaved rounds."""
    import httpx

    from service.server import start, stop

    clip = demo.write_clips(video.parent / "clips")[0].read_bytes()
    long_bytes = video.read_bytes()
    start({"model_path": str(demo.SHIPPED)}, port=args.port, metrics_port=args.metrics_port)
    base = f"http://127.0.0.1:{args.port}"
    out: dict = {**machine(), "minutes": args.minutes, "stride_s": args.stride, "rounds": []}

    def classify(client: httpx.Client) -> float:
        t0 = time.perf_counter()
        r = client.post(f"{base}/classify", content=clip, headers={"content-type": "video/mp4"})
        assert r.status_code == 200, r.text
        return time.perf_counter() - t0

    try:
        with httpx.Client(timeout=300) as client:
            for _ in range(3):
                classify(client)  # warm
            for k in range(args.reps):
                alone = [classify(client) for _ in range(args.requests)]
                result: dict = {}

                def timeline(result: dict = result) -> None:
                    t0 = time.perf_counter()
                    r = httpx.post(f"{base}/timeline?stride_s={args.stride}", content=long_bytes,
                                   headers={"content-type": "video/mp4"}, timeout=3600)  # fmt: skip
                    summary = json.loads(r.text.splitlines()[-1])
                    assert summary["type"] == "summary", summary
                    seconds = time.perf_counter() - t0
                    result["video_s_per_s"] = round(summary["duration_s"] / seconds, 2)

                thread = threading.Thread(target=timeline)
                thread.start()
                time.sleep(2)  # the timeline is streaming
                beside = []
                while thread.is_alive() and len(beside) < args.requests:
                    beside.append(classify(client))
                thread.join()
                row = {
                    "alone_p50_s": round(statistics.median(alone), 3),
                    "alone_p95_s": round(p95(alone), 3),
                    "beside_timeline_p50_s": round(statistics.median(beside), 3),
                    "beside_timeline_p95_s": round(p95(beside), 3),
                    "beside_requests": len(beside),
                    "timeline_video_s_per_s": result.get("video_s_per_s"),
                }
                row["p95_ratio"] = round(row["beside_timeline_p95_s"] / row["alone_p95_s"], 2)
                out["rounds"].append(row)
                print(k, row, flush=True)
    finally:
        stop()
    ratios = [r["p95_ratio"] for r in out["rounds"]]
    out["p95_ratio_median"] = statistics.median(ratios)
    out["p95_ratio_range"] = [min(ratios), max(ratios)]
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=2.0)
    parser.add_argument("--stride", type=float, default=1.0)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--model", type=Path, help="a checkpoint (default: the demo model)")
    parser.add_argument("--random-vitb", action="store_true", help="ViT-B/16 8f, random weights")
    parser.add_argument("--device", default="auto", help="the model's (auto: GPU if any)")
    parser.add_argument("--service", action="store_true", help="the Ray service under load")
    parser.add_argument("--requests", type=int, default=20, help="--service: per phase")
    parser.add_argument("--port", type=int, default=8123)
    parser.add_argument("--metrics-port", type=int, default=8124)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    video = long_video(Path(tempfile.mkdtemp()) / "long.mp4", args.minutes)
    result = under_load(args, video) if args.service else offline(args, video)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
