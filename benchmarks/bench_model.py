"""Zero extra inference cost, measured: the plain image model against merged (and unmerged) ZeroI2V.

One process, the same random input, models run interleaved (the order rotates every repeat) so
drift hits every model alike. Per mode and batch: median time per call with its spread, the
merged/plain ratio of each repeat (median, min, max), achieved FLOP/s against a matmul roofline
measured in the same run, and which SDPA kernel ran. Then training steps (clips/s, peak memory).

  plain     open_clip visual tower per frame (its own nn.MultiheadAttention) + mean + head
  merged    ZeroI2V after merge_adapters (STDHA, no adapters)
  unmerged  ZeroI2V with its linear adapters still in place (eager modes, batch 1)

Modes (the weights' dtype is bf16, or fp16 on a GPU without bf16):
  fp32        fp32 weights
  autocast    fp32 weights under bf16 autocast (what the service did before bf16 weights)
  bf16        bf16 backbone weights, the service's default on GPUs
  compile     bf16 weights, torch.compile (default mode, static shapes)
  cudagraphs  bf16 weights, torch.compile(mode="reduce-overhead"): CUDA graphs (CUDA only)

    python benchmarks/bench_model.py                          # CPU: fp32 (+ bf16 if native)
    python benchmarks/bench_model.py --json out.json          # on a GPU: every mode, training
    python benchmarks/bench_model.py --backbone ViT-L-14      # throughput batch 16 by default

The script uses only model APIs that older commits have too, so the same file measures an old
checkout side by side: `PYTHONPATH=<worktree> python benchmarks/bench_model.py ...`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from model import build_model, merge_adapters, paper_preset
from model.adapters import adapters_of
from model.flops import count_macs
from model.image_baseline import PlainImageModel
from model.precision import cpu_has_bf16

MODES = ("fp32", "autocast", "bf16", "compile", "cudagraphs")


def preset(args):
    """The paper's K400 layout for the backbone and frames (Table 6)."""
    cfg = paper_preset("k400", args.backbone, args.frames)
    return cfg.model_copy(update={"image_size": args.image_size})


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def low_precision(device: torch.device) -> torch.dtype:
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


def weights_dtype(mode: str, device: torch.device) -> torch.dtype:
    """fp32 for fp32 and autocast; bf16 (fp16) otherwise, except that the compiled modes keep
    fp32 on a CPU without native bf16, where bf16 would measure the emulation."""
    if mode in ("fp32", "autocast"):
        return torch.float32
    if mode != "bf16" and device.type == "cpu" and not cpu_has_bf16():
        return torch.float32
    return low_precision(device)


def matmul_roofline(device: torch.device, dtype: torch.dtype, n: int, reps: int = 10) -> float:
    """Best FLOP/s of an n x n x n matmul on random data: the machine's practical peak.
    (A small n understates a GPU: 2048^3 is over in microseconds.)"""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(reps):
        sync(device)
        t = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def cast_backbone(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """The product's inference cast (backbone in dtype, heads fp32); an older checkout, which
    has no such method, gets its whole model cast."""
    if hasattr(model, "cast_backbone"):
        return model.cast_backbone(dtype)
    return model.to(dtype)


def prepare(models: dict, mode: str, device: torch.device) -> tuple[dict, torch.dtype]:
    """Models ready for `mode` (cast, maybe compiled) and the input dtype they take."""
    dtype = weights_dtype(mode, device)
    if dtype == torch.float32:
        out = {k: m.float() for k, m in models.items()}
    else:
        out = {k: cast_backbone(m, dtype) for k, m in models.items()}
    if mode == "compile":
        out = {k: torch.compile(m, dynamic=False) for k, m in out.items()}
    elif mode == "cudagraphs":
        out = {k: torch.compile(m, mode="reduce-overhead", dynamic=False) for k, m in out.items()}
    return out, dtype


def context(mode: str, device: torch.device):
    if mode == "autocast":
        return torch.autocast(device.type, dtype=low_precision(device))
    return contextlib.nullcontext()


def sdpa_kernels(model, x, mode: str, device: torch.device) -> list[str]:
    """The attention ops one forward dispatches (flash, efficient, cudnn, math, fused MHA)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof, torch.inference_mode(), context(mode, device):
        model(x)
        sync(device)
    keys = ("attention", "scaled_dot_product", "flash", "fmha", "multi_head")
    return sorted({e.key for e in prof.key_averages() if any(k in e.key.lower() for k in keys)})


def time_models(models: dict, x, mode: str, device: torch.device, reps: int, target_s: float):
    """Per model: seconds per call in each repeat; plus the first call's seconds (compilation).

    Each repeat times `inner` back-to-back calls of one model (enough to last target_s, so
    launch gaps and timer resolution stay small), the models in rotating order."""
    first, inner = {}, {}
    with torch.inference_mode(), context(mode, device):
        for name, model in models.items():
            sync(device)
            t = time.perf_counter()
            model(x)
            sync(device)
            first[name] = time.perf_counter() - t
            if mode == "cudagraphs":  # graphs are recorded on a later call than the compiling one
                for _ in range(2):
                    model(x)
            inner[name] = 1
            if target_s > 0:
                sync(device)
                t = time.perf_counter()
                model(x)
                sync(device)
                inner[name] = max(1, math.ceil(target_s / max(time.perf_counter() - t, 1e-6)))
        times = {name: [] for name in models}
        names = list(models)
        for r in range(reps):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                sync(device)
                t = time.perf_counter()
                for _ in range(inner[name]):
                    models[name](x)
                sync(device)
                times[name].append((time.perf_counter() - t) / inner[name])
    return times, first


def spread(values: list[float], scale: float = 1.0, digits: int = 3) -> dict:
    return {
        "median": round(statistics.median(values) * scale, digits),
        "min": round(min(values) * scale, digits),
        "max": round(max(values) * scale, digits),
    }


def bench_inference(args, device, base_models, macs, clip) -> dict:
    out = {}
    for mode in args.modes:
        models, dtype = prepare(base_models, mode, device)
        if mode in ("compile", "cudagraphs"):
            models.pop("unmerged", None)  # compiling it too would double the compile time
        # The roofline of the dtype the matmuls run in (bf16 under autocast).
        roof_dtype = low_precision(device) if mode == "autocast" else dtype
        roof = matmul_roofline(device, roof_dtype, args.roofline_n)
        run = {
            "weights": str(dtype).replace("torch.", ""),
            "matmul_roofline_tflops": round(roof / 1e12, 3),
            "batches": {},
        }
        for videos in args.batches:
            if mode == "cudagraphs" and device.type != "cuda":
                continue
            current = {k: m for k, m in models.items() if k != "unmerged" or videos == 1}
            g = torch.Generator().manual_seed(videos)
            x = torch.randn(videos * args.views, *clip, generator=g).to(device, dtype)
            times, first = time_models(current, x, mode, device, args.reps, args.target_s)
            result = {}
            for name, per_call in times.items():
                seconds = statistics.median(per_call)
                flops = 2 * macs[name] * videos / seconds
                result[name] = {
                    "ms_per_call": spread(per_call, 1e3),
                    "videos_per_s": round(videos / seconds, 2),
                    "fraction_of_roofline": round(flops / roof, 3),
                    "first_call_s": round(first[name], 2),
                }
            for name in [n for n in current if n != "plain"]:
                paired = [m / p for m, p in zip(times[name], times["plain"], strict=True)]
                result[f"{name}_over_plain"] = spread(paired)
            if args.kernels and mode not in ("compile", "cudagraphs"):
                result["attention_ops"] = {
                    name: sdpa_kernels(current[name], x, mode, device) for name in current
                }
            run["batches"][str(videos)] = result
            print(json.dumps({mode: {videos: result}}), flush=True)
        out[mode] = run
        del models
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return out


def train_step(model, opt, clips, labels, device) -> None:
    amp = device.type == "cuda"  # on CPU, fp32: bf16 autocast is emulated on most CPUs
    with torch.autocast(device.type, dtype=low_precision(device), enabled=amp):
        loss = F.cross_entropy(model(clips), labels)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def bench_training(args, device) -> dict:
    """Training steps as training/train.py takes them: fp32 weights, bf16 autocast on GPUs,
    AdamW over the trainable set, cross-entropy on random labels."""
    out = {}
    for trainable in args.train_sets:
        cfg = preset(args).model_copy(update={"trainable": trainable})
        torch.manual_seed(0)
        model = build_model(cfg).to(device).train()
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-4)
        for batch in args.train_batches:
            clips = torch.randn(batch, 3, cfg.num_frames, cfg.image_size, cfg.image_size)
            clips = clips.to(device)
            labels = torch.randint(0, cfg.num_classes, (batch,), device=device)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            for _ in range(2):
                train_step(model, opt, clips, labels, device)
            per_step = []
            for _ in range(args.train_steps):
                sync(device)
                t = time.perf_counter()
                train_step(model, opt, clips, labels, device)
                sync(device)
                per_step.append(time.perf_counter() - t)
            result = {
                "clips_per_s": round(batch / statistics.median(per_step), 2),
                "ms_per_step": spread(per_step, 1e3, 1),
                "trainable_M": round(sum(p.numel() for p in params) / 1e6, 2),
            }
            if device.type == "cuda":
                result["peak_memory_GB"] = round(torch.cuda.max_memory_allocated() / 1e9, 2)
            out[f"{trainable}/batch{batch}"] = result
            print(json.dumps({"train": {f"{trainable}/batch{batch}": result}}), flush=True)
        del model, opt
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return out


def bench_runner(args, device, path) -> dict:
    """The service's own model path (service/model_runner.py) per `compile` setting: warm-up
    seconds per padded batch size (compilation, CUDA graph capture), then ms per batch at
    each size, interleaved, and the largest probability difference from eager."""
    import inspect

    from service.model_runner import ModelRunner

    if "compile" not in inspect.signature(ModelRunner).parameters:
        print("runner: this checkout's ModelRunner has no compile setting; skipped", flush=True)
        return {}
    out = {}
    runners = {}
    for mode in args.runner_modes:
        runner = ModelRunner(str(path), str(device), "auto", mode, args.runner_batch)
        seconds = runner.warm_up()
        runners[mode] = runner
        out[mode] = {"warm_up_s": round(seconds, 1), "per_batch_size_s": runner.warm_up_s}
        print(json.dumps({"runner": {mode: out[mode]}}), flush=True)
    clip = runners[args.runner_modes[0]].clip_shape
    g = torch.Generator().manual_seed(1)
    for size in sorted({1, 3, args.runner_batch}):
        views = list(torch.randn(size, *clip, generator=g).unbind(0))
        reference = torch.stack(runners[args.runner_modes[0]].run(views))
        times = {mode: [] for mode in runners}
        for _ in range(args.reps):
            for mode, runner in runners.items():
                sync(device)
                t = time.perf_counter()
                runner.run(views)
                times[mode].append(time.perf_counter() - t)
        for mode, runner in runners.items():
            diff = (torch.stack(runner.run(views)) - reference).abs().max()
            out[mode][f"batch{size}_ms"] = spread(times[mode], 1e3)
            out[mode][f"batch{size}_max_prob_diff"] = float(diff)
    print(json.dumps({"runner": out}), flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="ViT-B-16")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--views", type=int, default=3, help="temporal clips x spatial crops")
    parser.add_argument("--image-size", type=int, default=224, help="smaller: a quick dry run")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--modes", default=None, help=f"comma list of {', '.join(MODES)}")
    parser.add_argument(
        "--throughput-videos",
        type=int,
        default=None,
        help="the throughput batch, in videos (GPU: 64 for ViT-B, 16 for ViT-L; CPU: 2)",
    )
    parser.add_argument("--reps", type=int, default=None, help="interleaved repeats (GPU 15)")
    parser.add_argument("--target-s", type=float, default=None, help="seconds per timed repeat")
    parser.add_argument("--roofline-n", type=int, default=None, help="GPU 8192, CPU 2048")
    parser.add_argument("--no-unmerged", action="store_true")
    parser.add_argument("--no-kernels", dest="kernels", action="store_false")
    parser.add_argument("--train-sets", default=None, help="GPU: adapters,full,linear_probe")
    parser.add_argument("--train-batches", default=None, help="GPU: 8,32")
    parser.add_argument("--train-steps", type=int, default=None)
    parser.add_argument(
        "--runner-modes", default=None, help="ModelRunner compile settings (GPU: all three)"
    )
    parser.add_argument("--runner-batch", type=int, default=16, help="its max_batch_size, views")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    large = not args.backbone.startswith("ViT-B")
    # bf16 on a CPU without native bf16 (AVX512-BF16, AMX) is emulated: ~1 GFLOP/s, no signal.
    default_modes = (
        "autocast,bf16,compile,cudagraphs"
        if gpu
        else ("fp32,autocast,bf16" if cpu_has_bf16() else "fp32")
    )
    args.modes = [m for m in (default_modes if args.modes is None else args.modes).split(",") if m]
    unknown = set(args.modes) - set(MODES)
    if unknown:
        parser.error(f"unknown modes {sorted(unknown)}")
    # Casts are in place: the fp32 modes go first, before the weights are rounded to bf16.
    args.modes = sorted(args.modes, key=MODES.index)
    throughput = args.throughput_videos or ((16 if large else 64) if gpu else 2)
    args.batches = sorted({1, throughput})
    args.reps = args.reps or (15 if gpu else 5)
    args.target_s = args.target_s if args.target_s is not None else (0.2 if gpu else 0.0)
    args.roofline_n = args.roofline_n or (8192 if gpu else 2048)
    sets = args.train_sets if args.train_sets is not None else ("adapters,full,linear_probe" * gpu)
    args.train_sets = [s for s in sets.split(",") if s]
    batches = args.train_batches or ("8,32" if gpu else "2")
    args.train_batches = [int(b) for b in batches.split(",")]
    args.train_steps = args.train_steps or (10 if gpu else 3)
    runner_modes = args.runner_modes
    if runner_modes is None:
        runner_modes = "off,default,reduce-overhead" if gpu else ""
    args.runner_modes = [m for m in runner_modes.split(",") if m]

    torch.manual_seed(0)
    unmerged = build_model(preset(args)).eval()
    with torch.no_grad():  # trained-looking adapters, so merging has real work to fold
        for adapter in adapters_of(unmerged):
            adapter.up.weight.normal_(std=0.02)
    merged = merge_adapters(unmerged)
    plain = PlainImageModel(merged).eval()
    models = {"plain": plain, "merged": merged}
    if not args.no_unmerged:
        models["unmerged"] = unmerged
    for m in models.values():
        m.to(device)
    cfg = merged.cfg
    clip = (3, cfg.num_frames, cfg.image_size, cfg.image_size)
    with torch.inference_mode():
        video = torch.randn(args.views, *clip, device=device)
        macs = {name: count_macs(lambda m=m: m(video)) for name, m in models.items()}
    params = {name: sum(p.numel() for p in m.parameters()) for name, m in models.items()}
    machine = (
        torch.cuda.get_device_name(device)
        if gpu
        else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    )
    results = {
        "machine": machine,
        "torch": torch.__version__,
        "model_code": __import__("model").__file__,
        "setting": f"{args.backbone}, {cfg.num_frames} frames x {args.views} views per video",
        "throughput_videos": throughput,
        "reps": args.reps,
        "params_M": {k: round(v / 1e6, 2) for k, v in params.items()},
        "gmacs_per_video": {k: round(v / 1e9, 1) for k, v in macs.items()},
        "flops_ratio_merged_over_plain": macs["merged"] / macs["plain"],
    }
    print(json.dumps(results), flush=True)

    def save():
        if args.json:
            with open(args.json, "w") as f:
                json.dump(results, f, indent=1)

    tmp = tempfile.TemporaryDirectory()
    if args.runner_modes:  # saved now: the inference modes cast the models in place
        from model import save_merged

        checkpoint = save_merged(merged, Path(tmp.name) / "model.safetensors")
    if args.modes:
        started = time.perf_counter()
        results["inference"] = bench_inference(args, device, models, macs, clip)
        results["inference_s"] = round(time.perf_counter() - started, 1)
        save()
    if args.runner_modes:
        started = time.perf_counter()
        results["runner"] = bench_runner(args, device, checkpoint)
        results["runner_s"] = round(time.perf_counter() - started, 1)
        save()
    del models, merged, unmerged, plain
    if args.train_sets:
        started = time.perf_counter()
        results["training"] = bench_training(args, device)
        results["training_s"] = round(time.perf_counter() - started, 1)
        save()
    print(json.dumps(summary(results), indent=1))


def summary(results: dict) -> dict:
    """The figures the targets name, one line each."""
    lines = {}
    for mode, run in results.get("inference", {}).items():
        for videos, r in run["batches"].items():
            plain, merged = r["plain"], r["merged"]
            ratio = r["merged_over_plain"]
            lines[f"{mode} {videos} video(s)"] = (
                f"plain {plain['ms_per_call']['median']} ms, "
                f"merged {merged['ms_per_call']['median']} ms; "
                f"merged/plain {ratio['median']} [{ratio['min']}, {ratio['max']}]; merged "
                f"{merged['videos_per_s']} videos/s, {merged['fraction_of_roofline']} of peak"
            )
    for key, r in results.get("training", {}).items():
        memory = f", {r['peak_memory_GB']} GB" if "peak_memory_GB" in r else ""
        lines[f"train {key}"] = f"{r['clips_per_s']} clips/s{memory}"
    return lines


if __name__ == "__main__":
    main()
