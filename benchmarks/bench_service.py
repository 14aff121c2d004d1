"""End-to-end /classify under load, side by side with decode-only and model-only time.

One process starts the real service (Ray Serve, the same code as `zeroi2v serve`), then on the
same clip and the same views measures:
  decode     load_views() alone (the ingress's work per request)
  model      the merged model on one request's views, batch of 1 request and full batches
  e2e        sequential HTTP requests (latency p50/p95), then `--concurrency` clients at once
             (throughput, latency p50/p95 under load)
Reports overhead = e2e p50 / (decode p50 + model p50), batching gain = model views/s at the
full batch / at one request's views, and throughput under load / what decode + model allow.

    python benchmarks/bench_service.py --video clip.mp4 [--model model.safetensors]

Without --model it times a randomly initialised merged ZeroI2V ViT-B/16 (K400 layout) at
--image-size: the weights do not change the cost.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import socket
import statistics
import time
from pathlib import Path

import httpx
import torch

from model import read_info
from service.model_runner import ModelRunner
from video.decode import DecodeLimits
from video.views import ViewSpec, load_views


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def random_model(image_size: int, views: str) -> Path:
    import tempfile

    from model import build_model, merge_adapters, paper_preset, save_merged

    clips, crops = (int(v) for v in views.split("x"))
    cfg = paper_preset("k400", "ViT-B-16", 8).model_copy(update={"image_size": image_size})
    path = Path(tempfile.mkdtemp()) / "vitb16_random.safetensors"
    preprocess = {"temporal_clips": clips, "spatial_crops": crops, "frame_interval": 8}
    return save_merged(merge_adapters(build_model(cfg)), path, preprocess=preprocess)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--views", default="1x1", help="temporal clips x spatial crops")
    parser.add_argument("--video", type=Path, required=True)
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    data = args.video.read_bytes()
    if args.model is None:
        args.model = random_model(args.image_size, args.views)
    info = read_info(args.model)
    spec = ViewSpec.from_preprocess(info.preprocess)
    limits = DecodeLimits(threads=1)

    decode = []
    for _ in range(args.requests // 2):
        t = time.perf_counter()
        views, _ = load_views(args.video, spec, limits)
        decode.append(time.perf_counter() - t)
    runner = ModelRunner(str(args.model), max_batch_size=args.max_batch_size)
    runner.warm_up()
    one = list(views.unbind(0))
    model = []
    for _ in range(args.requests // 2):
        t = time.perf_counter()
        runner.run(one)
        model.append(time.perf_counter() - t)
    full = (one * args.max_batch_size)[: args.max_batch_size]
    t = time.perf_counter()
    for _ in range(5):
        runner.run(full)
    full_views_per_s = 5 * len(full) / (time.perf_counter() - t)
    one_views_per_s = len(one) / statistics.median(model)
    del runner

    from service.server import start, stop

    port = free_port()
    start(
        {"model_path": str(args.model), "max_batch_size": args.max_batch_size,
         "max_pending_requests": max(16, 2 * args.concurrency)},
        port=port, metrics_port=free_port(),
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/classify"
    try:
        with httpx.Client(timeout=120) as client:
            for _ in range(3):  # warm the whole path
                client.post(url, files={"file": ("v.mp4", data)}).raise_for_status()
            e2e = []
            for _ in range(args.requests // 2):
                t = time.perf_counter()
                client.post(url, files={"file": ("v.mp4", data)}).raise_for_status()
                e2e.append(time.perf_counter() - t)

        async def one_client(client, n, out):
            for _ in range(n):
                t = time.perf_counter()
                r = await client.post(url, files={"file": ("v.mp4", data)})
                r.raise_for_status()
                out.append((time.perf_counter() - t, r.json()["batch_size"]))

        async def load():
            out: list = []
            async with httpx.AsyncClient(timeout=300) as client:
                per = args.requests // args.concurrency
                start_t = time.perf_counter()
                await asyncio.gather(
                    *(one_client(client, per, out) for _ in range(args.concurrency))
                )
                return out, time.perf_counter() - start_t

        loaded, seconds = asyncio.run(load())
    finally:
        stop()

    decode_p50, model_p50 = statistics.median(decode), statistics.median(model)
    allowed_rps = 1 / (decode_p50 + len(one) / full_views_per_s)  # batched model, serial CPU
    rps = len(loaded) / seconds
    results = {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} "
        f"threads, torch {torch.__version__}, cuda {torch.cuda.is_available()}",
        "model": f"{info.config.backbone}, {info.config.num_frames} frames, {len(one)} views",
        "video": args.video.name,
        "decode_ms_p50": round(decode_p50 * 1e3, 2),
        "model_ms_p50": round(model_p50 * 1e3, 2),
        "e2e_ms_p50": round(statistics.median(e2e) * 1e3, 2),
        "e2e_ms_p95": round(pct(e2e, 0.95) * 1e3, 2),
        "overhead_ratio_p50": round(statistics.median(e2e) / (decode_p50 + model_p50), 3),
        "batching_gain": round(full_views_per_s / one_views_per_s, 3),
        "load": {
            "concurrency": args.concurrency,
            "requests": len(loaded),
            "throughput_rps": round(rps, 2),
            "allowed_rps": round(allowed_rps, 2),
            "throughput_over_allowed": round(rps / allowed_rps, 3),
            "latency_ms_p50": round(pct([x for x, _ in loaded], 0.5) * 1e3, 2),
            "latency_ms_p95": round(pct([x for x, _ in loaded], 0.95) * 1e3, 2),
            "max_batch_views": max(b for _, b in loaded),
        },
    }
    print(json.dumps(results, indent=1))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
