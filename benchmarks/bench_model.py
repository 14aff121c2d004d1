"""Zero extra inference cost, measured: plain image model vs merged and unmerged ZeroI2V.

One process, the same input, runs interleaved round-robin so drift hits every model alike:
  plain     open_clip visual tower per frame (its own nn.MultiheadAttention) + mean + head
  merged    ZeroI2V after merge_adapters (STDHA, no adapters)
  unmerged  ZeroI2V with its linear adapters still in place
Reports parameters, GMACs (the paper's "GFLOPs"), batch-1 latency (one video = frames x views)
and throughput, per dtype, plus achieved FLOP/s against a matmul roofline measured in this run.

    python benchmarks/bench_model.py                    # ViT-B/16, 8 frames x 3 views, CPU
    python benchmarks/bench_model.py --device cuda      # adds nothing else; bf16 autocast on GPU
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import time

import torch

from model import build_model, merge_adapters, paper_preset
from model.adapters import adapters_of
from model.flops import count_macs
from model.image_baseline import PlainImageModel


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def autocast(device, dtype):
    if dtype == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype={"bf16": torch.bfloat16, "fp16": torch.float16}[dtype])


def matmul_roofline(device, dtype, n=2048, reps=5) -> float:
    """Best FLOP/s of an n x n x n matmul in this dtype: the machine's practical peak."""
    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    a = torch.randn(n, n, device=device, dtype=torch_dtype)
    b = torch.randn(n, n, device=device, dtype=torch_dtype)
    a @ b
    best = float("inf")
    for _ in range(reps):
        sync(device)
        t = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def time_models(models, x, device, dtype, reps):
    """Median seconds per call for each model, measured round-robin."""
    times = {name: [] for name in models}
    with torch.inference_mode(), autocast(device, dtype):
        for model in models.values():  # warm-up (kernels, allocator, autocast caches)
            model(x)
        for _ in range(reps):
            for name, model in models.items():
                sync(device)
                t = time.perf_counter()
                model(x)
                sync(device)
                times[name].append(time.perf_counter() - t)
    return {name: statistics.median(v) for name, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="ViT-B-16")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--views", type=int, default=3, help="temporal clips x spatial crops")
    parser.add_argument("--throughput-videos", type=int, default=4)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--dtypes", default=None, help="default: fp32,bf16")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()
    device = torch.device(args.device)
    dtypes = (args.dtypes or "fp32,bf16").split(",")

    torch.manual_seed(0)
    unmerged = build_model(paper_preset("k400", args.backbone, args.frames)).eval()
    with torch.no_grad():  # trained-looking adapters, so merging has real work to fold
        for adapter in adapters_of(unmerged):
            adapter.up.weight.normal_(std=0.02)
    merged = merge_adapters(unmerged)
    plain = PlainImageModel(merged).eval()
    models = {"plain": plain, "merged": merged, "unmerged": unmerged}
    for m in models.values():
        m.to(device)
    cfg = merged.cfg
    clip = (3, cfg.num_frames, cfg.image_size, cfg.image_size)
    video = torch.randn(args.views, *clip, device=device)  # one video = its views as a batch
    batch = video.repeat(args.throughput_videos, 1, 1, 1, 1)

    with torch.inference_mode():
        macs = {name: count_macs(lambda m=m: m(video)) for name, m in models.items()}
    params = {name: sum(p.numel() for p in m.parameters()) for name, m in models.items()}
    results = {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} "
        f"threads, torch {torch.__version__}, device {device}"
        + (f" ({torch.cuda.get_device_name()})" if device.type == "cuda" else ""),
        "setting": f"{args.backbone}, {cfg.num_frames} frames x {args.views} views",
        "params_M": {k: round(v / 1e6, 2) for k, v in params.items()},
        "gmacs_per_video": {k: round(v / 1e9, 1) for k, v in macs.items()},
        "flops_ratio_merged_over_plain": macs["merged"] / macs["plain"],
        "runs": {},
    }
    for dtype in dtypes:
        roof = matmul_roofline(device, dtype)
        latency = time_models(models, video, device, dtype, args.reps)
        per_batch = time_models(models, batch, device, dtype, max(2, args.reps // 2))
        run = {"matmul_roofline_gflops": round(roof / 1e9, 1)}
        for name in models:
            # Achieved FLOP/s counts the model's multiply-adds x 2 (what the matmul roofline
            # counts); time in norms, softmax and GELU shows up as a lower fraction.
            at_batch1 = 2 * macs[name] / latency[name]
            at_throughput = 2 * macs[name] * args.throughput_videos / per_batch[name]
            run[name] = {
                "latency_ms": round(latency[name] * 1e3, 1),
                "videos_per_s": round(args.throughput_videos / per_batch[name], 3),
                "achieved_gflops_batch1": round(at_batch1 / 1e9, 1),
                "fraction_of_roofline_batch1": round(at_batch1 / roof, 3),
                "achieved_gflops_throughput": round(at_throughput / 1e9, 1),
                "fraction_of_roofline_throughput": round(at_throughput / roof, 3),
            }
        run["latency_ratio_merged_over_plain"] = round(latency["merged"] / latency["plain"], 3)
        run["latency_ratio_unmerged_over_plain"] = round(latency["unmerged"] / latency["plain"], 3)
        results["runs"][dtype] = run
        print(json.dumps({dtype: run}, indent=1), flush=True)
    print(json.dumps(results, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
