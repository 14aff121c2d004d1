#!/usr/bin/env bash
# Every GPU measurement of the model path, for one call on a lent GPU machine (no network, torch
# preinstalled, no Ray). Results land in $OUT as each stage ends, so a stage cut off by its time
# limit still leaves the ones before it. Prepare here, in the repository root:
#
#   ../shared/tools/device-wheels.sh                      # .whl/: open_clip, pydantic (+ PyAV)
#   rm -f .whl/av-*.whl                                   # not needed here; 36 MB of the 64
#   git worktree add .baseline <old commit>               # "today's" code, measured alike
#
# then run `bash benchmarks/gpu_model.sh [stage ...]` there with carry [".whl", ".baseline"].
# Stages (default: all, in this order of priority). Each has a time limit; together 650 s, so
# two calls of about 5.5 minutes each (plus the wheel install and the machine's start, about 13
# of a 15-minute device budget): `vitb train baseline`, then `vitl runner`:
#   vitb      ViT-B/16 8x3: every mode at 1 and 64 videos, which SDPA kernels ran
#   train     ViT-B/16 training steps: adapters, full, linear probe at batch 8 and 32
#   baseline  the same script on .baseline's model code: eager modes and training
#   vitl      ViT-L/14 8x3 at 1 and 16 videos, every mode
#   runner    the service's ModelRunner per compile setting (off, default, reduce-overhead):
#             warm-up per padded batch size (1, 2, 4 views: six compilations), latency at 1, 3
#             and 4 views, answers vs eager
# EXTRA="--device cpu --image-size 32 --reps 1" runs the same stages on a CPU, as a dry run.
set -uo pipefail
source benchmarks/device_env.sh
python3 -c "import torch; print(torch.__version__, torch.cuda.is_available() and torch.cuda.get_device_name())" | tee "$OUT/env.txt"

stage() {  # name, seconds, code root, bench arguments...
  local name=$1 limit=$2 code=$3
  shift 3
  local began=$SECONDS
  PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$code" timeout "$limit" \
    python3 benchmarks/bench_model.py --json "$OUT/$name.json" "$@" ${EXTRA:-} >"$OUT/$name.log" 2>&1
  echo "stage $name: exit $? after $((SECONDS - began)) s" | tee -a "$OUT/stages.txt"
  tail -n 30 "$OUT/$name.log"
}

stages=("$@")
[[ ${#stages[@]} -gt 0 ]] || stages=(vitb train baseline vitl runner)
for s in "${stages[@]}"; do
  case $s in
    vitb) stage vitb 190 "$PWD" --runner-modes "" --train-sets "" ;;
    train) stage train 60 "$PWD" --modes "" --runner-modes "" --train-sets adapters,full,linear_probe ;;
    runner) stage runner 160 "$PWD" --modes "" --train-sets "" --runner-batch 4 \
      --runner-modes off,default,reduce-overhead ;;
    baseline)
      if [[ -d .baseline/model ]]; then
        stage baseline 90 "$PWD/.baseline" --modes autocast,bf16 --runner-modes "" \
          --train-sets adapters,full
      else
        echo "stage baseline: no .baseline worktree carried" | tee -a "$OUT/stages.txt"
      fi
      ;;
    vitl) stage vitl 150 "$PWD" --backbone ViT-L-14 --no-unmerged --runner-modes "" \
      --train-sets "" --reps 9 ;;
    *) echo "unknown stage $s" >&2 ;;
  esac
done
