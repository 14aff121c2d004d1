"""/classify under load, this checkout against another (today's commit), side by side.

For each clip, each checkout is measured in its own process (PYTHONPATH points at its tree,
for the Ray replicas too), the two alternating for `--rounds` rounds; ratios are medians of the
per-round ratios, with their spread. One measurement:
  floor      PyAV alone decodes every frame from the start up to the plan's last frame, no
             conversion, one core: what exact sampling costs a clip with one keyframe when
             every frame is decoded (skipping unreferenced frames can go below it)
  decode     the checkout's own decoding of one request, one core: core-ms per video, and
             core-ms over the floor (`decode_clips` where the checkout has it, which is what
             its decode replicas run; else `load_views`, what its ingress ran). Since
             decode_clips leaves cropping and normalising to the model, `load_views` (decode
             and float views, in both checkouts) is timed too, like for like
  model      the model replica's work on one request's views (from uint8 clips where the
             checkout takes them), alone
  e2e        the real service (Ray Serve, `service.server.start`, the checkout's local
             defaults) answering `--concurrency` clients: videos/s and latency p50/p95, and
             the CPU seconds per video of each Ray process kind (where the time goes)

    python benchmarks/bench_service.py --video bbb10=clip.mp4 --baseline .baseline-decode

Without --model the model is a random merged ZeroI2V at 224 px, K400 test views (8 frames at
interval 16, 3 clips x 3 crops) on the zeroi2v-ViT-T-32 backbone (2 blocks, width 64): on this
CPU it costs a few percent of decoding, as a ViT-B/16 does on a GPU, so the service is decode
bound. --model M (e.g. the demo model) measures a model-bound service instead.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TINY = "zeroi2v-ViT-T-32"


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_model(out: Path) -> Path:
    from model import ZeroI2VConfig, build_model, merge_adapters, save_merged

    cfg = ZeroI2VConfig(
        backbone=TINY, image_size=224, num_frames=8, num_classes=400,
        temporal_offsets=[1, -1, 0, 0],
    )  # fmt: skip
    preprocess = {"num_frames": 8, "image_size": 224, "frame_interval": 16,
                  "temporal_clips": 3, "spatial_crops": 3}  # fmt: skip
    return save_merged(merge_adapters(build_model(cfg)), out, preprocess=preprocess)


def floor_ms(path: Path, last: int) -> float:
    """Core-ms for PyAV alone to decode frames 0..last in presentation order, no conversion."""
    import av

    start = time.process_time()
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1
        rate = stream.average_rate or stream.guessed_rate
        first = None
        for frame in container.decode(stream):
            first = frame.pts if first is None else first
            if round(float((frame.pts - first) * stream.time_base * rate)) >= last:
                break
    return (time.process_time() - start) * 1e3


def measure(args) -> dict:
    """One checkout (whatever `service`, `video` and `model` import from), one clip."""
    import httpx
    import torch

    torch.set_num_threads(1)
    import video.views as views_mod
    from model import read_info
    from service.model_runner import ModelRunner
    from video.decode import DecodeLimits, VideoReader
    from video.views import ViewSpec, load_views

    spec = ViewSpec.from_preprocess(read_info(args.model).preprocess).with_views(
        *map(int, args.views.split("x"))
    )
    limits = DecodeLimits(threads=1)
    with VideoReader(args.video, limits) as reader:
        plan = spec.sampling.plan(reader.info.num_frames, train=False)
        keyframes = len(reader._keyframes)
    last = max(max(c) for c in plan)
    new = hasattr(views_mod, "decode_clips")

    floor, decode, whole, frames_decoded = [], [], [], None
    for _ in range(args.repeats):
        floor.append(floor_ms(args.video, last))
        start = time.process_time()
        if new:
            out = views_mod.decode_clips(args.video, spec, limits)
            frames_decoded, clips = out.frames_decoded, out.clips
        else:
            views, _ = load_views(args.video, spec, limits)
        decode.append((time.process_time() - start) * 1e3)
        # Like for like: decoding plus making the float views, wherever each checkout does it.
        start = time.process_time()
        load_views(args.video, spec, limits)
        whole.append((time.process_time() - start) * 1e3)

    torch.set_num_threads(os.cpu_count() or 1)
    runner = ModelRunner(str(args.model), max_batch_size=16)
    runner.warm_up()
    model = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        runner.run(runner.views(clips, spec) if new else list(views.unbind(0)))
        model.append((time.perf_counter() - start) * 1e3)
    del runner

    from service.server import start, stop

    port = free_port()
    settings = {"model_path": str(args.model), "max_pending_requests": 4 * args.concurrency}
    start(settings, port=port, metrics_port=free_port())
    import psutil  # Ray's own copy, on sys.path once Ray has started

    url = f"http://127.0.0.1:{port}/classify?temporal_clips={spec.sampling.num_clips}"
    url += f"&spatial_crops={spec.spatial_crops}"
    data = args.video.read_bytes()
    post = {"content": data, "headers": {"content-type": "video/mp4"}}
    try:

        async def load():
            async with httpx.AsyncClient(timeout=600) as client:
                for _ in range(2):  # warm the whole path
                    (r := await client.post(url, **post)).raise_for_status()
                body = r.json()
                await asyncio.to_thread(settle)
                procs = {p.pid: p for p in psutil.process_iter(["name"])}
                before = {pid: sum(p.cpu_times()[:2]) for pid, p in procs.items()}
                latencies = []

                async def client_loop(n):
                    for _ in range(n):
                        t = time.perf_counter()
                        (await client.post(url, **post)).raise_for_status()
                        latencies.append(time.perf_counter() - t)

                t = time.perf_counter()
                per = args.requests // args.concurrency
                await asyncio.gather(*(client_loop(per) for _ in range(args.concurrency)))
                seconds = time.perf_counter() - t
                cpu = defaultdict(float)
                # Processes started meanwhile (a decode replica's low-priority child) count
                # from zero.
                for p in psutil.process_iter(["name"]):
                    try:
                        used = sum(p.cpu_times()[:2]) - before.get(p.pid, 0.0)
                    except psutil.Error:
                        continue
                    name = p.info["name"] or "?"
                    if "ServeReplica" in name:
                        name = name.split(":")[-1]  # the deployment
                    cpu[name] += used
                return body, latencies, seconds, cpu

        body, latencies, seconds, cpu = asyncio.run(load())
    finally:
        stop()
    n = len(latencies)
    return {
        "decoder_deployment": "decoder" in body,
        "keyframes": keyframes,
        "frames_to_last_target": last + 1,
        "frames_decoded": frames_decoded,
        "floor_core_ms": statistics.median(floor),
        "decode_core_ms": statistics.median(decode),
        "decode_over_floor": statistics.median(d / f for d, f in zip(decode, floor, strict=True)),
        "load_views_core_ms": statistics.median(whole),
        "model_ms": statistics.median(model),
        "videos_per_s": n / seconds,
        "latency_ms_p50": pct(latencies, 0.5) * 1e3,
        "latency_ms_p95": pct(latencies, 0.95) * 1e3,
        "cpu_s_per_video": {k: round(v / n, 3) for k, v in sorted(cpu.items()) if v > 0.05 * n},
        "timings": body["timings"],
    }


def settle(busy: float = 15.0, longest_s: float = 120.0) -> None:
    """Wait until the machine is quiet (a second under `busy` % CPU, at most `longest_s`): what
    replicas do once at start (a decode replica's low-priority child importing torch at idle
    priority, say) is not the steady state being measured."""
    import psutil

    end = time.monotonic() + longest_s
    while psutil.cpu_percent(interval=1.0) >= busy and time.monotonic() < end:
        pass


def spread(values: list[float], digits: int = 3) -> dict:
    return {
        "median": round(statistics.median(values), digits),
        "min": round(min(values), digits),
        "max": round(max(values), digits),
    }


def run_checkout(tree: Path, args, video: Path) -> dict:
    """`measure` in a fresh process that imports from `tree` (Ray workers inherit PYTHONPATH)."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    cmd = [sys.executable, __file__, "--measure", "--video", f"v={video}", "--model",
           str(args.model), "--views", args.views, "--requests", str(args.requests),
           "--concurrency", str(args.concurrency), "--repeats", str(args.repeats)]  # fmt: skip
    out = subprocess.run(cmd, env=env, cwd=tree, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"{tree}: {out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--video", action="append", required=True, help="NAME=PATH, repeatable")
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--views", default="3x3", help="temporal clips x spatial crops")
    parser.add_argument("--baseline", type=Path, default=None, help="today's checkout")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--requests", type=int, default=24)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    videos = {n: Path(p).resolve() for n, p in (v.split("=", 1) for v in args.video)}
    if args.measure:
        args.video = next(iter(videos.values()))
        print(json.dumps(measure(args)))
        return
    if args.model is None:
        args.model = tiny_model(Path(tempfile.mkdtemp()) / "tiny224.safetensors")
    trees = {"this": ROOT}
    if args.baseline is not None:
        trees["baseline"] = args.baseline.resolve()
        config = f"model/open_clip_configs/{TINY}.json"  # not code: the benchmark model's shape
        if not (trees["baseline"] / config).exists():
            shutil.copy(ROOT / config, trees["baseline"] / config)

    import torch

    results = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}, cuda {torch.cuda.is_available()}",
        "model": str(args.model.name),
        "views": args.views,
        "load": f"{args.requests} requests from {args.concurrency} clients",
        "commits": {
            k: subprocess.run(
                ["git", "-C", str(t), "rev-parse", "--short", "HEAD"],
                capture_output=True,
                text=True,
            ).stdout.strip()
            for k, t in trees.items()
        },  # fmt: skip
        "videos": {},
    }
    for name, video in videos.items():
        runs = defaultdict(list)
        for r in range(args.rounds):
            order = list(trees) if r % 2 == 0 else list(reversed(trees))
            for key in order:
                runs[key].append(run_checkout(trees[key], args, video))
                print(name, key, json.dumps(runs[key][-1]), flush=True)
        entry = {key: runs[key] for key in trees}
        if "baseline" in trees:
            for metric in ("videos_per_s", "decode_core_ms", "load_views_core_ms", "model_ms"):
                entry[f"{metric}_this_over_baseline"] = spread(
                    [
                        a[metric] / b[metric]
                        for a, b in zip(runs["this"], runs["baseline"], strict=True)
                    ]
                )
        results["videos"][name] = entry
    print(json.dumps(results, indent=1))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
