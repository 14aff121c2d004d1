#!/usr/bin/env bash
# The timeline on a lent GPU machine, for one call (about 2 minutes; no network, torch
# preinstalled, no Ray): bench_timeline.py in one process with the paper's K400 ViT-B/16 8-frame
# layout (random weights, merged), decode-only beside it. Prepare here, in the repository root:
#
#   ../shared/tools/device-wheels.sh         # .whl/: open_clip, pydantic, PyAV
#
# then run `bash benchmarks/gpu_timeline.sh` there with carry [".whl"].
# EXTRA="--device cpu --minutes 0.5 --reps 1" is the CPU dry run (the window spans 14 s of
# this 8 fps video: 8 frames 16 apart, the K400 layout).
set -uo pipefail
source benchmarks/device_env.sh
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD
timeout 300 python3 benchmarks/bench_timeline.py --random-vitb --minutes 2 --reps 3 \
  --json "$OUT/timeline_gpu.json" ${EXTRA:-} 2>&1 | tee "$OUT/gpu_timeline.log" | tail -n 40
echo "exit ${PIPESTATUS[0]}"
