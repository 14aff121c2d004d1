"""What a busy decoder on the same cores costs the model, by the decoder's CPU priority.

The shipped demo model (service.model_runner.ModelRunner, 2 torch threads, OpenMP passive as
the service's model replica runs) times batches of 1, 3 and 6 views: alone, beside a process
that keeps one core busy at normal priority, at nice 19, and at SCHED_IDLE (what the service's
Decoder used, for a while, for plans over a cost threshold: benchmarks/README.md says why it
was taken out). Medians of 5 calls after a warm one.

    .venv/bin/python benchmarks/idle_priority.py --json benchmarks/results/idle_priority_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # read when torch loads

import torch  # noqa: E402

BUSY = """
import os, sys
if sys.argv[1] == "idle":
    os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
else:
    os.nice(int(sys.argv[1]))
while True:
    sum(range(10**6))
"""


def main() -> dict:
    from service.model_runner import ModelRunner
    from training.demo import SHIPPED

    torch.set_num_threads(2)
    runner = ModelRunner(str(SHIPPED), "cpu")

    def batch_s(n: int) -> float:
        views = list(torch.randn(n, *runner.clip_shape))
        times = []
        for _ in range(6):
            start = time.perf_counter()
            runner.run(views)
            times.append(time.perf_counter() - start)
        return round(statistics.median(times[1:]), 3)

    out = {}
    for competitor in ("none", "0", "19", "idle"):
        busy = None
        if competitor != "none":
            busy = subprocess.Popen([sys.executable, "-c", BUSY, competitor])
            time.sleep(0.5)
        try:
            out[competitor] = {n: batch_s(n) for n in (1, 3, 6)}
        finally:
            if busy:
                busy.kill()
                busy.wait()
        print(competitor, out[competitor], flush=True)
    return {"cpu_count": os.cpu_count(), "batch_s_by_competitor": out}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    result = main()
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
