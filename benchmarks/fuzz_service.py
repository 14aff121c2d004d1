"""Thousands of damaged real videos through a served Ray app: no 5xx, no hang, ready throughout.

    zeroi2v serve --model M &                       # the real Ray app (any model)
    python benchmarks/fuzz_service.py --n 10000 --json benchmarks/results/fuzz_service.json

Upload k is tests/test_fuzz.py's `mutate(clip, k)` of the clip k % len(clips): zzuf bit flips
(1e-6 to 1e-2) or a seeded insertion, deletion, truncation, chunk swap or header over garbage,
so any answer is remade from its seed. Every eighth goes to /timeline, the rest to /classify,
`--concurrency` at a time. Reported: counts by status, 5xx (with their seeds), dropped
connections, answers slower than the request timeout, /readyz checked every 100 uploads, and
the summed RSS of Ray's proxy and Serve replicas before and after (soak.py's rss_mb).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.soak import rss_mb  # noqa: E402
from tests.test_fuzz import fuzz_clips, mutate  # noqa: E402


async def main(args) -> dict:
    folder = Path("/tmp/fuzz_service")
    folder.mkdir(exist_ok=True)
    data = fuzz_clips(folder)
    names = sorted(data)
    statuses: dict[str, int] = {}
    errors_5xx, dropped, slow, not_ready = [], [], [], []
    seeds = iter(range(args.start, args.start + args.n))
    before = rss_mb()
    started = time.perf_counter()
    async with httpx.AsyncClient(base_url=args.url, timeout=args.timeout + 30) as client:

        async def worker() -> None:
            for seed in seeds:
                name = names[seed % len(names)]
                body, what = mutate(data[name], seed)
                path = "/timeline?top_k=2&stride_s=1" if seed % 8 == 7 else "/classify?top_k=2"
                t0 = time.perf_counter()
                try:
                    r = await client.post(path, content=body,
                                          headers={"content-type": "video/mp4"})  # fmt: skip
                    await r.aread()
                except httpx.HTTPError as e:
                    dropped.append({"seed": seed, "clip": name, "what": what, "error": repr(e)})
                    continue
                seconds = time.perf_counter() - t0
                statuses[str(r.status_code)] = statuses.get(str(r.status_code), 0) + 1
                case = {"seed": seed, "clip": name, "what": what, "status": r.status_code}
                if r.status_code >= 500:
                    errors_5xx.append({**case, "body": r.text[:300]})
                if seconds > args.timeout:
                    slow.append({**case, "seconds": round(seconds, 1)})
                if seed % 100 == 0:
                    ready = await client.get("/readyz")
                    if ready.status_code != 200:
                        not_ready.append(seed)
                    done = sum(statuses.values())
                    print(f"{done} answered, {statuses}, {len(dropped)} dropped", flush=True)

        await asyncio.gather(*(worker() for _ in range(args.concurrency)))
    return {
        "uploads": args.n,
        "first_seed": args.start,
        "clips": {n: len(b) for n, b in data.items()},
        "seconds": round(time.perf_counter() - started, 1),
        "statuses": dict(sorted(statuses.items())),
        "5xx": errors_5xx,
        "dropped": dropped,
        "slower_than_timeout": slow,
        "readyz_not_green_at": not_ready,
        "rss_mb_before": before,
        "rss_mb_after": rss_mb(),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--start", type=int, default=0, help="the first seed")
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument(
        "--timeout", type=float, default=120.0, help="the service's request timeout"
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    result = asyncio.run(main(args))
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
