# Sourced by the GPU scripts (gpu_model.sh, gpu_decode.sh) on a lent GPU machine: $OUT, the
# carried wheels installed (that machine has no network), and what nvidia-smi says.
OUT=${OUT:-/tmp/zeroi2v-gpu}
mkdir -p "$OUT"
if [[ -d .whl ]]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONUNBUFFERED=1
nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1 || true
