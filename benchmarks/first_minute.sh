#!/usr/bin/env bash
# The first minute of a new user: a fresh clone and an empty model cache, `make setup`, then
# `make run` until /readyz answers, then one demo clip classified. Prints the two times.
#   bash benchmarks/first_minute.sh [REPO]      (REPO: what to clone, default this checkout)
set -euo pipefail
repo=$(realpath "${1:-$(dirname "$0")/..}")
work=$(mktemp -d)
pid=
trap '[ -n "$pid" ] && kill -TERM -- -"$pid" 2>/dev/null; sleep 8; rm -rf "$work"' EXIT
git clone -q "$repo" "$work/clone"
cd "$work/clone"
export ZEROI2V_CACHE="$work/cache"
t0=$(date +%s.%N)
make setup >/dev/null
t1=$(date +%s.%N)
setsid make run >"$work/run.log" 2>&1 &  # its own process group, stopped as one
pid=$!
until curl -fs localhost:8000/readyz >/dev/null 2>&1; do
  sleep 0.25
  kill -0 "$pid" 2>/dev/null || { cat "$work/run.log"; exit 1; }
done
t2=$(date +%s.%N)
.venv/bin/zeroi2v demo clips "$work/clips" >/dev/null
answer=$(curl -fsS -F file=@"$work/clips/rotating_clockwise_0.mp4" 'localhost:8000/classify?top_k=3')
echo "environment installed in $(echo "$t1 - $t0" | bc) s; /readyz after a further $(echo "$t2 - $t1" | bc) s"
echo "$answer"
