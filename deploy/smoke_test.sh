#!/usr/bin/env bash
# Smoke test of the service image, for any host with Docker (CI has none): run the image with a
# merged model mounted, wait until Docker's own HEALTHCHECK (/readyz) says healthy, classify a
# clip, and read the request counter from Ray's metrics export. Exits non-zero on any failure and
# prints the container's log.
#   deploy/smoke_test.sh IMAGE MODEL.safetensors CLIP.mp4 [docker run options...]
#   deploy/smoke_test.sh zeroi2v:latest models/model.safetensors clip.mp4 --gpus all
set -euo pipefail
image=$1 model=$(realpath "$2") clip=$3
shift 3
name="zeroi2v-smoke-$$"
docker run -d --name "$name" --shm-size=2g -p 8000:8000 -p 8080:8080 \
  -v "$model:/models/model.safetensors:ro" "$@" "$image" >/dev/null
trap 'docker rm -f "$name" >/dev/null' EXIT

started=$SECONDS
until [ "$(docker inspect -f '{{.State.Health.Status}}' "$name")" = healthy ]; do
  if [ "$(docker inspect -f '{{.State.Running}}' "$name")" != true ] || ((SECONDS - started > 600)); then
    docker logs "$name" 2>&1 | tail -50
    echo "smoke test: container never became healthy" >&2
    exit 1
  fi
  sleep 5
done
echo "healthy after $((SECONDS - started)) s"
docker inspect -f '{{.Config.User}} {{json .State.Health.Log}}' "$name" | head -c 400
echo
curl -fsS -F "file=@$clip" http://127.0.0.1:8000/classify
echo
sleep 12  # Ray's metrics agent exports on its own period
curl -fsS http://127.0.0.1:8080/metrics | grep -m3 '^ray_zeroi2v_requests_total' \
  || { echo "smoke test: no request counter in the metrics export" >&2; exit 1; }
