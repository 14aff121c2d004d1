"""Decoding on a GPU machine: NVDEC against the CPU decoder, and how fast each feeds the model.

No Ray on that machine: the stages drive the plain code the replicas run (video.views'
decode_clips, the Decoder's work; service.model_runner's ModelRunner). Each stage writes its
JSON to --out as soon as it ends.
  exact      NVDEC frames against CPU frames (max and mean absolute difference, full size and
             as resized clips) and the top-1 of a merged ViT-B/16 on both (random weights: a
             check that the difference does not move the answer, not an accuracy)
  decode     videos/s of the K400 request (3 clips x 8 frames at interval 16, 224 px, 3 crops)
             with --procs CPU processes (this checkout's decode_clips, and today's load_views
             from --baseline), with NVDEC processes, and with both at once
  model      videos/s of the merged ViT-B/16 (bf16 weights) on those clips, batches of 64 views
The report names the bound: min(decode rate with both decoders, model rate).

    python benchmarks/gpu_decode.py --video clip.mp4 --baseline .baseline-decode --out DIR
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

# Only names today's checkout has too: --old-only runs this file on its tree.
from video.decode import DecodeLimits, VideoReader
from video.sampling import SamplingSpec
from video.views import ViewSpec

SPEC = ViewSpec(SamplingSpec(num_frames=8, interval=16, num_clips=3), 224, spatial_crops=3)
LIMITS = DecodeLimits(threads=1)


def write(out: Path, name: str, result: dict) -> None:
    (out / f"{name}.json").write_text(json.dumps(result, indent=1))
    print(name, json.dumps(result, indent=1), flush=True)


def vitb(path: Path) -> Path:
    from model import build_model, merge_adapters, paper_preset, save_merged

    cfg = paper_preset("k400", "ViT-B-16", 8)
    preprocess = {**SPEC.to_preprocess(), "mean": list(SPEC.mean), "std": list(SPEC.std)}
    return save_merged(merge_adapters(build_model(cfg)), path, preprocess=preprocess)


def exact(video: Path, model: Path, device: str) -> dict:
    from service.model_runner import ModelRunner
    from video.views import decode_clips

    with VideoReader(video, LIMITS) as reader:
        plan = SPEC.sampling.plan(reader.info.num_frames, train=False)
        targets = [i for clip in plan for i in clip]
        cpu = reader.read(targets)
    with VideoReader(video, LIMITS, device="cuda") as reader:
        gpu, hardware = reader.read(targets), reader.hardware
    diff = (cpu.int() - gpu.int()).abs().float()
    a = decode_clips(video, SPEC, LIMITS)
    b = decode_clips(video, SPEC, LIMITS, device="cuda")
    clip_diff = (a.clips.int() - b.clips.int()).abs().float()
    runner = ModelRunner(str(model), device=device)
    pa, pb = (torch.stack(runner.run(runner.views(d.clips, SPEC))).mean(0) for d in (a, b))
    return {
        "nvdec_used": hardware,
        "frames_full_size": {"max_abs": diff.max().item(), "mean_abs": diff.mean().item()},
        "clips_224": {"max_abs": clip_diff.max().item(), "mean_abs": clip_diff.mean().item()},
        "frames_decoded": {"cpu": a.frames_decoded, "nvdec": b.frames_decoded},
        "top1_same": bool(pa.argmax() == pb.argmax()),
        "prob_max_abs_diff": (pa - pb).abs().max().item(),
    }


def _decode_loop(args: tuple) -> tuple[int, float, float]:
    """One worker process: decode the clip until `seconds` pass; (videos, wall, cpu)."""
    video, device, seconds, old = args
    from video.views import load_views

    torch.set_num_threads(1)
    start, cpu, n = time.perf_counter(), time.process_time(), 0
    while time.perf_counter() - start < seconds:
        if old:
            load_views(video, SPEC, LIMITS)
        else:
            from video.views import decode_clips

            decode_clips(video, SPEC, LIMITS, device=device)
        n += 1
    return n, time.perf_counter() - start, time.process_time() - cpu


def decode_rate(video: Path, workers: list[str], seconds: float, old: bool = False) -> dict:
    """Videos/s with one process per entry of `workers` ("cpu" or "cuda"), all at once."""
    if not workers:
        return {}
    # spawn: a forked child would inherit this process's CUDA state, which CUDA does not allow
    with ProcessPoolExecutor(len(workers), mp_context=multiprocessing.get_context("spawn")) as pool:
        list(pool.map(_decode_loop, [(video, w, 0.5, old) for w in workers]))  # warm
        done = list(pool.map(_decode_loop, [(video, w, seconds, old) for w in workers]))
    by = {}
    for w, (n, wall, cpu) in zip(workers, done, strict=True):
        entry = by.setdefault(w, {"processes": 0, "videos_per_s": 0.0, "core_ms_per_video": []})
        entry["processes"] += 1
        entry["videos_per_s"] += n / wall
        entry["core_ms_per_video"].append(cpu / max(n, 1) * 1e3)
    for entry in by.values():
        ms = sorted(entry["core_ms_per_video"])
        entry["core_ms_per_video"] = round(ms[len(ms) // 2], 1)
        entry["videos_per_s"] = round(entry["videos_per_s"], 2)
    return {"total_videos_per_s": round(sum(e["videos_per_s"] for e in by.values()), 2), **by}


def model_rate(video: Path, model: Path, device: str, batch_views: int, reps: int) -> dict:
    from service.model_runner import ModelRunner
    from video.views import decode_clips

    clips = decode_clips(video, SPEC, LIMITS).clips
    runner = ModelRunner(str(model), device=device, max_batch_size=batch_views)
    runner.warm_up()
    per_video = len(runner.views(clips, SPEC))
    videos = max(1, batch_views // per_video)

    def step():
        views = [v for _ in range(videos) for v in runner.views(clips, SPEC)]
        runner.run(views)

    step()
    if runner.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(reps):
        step()
    if runner.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {
        "views_per_video": per_video,
        "videos_per_batch": videos,
        "precision": str(runner.dtype),
        "videos_per_s": round(reps * videos / seconds, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--video", type=Path, required=True)
    parser.add_argument("--baseline", type=Path, default=None, help="today's checkout")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "/tmp/gpu")))
    parser.add_argument("--procs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--nvdec-procs", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--batch-views", type=int, default=64)
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--stages", default="exact,decode,model")
    parser.add_argument("--old-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.old_only:  # run by `decode` inside the baseline's tree
        print(json.dumps(decode_rate(args.video, ["cpu"] * args.procs, args.seconds, old=True)))
        return
    from video.decode import resolve_decode_device

    device = "cuda" if torch.cuda.is_available() else "cpu"
    nvdec = resolve_decode_device("auto") == "cuda"
    stages = args.stages.split(",")
    model = vitb(args.out / "vitb16_random.safetensors")
    env = {
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "cores": os.cpu_count(),
        "nvdec": nvdec,
        "torch": torch.__version__,
    }
    write(args.out, "env", env)
    if "exact" in stages:
        if nvdec:
            write(args.out, "exact", exact(args.video, model, device))
        else:
            write(args.out, "exact", {"skipped": "no NVDEC here (resolve_decode_device)"})
    if "decode" in stages:
        result = {"clip": args.video.name, "seconds": args.seconds}
        if args.baseline is not None:
            cmd = [sys.executable, str(Path(__file__).resolve()), "--video", str(args.video),
                   "--procs", str(args.procs), "--seconds", str(args.seconds), "--old-only",
                   "--out", str(args.out / "baseline")]  # fmt: skip
            path = f"{args.baseline.resolve()}:{os.environ.get('PYTHONPATH', '')}"
            env_vars = {**os.environ, "PYTHONPATH": path}
            run = subprocess.run(cmd, env=env_vars, capture_output=True, text=True)
            result["today_cpu"] = (
                json.loads(run.stdout.strip().splitlines()[-1]) if run.returncode == 0
                else {"error": run.stderr[-2000:]}
            )  # fmt: skip
            write(args.out, "decode", result)
        result["cpu"] = decode_rate(args.video, ["cpu"] * args.procs, args.seconds)
        write(args.out, "decode", result)
        if nvdec:
            result["nvdec"] = decode_rate(args.video, ["cuda"] * args.nvdec_procs, args.seconds)
            write(args.out, "decode", result)
            both = ["cpu"] * args.procs + ["cuda"] * args.nvdec_procs
            result["both"] = decode_rate(args.video, both, args.seconds)
        write(args.out, "decode", result)
    if "model" in stages:
        rate = model_rate(args.video, model, device, args.batch_views, args.reps)
        write(args.out, "model", rate)
        decode = json.loads((args.out / "decode.json").read_text()) if "decode" in stages else {}
        best = max(
            (decode.get(k, {}).get("total_videos_per_s", 0) for k in ("cpu", "nvdec", "both")),
            default=0,
        )
        today = decode.get("today_cpu", {}).get("total_videos_per_s")
        write(args.out, "summary", {
            "decode_videos_per_s": best,
            "model_videos_per_s": rate["videos_per_s"],
            "pipeline_bound_videos_per_s": min(best, rate["videos_per_s"]),
            "bound_by": "decode" if best < rate["videos_per_s"] else "model",
            "today_videos_per_s": today,
            "over_today": round(min(best, rate["videos_per_s"]) / today, 2) if today else None,
        })  # fmt: skip


if __name__ == "__main__":
    main()
