"""Where one /classify request's CPU goes, process by process, on the real Ray app.

Requests are sent one at a time (no contention between them; `--concurrency N`: N clients, the
load of bench_service.py), after the app has settled, and each process's CPU time, and each
replica's page faults, are divided by the number of requests (so is the wall time: with N
clients, wall_ms_per_video is the inverse of the throughput, not a request's latency):

    python benchmarks/cpu_by_process.py --video .gpu/bbb10.mp4 --set low_priority_megapixels=0

The model is the tiny random merged ZeroI2V of bench_service.py (the service is decode bound,
as on a GPU). `--set FIELD=VALUE` changes a service setting (repeatable), so one checkout can be
measured with and without a feature; PYTHONPATH=<worktree> measures another commit.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_service import free_port, settle, tiny_model  # noqa: E402

STAT_FIELDS = ["user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal"]


def cpu_stat() -> list[int]:
    """The machine's CPU time by kind (clock ticks), from /proc/stat."""
    with open("/proc/stat") as f:
        return [int(v) for v in f.readline().split()[1 : 1 + len(STAT_FIELDS)]]


def process_times(psutil) -> dict[int, tuple[str, float, int]]:
    """pid -> (kind, CPU seconds, minor page faults) of every process."""
    out = {}
    for p in psutil.process_iter(["name"]):
        try:
            name = p.info["name"] or "?"
            if "ServeReplica" in name:
                name = name.split(":")[-1]  # the deployment
            with open(f"/proc/{p.pid}/stat") as f:
                minflt = int(f.read().rsplit(")", 1)[1].split()[7])
            out[p.pid] = (name.split(".")[0], sum(p.cpu_times()[:2]), minflt)
        except (OSError, psutil.Error):
            continue
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--video", type=Path, required=True)
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=1, help="clients sending at once")
    parser.add_argument("--views", default="3x3", help="temporal clips x spatial crops")
    parser.add_argument(
        "--set", action="append", default=[], metavar="FIELD=VALUE", help="VALUE as JSON"
    )
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.concurrency < 1 or args.requests < 1:
        parser.error("--concurrency and --requests must be >= 1")

    import httpx

    from service.server import start, stop

    settings = {"model_path": str(tiny_model(Path(tempfile.mkdtemp()) / "tiny224.safetensors"))}
    for item in args.set:
        field, _, value = item.partition("=")
        settings[field] = json.loads(value)
    start(settings, port=(port := free_port()), metrics_port=free_port())
    import psutil  # Ray's own copy, on sys.path once Ray has started

    clips, crops = args.views.split("x")
    url = f"http://127.0.0.1:{port}/classify?temporal_clips={clips}&spatial_crops={crops}"
    post = {"content": args.video.read_bytes(), "headers": {"content-type": "video/mp4"}}
    n = args.requests
    try:
        with httpx.Client(timeout=600) as client:

            def send(count: int) -> None:
                """`count` requests from args.concurrency clients (threads) at once."""
                with ThreadPoolExecutor(args.concurrency) as pool:
                    for r in pool.map(lambda _: client.post(url, **post), range(count)):
                        r.raise_for_status()

            send(max(2, args.concurrency))  # warm the whole path
            settle()
            stat, before, t = cpu_stat(), process_times(psutil), time.perf_counter()
            send(n)
            wall = time.perf_counter() - t
            after, stat = (
                process_times(psutil),
                [b - a for a, b in zip(stat, cpu_stat(), strict=True)],
            )
    finally:
        stop()
    cpu, faults = collections.Counter(), collections.Counter()
    for pid, (name, seconds, minflt) in after.items():  # processes started meanwhile: from 0
        _, seconds_before, minflt_before = before.get(pid, (name, 0.0, 0))
        cpu[name] += seconds - seconds_before
        faults[name] += minflt - minflt_before
    ticks = 1000 / os.sysconf("SC_CLK_TCK")  # ms per clock tick of /proc/stat
    result = {
        "settings": args.set,
        "concurrency": args.concurrency,
        "wall_ms_per_video": round(wall / n * 1e3),
        "cpu_ms_per_video": {k: round(v / n * 1e3) for k, v in cpu.most_common() if v / n > 5e-3},
        "total_cpu_ms_per_video": round(sum(cpu.values()) / n * 1e3),
        "minor_faults_per_video": {
            k: faults[k] // n for k in ("Decoder", "Ingress", "Model", "ray::ProxyActor")
        },
        "machine_ms_per_video": {
            k: round(v * ticks / n) for k, v in zip(STAT_FIELDS, stat, strict=True)
        },
    }
    print(json.dumps(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
