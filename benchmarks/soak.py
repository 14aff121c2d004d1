"""The service under a mixed hostile load, on the real Ray app (issue: hardening).

    python benchmarks/soak.py [--model M] [--seconds 60] [--json out.json]

Phases, one service: (1) unloaded: normal requests one at a time, their p95; (2) capacity:
normal requests from 8 clients at once, the rate they are served at; (3) the hostile mix for
--seconds: max_pending_requests clients trickling bodies at 64 bytes/s (reconnecting when cut
off), requests at the per-request cost cap, requests with 1 MiB headers twice a second, and
normal requests at half the measured capacity; (4) 15 s of quiet. A cost-cap request comes
every --cost-cap-every s, by default every (its time alone / --cost-cap-share) s: with the
default share of 0.2 it holds the machine a fifth of the time, so that with the normal traffic
the mix is about 70% of what the machine can do, a load it can carry, whatever its speed.
Reported: the normal requests' success rate and p95 during the mix against unloaded, what the
hostile requests got, and memory as the summed RSS of Ray's HTTP proxy and every Serve replica
(with its child processes) before, at its peak during, and after. Targets (README): >= 95% of
normal requests answered 200, their p95 <= 3x unloaded, memory after within 10% of before.

The cost-cap video: flat 2160x2160 frames with a single keyframe, so tiny on disk, asked for
with temporal_clips at max_views: its plan decodes almost every frame, sized to just under
max_decode_megapixels.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import av
import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from service.settings import ServiceSettings  # noqa: E402
from training.demo import SHIPPED, write_clips  # noqa: E402

SIDE = 2160


def rss_mb() -> dict[str, float]:
    """RSS of Ray's HTTP proxy and of the Serve replicas by deployment (controller excluded),
    each with its child processes (a decoder's low-priority process), and their sum ("total"),
    in MB."""
    kinds: dict[int, str] = {}
    parents: dict[int, int] = {}
    rss: dict[int, float] = {}
    for pid in map(int, filter(str.isdigit, os.listdir("/proc"))):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().split(b"\x00")[0].decode()
            with open(f"/proc/{pid}/status") as f:
                status = dict(line.split(":", 1) for line in f if ":" in line)
        except (OSError, ValueError):
            continue
        parents[pid] = int(status["PPid"])
        rss[pid] = int(status.get("VmRSS", "0 kB").split()[0]) / 1024
        if cmd.startswith("ray::ProxyActor"):
            kinds[pid] = "Proxy"
        elif cmd.startswith("ray::ServeReplica"):
            kinds[pid] = cmd.rsplit(":", 1)[-1].split(".")[0]  # "Ingress.handle_request..."
    by_kind: dict[str, float] = {}
    for pid, mb in rss.items():
        ancestor, hops = pid, 0
        while ancestor not in kinds and ancestor in parents and hops < 8:
            ancestor, hops = parents[ancestor], hops + 1
        if ancestor in kinds:
            kind = kinds[ancestor] + (" children" if ancestor != pid else "")
            by_kind[kind] = by_kind.get(kind, 0.0) + mb
    by_kind["total"] = sum(by_kind.values())
    return {k: round(v, 1) for k, v in sorted(by_kind.items())}


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[-1] if len(values) >= 2 else float("nan")


def cost_cap_video(path: Path, settings: ServiceSettings) -> tuple[Path, int]:
    """Flat frames, one keyframe: each of the plan's frames costs a full decode from frame 0
    onwards, so a request decodes about all of them."""
    frames = int(settings.max_decode_megapixels * 1e6 / (SIDE * SIDE) * 0.95)
    flat = av.VideoFrame.from_ndarray(np.full((SIDE, SIDE, 3), 96, np.uint8), format="rgb24")
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=8)
        stream.width = stream.height = SIDE
        stream.pix_fmt = "yuv420p"
        stream.options = {"preset": "veryfast", "x264-params": f"keyint={frames + 1}:scenecut=0"}
        for _ in range(frames):
            for packet in stream.encode(flat):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path, frames


STAGES = ("decode_wait_ms", "decode_ms", "queue_ms", "inference_ms")


async def normal_request(
    client: httpx.AsyncClient, url: str, clip: bytes, stages: list[dict] | None = None
) -> tuple[int, float]:
    """(status, seconds); with `stages`, a 200's timings by stage, its model batch size and
    when it was sent (seconds on perf_counter's clock) are appended to it."""
    start = time.perf_counter()
    try:
        r = await client.post(url, content=clip, headers={"content-type": "video/mp4"})
        status = r.status_code
        if status == 200 and stages is not None:
            answer = r.json()
            record = {k: answer["timings"][k] for k in STAGES}
            record.update(sent=start, seconds=time.perf_counter() - start,
                          batch_size=answer["batch_size"])  # fmt: skip
            stages.append(record)
    except httpx.HTTPError:
        status = 0
    return status, time.perf_counter() - start


def stage_p95s(stages: list[dict]) -> dict[str, float]:
    """Each stage's p95 over the requests, in seconds: where a slow request's time went."""
    return {k: round(p95([s[k] / 1e3 for s in stages]), 3) for k in STAGES}


async def main(args) -> dict:
    from service.server import local_defaults, start, stop

    overrides = dict(kv.split("=", 1) for kv in args.set)
    # The settings the app runs with (`start` fills in the local defaults, decode_replicas).
    settings = ServiceSettings(**local_defaults({"model_path": str(args.model), **overrides}))
    work = Path(tempfile.mkdtemp(prefix="soak-"))
    clip = write_clips(work / "clips")[0].read_bytes()
    heavy, heavy_frames = cost_cap_video(work / "cost_cap.mp4", settings)
    heavy_bytes = heavy.read_bytes()
    port = args.port
    start({"model_path": str(args.model), **overrides}, port=port, metrics_port=args.metrics_port)
    base = f"http://127.0.0.1:{port}"
    url = f"{base}/classify"
    report: dict = {"cost_cap_video": {"frames": heavy_frames, "side": SIDE,
                                       "bytes": len(heavy_bytes)}}  # fmt: skip
    try:
        async with httpx.AsyncClient(timeout=300) as client:
            for _ in range(3):  # warm
                await normal_request(client, url, clip)
            unloaded_stages: list[dict] = []
            unloaded = [
                (await normal_request(client, url, clip, unloaded_stages))[1] for _ in range(30)
            ]
            report["unloaded_p95_s"] = p95(unloaded)
            report["unloaded_stage_p95_s"] = stage_p95s(unloaded_stages)
            # A cost-cap request alone: how long it holds the machine, and so how often one can
            # come for the mix to stay a load the machine can carry (--cost-cap-share). The
            # first costly decode of a decode replica also starts its low-priority child,
            # which a steady mix (one every 35-55 s, within the child's 60 s) finds running:
            # requests at once until every replica has answered one (Ray's router may send two
            # sent together to the same replica), then one alone is timed.
            q = f"?temporal_clips={settings.max_views}"

            async def cost_cap() -> tuple[float, httpx.Response]:
                sent = time.perf_counter()
                r = await client.post(url + q, content=heavy_bytes,
                                      headers={"content-type": "video/mp4"})  # fmt: skip
                if r.status_code != 200:
                    raise SystemExit(
                        f"the cost-cap request alone got {r.status_code}: {r.text[:300]}"
                    )
                return time.perf_counter() - sent, r

            started: set[str] = set()
            for _ in range(4):
                answers = await asyncio.gather(
                    *(cost_cap() for _ in range(settings.decode_replicas - len(started)))
                )
                started |= {r.json()["decoder"]["replica"] for _, r in answers}
                if len(started) == settings.decode_replicas:
                    break
            else:
                raise SystemExit(f"cost-cap requests reached {len(started)} decode replicas only")
            alone, r = await cost_cap()
            report["cost_cap_alone"] = {"status": r.status_code, "seconds": alone,
                                        "timings": r.json().get("timings")}  # fmt: skip
            # Memory before the mix, as the mix finds the replicas (children started).
            report["memory_before_mb"] = rss_mb()
            every = args.cost_cap_every or alone / args.cost_cap_share
            report["cost_cap_every_s"] = every

            t0, served = time.perf_counter(), 0
            while time.perf_counter() - t0 < 15:
                results = await asyncio.gather(
                    *(normal_request(client, url, clip) for _ in range(8))
                )
                served += sum(1 for status, _ in results if status == 200)
            capacity = served / (time.perf_counter() - t0)
            report["capacity_per_s"] = capacity

            stop_at = time.perf_counter() + args.seconds
            peak = [report["memory_before_mb"]["total"]]
            outcomes: dict[str, dict[int, int]] = {"slow": {}, "cost_cap": {}, "headers": {}}

            def count(kind: str, status: int) -> None:
                outcomes[kind][status] = outcomes[kind].get(status, 0) + 1

            async def trickler():
                async def body():
                    while time.perf_counter() < stop_at:
                        yield b"\x00" * 16
                        await asyncio.sleep(0.25)

                while time.perf_counter() < stop_at:
                    async with httpx.AsyncClient(timeout=120) as own:
                        try:
                            r = await own.post(url, content=body(),
                                               headers={"content-type": "video/mp4"})  # fmt: skip
                            count("slow", r.status_code)
                        except httpx.HTTPError:
                            count("slow", 0)

            async def cost_capped():
                async def one():
                    sent = time.perf_counter()
                    try:
                        r = await client.post(url + q, content=heavy_bytes,
                                              headers={"content-type": "video/mp4"})  # fmt: skip
                        count("cost_cap", r.status_code)
                        answer = r.json() if r.status_code == 200 else {}
                        costly.append({"sent": sent, "seconds": time.perf_counter() - sent,
                                       **answer.get("timings", {}),
                                       "decoder": answer.get("decoder")})  # fmt: skip
                    except httpx.HTTPError:
                        count("cost_cap", 0)

                sent = []
                while time.perf_counter() < stop_at:  # open loop: one every `every` s
                    sent.append(asyncio.create_task(one()))
                    await asyncio.sleep(every)
                await asyncio.gather(*sent)

            async def big_headers():
                while time.perf_counter() < stop_at:
                    try:
                        r = await client.get(f"{base}/readyz",
                                             headers={"x-padding": "a" * 2**20})  # fmt: skip
                        count("headers", r.status_code)
                    except httpx.HTTPError:
                        count("headers", 0)
                    await asyncio.sleep(0.5)

            async def sampler():
                while time.perf_counter() < stop_at:
                    peak.append(rss_mb()["total"])
                    await asyncio.sleep(1.0)

            async def normal_traffic() -> list[tuple[int, float]]:
                interval, pending = 2.0 / capacity, []  # half the capacity, open loop
                next_at = time.perf_counter()
                while time.perf_counter() < stop_at:
                    pending.append(
                        asyncio.create_task(normal_request(client, url, clip, normal_stages))
                    )
                    next_at += interval
                    await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
                return await asyncio.gather(*pending)

            normal_stages: list[dict] = []
            costly: list[dict] = []
            mix_start = time.perf_counter()
            slow = settings.max_pending_requests
            hostile = [asyncio.create_task(trickler()) for _ in range(slow)]
            hostile += [asyncio.create_task(cost_capped()), asyncio.create_task(big_headers()),
                        asyncio.create_task(sampler())]  # fmt: skip
            normal = await normal_traffic()
            await asyncio.gather(*hostile)
            ok = [s for s, _ in normal if s == 200]
            report["normal"] = {
                "sent": len(normal),
                "rate_per_s": len(normal) / args.seconds,
                "ok_fraction": len(ok) / max(1, len(normal)),
                "statuses": {str(s): sum(1 for x, _ in normal if x == s) for s, _ in normal},
                "p95_s": p95([t for s, t in normal if s == 200]),
                "stage_p95_s": stage_p95s(normal_stages),
            }
            report["normal"]["p95_over_unloaded"] = (
                report["normal"]["p95_s"] / report["unloaded_p95_s"]
            )
            report["hostile"] = {k: {str(s): n for s, n in v.items()} for k, v in outcomes.items()}
            # When each request was sent (seconds into the mix) and how it went: whether the
            # slow normal requests are the ones beside a cost-cap request.
            report["series"] = {
                "normal": [{**r, "sent": round(r["sent"] - mix_start, 3)} for r in normal_stages],
                "cost_cap": [{**r, "sent": round(r["sent"] - mix_start, 3)} for r in costly],
            }
            report["memory_peak_mb"] = max(peak)
            await asyncio.sleep(15)
            report["memory_after_mb"] = rss_mb()
            report["memory_after_over_before"] = (
                report["memory_after_mb"]["total"] / report["memory_before_mb"]["total"]
            )
            r = await client.get(f"{base}/readyz")
            report["ready_after"] = r.status_code
    finally:
        stop()
    report["seconds"] = args.seconds
    report["targets_met"] = {
        "normal_ok >= 0.95": report["normal"]["ok_fraction"] >= 0.95,
        "p95 <= 3x unloaded": report["normal"]["p95_over_unloaded"] <= 3,
        "memory after within 10%": abs(report["memory_after_over_before"] - 1) <= 0.10,
    }
    return report


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=SHIPPED)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument(
        "--cost-cap-every",
        type=float,
        help="seconds between requests at the cost cap (default: from the share)",
    )
    parser.add_argument(
        "--cost-cap-share",
        type=float,
        default=0.2,
        help="one cost-cap request every (its time alone / this) seconds",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="a service setting for the run (e.g. low_priority_megapixels=0)",
    )
    parser.add_argument("--port", type=int, default=8011)
    parser.add_argument("--metrics-port", type=int, default=8091)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    result = asyncio.run(main(args))
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
