"""What the ingress does per request, as plain async code: admit, decode, infer, answer.

Decoding is CPU work (PyAV and torch release the GIL), so it runs in a bounded thread pool and
never blocks the event loop; the model runs elsewhere (the batched model deployment, reached
through `backend`). Admission is bounded too: past `max_pending_requests` a request is
answered 503 at once instead of queueing without limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from model.checkpoint import CheckpointInfo
from service import problems
from service.settings import ServiceSettings
from video.decode import DecodeLimits, DecodeTimeout, VideoError, VideoTooLarge
from video.views import ViewSpec, load_views


@dataclass(frozen=True)
class ClassifyParams:
    top_k: int = 5
    temporal_clips: int | None = None
    spatial_crops: int | None = None


@dataclass(frozen=True)
class Inference:
    """One request's result from the model: probabilities averaged over its views."""

    probabilities: torch.Tensor  # (num_classes,)
    inference_ms: float  # the model batch(es) this request's views ran in
    batch_size: int  # views in the largest batch this request's views ran in


class ModelBackend(Protocol):
    async def infer(self, views: torch.Tensor) -> Inference: ...
    async def ready(self) -> bool: ...
    async def model_card(self) -> dict: ...


class Metrics(Protocol):
    def observe_request(self, endpoint: str, status: int, seconds: float) -> None: ...
    def observe_stage(self, stage: str, seconds: float) -> None: ...
    def set_in_flight(self, count: int) -> None: ...


class VideoService:
    def __init__(
        self,
        settings: ServiceSettings,
        info: CheckpointInfo,
        backend: ModelBackend,
        metrics: Metrics | None = None,
    ):
        self.settings = settings
        self.info = info
        self.backend = backend
        self.metrics = metrics
        self.spec = ViewSpec.from_preprocess(info.preprocess)
        self.limits = DecodeLimits(
            max_width=settings.max_video_side,
            max_height=settings.max_video_side,
            max_pixels=settings.max_video_side**2,
            max_duration_s=settings.max_video_seconds,
            timeout_s=settings.decode_timeout_s,
            threads=1,  # parallelism comes from the pool: one request, one core
        )
        self.pool = ThreadPoolExecutor(settings.decode_workers, thread_name_prefix="decode")
        self.pending = 0

    @contextlib.asynccontextmanager
    async def admission(self):
        """Admit a request or answer 503 with Retry-After when too many are pending."""
        if self.pending >= self.settings.max_pending_requests:
            raise problems.overloaded(self.settings.retry_after_s)
        self.pending += 1
        self._gauge()
        try:
            yield
        finally:
            self.pending -= 1
            self._gauge()

    def _gauge(self) -> None:
        if self.metrics:
            self.metrics.set_in_flight(self.pending)

    def check_params(self, params: ClassifyParams) -> ClassifyParams:
        s = self.settings
        if params.top_k > s.max_top_k:
            raise problems.bad_parameters(f"top_k: at most {s.max_top_k}")
        if params.spatial_crops not in (None, 1, 3):
            raise problems.bad_parameters("spatial_crops: 1 (centre) or 3 (three crops)")
        spec = self.view_spec(params)
        if spec.num_views > s.max_views:
            raise problems.bad_parameters(
                f"temporal_clips x spatial_crops = {spec.num_views} views; at most {s.max_views}"
            )
        return params

    def view_spec(self, params: ClassifyParams) -> ViewSpec:
        return self.spec.with_views(params.temporal_clips, params.spatial_crops)

    async def decode(self, data: bytes, spec: ViewSpec) -> torch.Tensor:
        loop = asyncio.get_running_loop()
        try:
            views, _ = await loop.run_in_executor(
                self.pool, load_views, io.BytesIO(data), spec, self.limits
            )
        except VideoTooLarge as e:
            raise problems.Problem(413, "Video too large", str(e)) from e
        except DecodeTimeout as e:
            raise problems.Problem(422, "Video too slow to decode", str(e)) from e
        except VideoError as e:
            raise problems.unsupported(str(e)) from e
        return views

    async def classify(self, data: bytes, params: ClassifyParams, start: float) -> dict:
        spec = self.view_spec(params)
        t0 = time.perf_counter()
        views = await self.decode(data, spec)
        decode_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        result = await self.backend.infer(views)
        # Queue: the round trip to the model minus the model's own time (waiting for a batch,
        # transport), measured here since the model replica blocks while it computes.
        queue_ms = max(0.0, (time.perf_counter() - t1) * 1e3 - result.inference_ms)
        scores, indices = result.probabilities.topk(min(params.top_k, len(self.info.class_names)))
        total_s = time.perf_counter() - start
        if self.metrics:
            self.metrics.observe_stage("decode", decode_s)
            self.metrics.observe_stage("queue", queue_ms / 1e3)
            self.metrics.observe_stage("inference", result.inference_ms / 1e3)
        return {
            "labels": [
                {"label": self.info.class_names[i], "index": i, "score": round(float(s), 6)}
                for s, i in zip(scores.tolist(), indices.tolist(), strict=True)
            ],
            "views": {
                "temporal_clips": spec.sampling.num_clips,
                "spatial_crops": spec.spatial_crops,
                "frames_per_clip": spec.sampling.num_frames,
                "image_size": spec.image_size,
            },
            "model": self.model_id,
            "batch_size": result.batch_size,
            "timings": {
                "decode_ms": round(decode_s * 1e3, 2),
                "queue_ms": round(queue_ms, 2),
                "inference_ms": round(result.inference_ms, 2),
                "total_ms": round(total_s * 1e3, 2),
            },
        }

    @property
    def model_id(self) -> str:
        """The checkpoint's file name and architecture, e.g. k400:ViT-B-16/8f/400c."""
        cfg = self.info.config
        name = Path(self.settings.model_path).stem
        return f"{name}:{cfg.backbone}/{cfg.num_frames}f/{cfg.num_classes}c"

    async def ready(self) -> bool:
        return await self.backend.ready()

    async def model_card(self) -> dict:
        return {"id": self.model_id, **(await self.backend.model_card())}
