"""What the ingress does per request, as plain async code: admit, check, hand over, answer.

The ingress never decodes: it admits the request (past `max_pending_requests` it answers 503 at
once instead of queueing without limit), checks its parameters, and hands the bytes to the
backend, which decodes them (the decode replicas) and runs the model (the batched model replica).
A decode error comes back as the decoder raised it and becomes a 4xx problem here. What differs
between tasks (parameters, decoding, batching, the answer) is the served task's
(service/tasks.py).
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import Protocol

from model.checkpoint import CheckpointInfo
from service import problems
from service.decoding import Decoded
from service.responses import DecoderCard, ModelCard, Timings
from service.settings import ServiceSettings
from service.tasks import TASKS, Inference, ServingTask
from video.decode import DecodeTimeout, OverCostLimit, VideoError, VideoTooLarge
from video.views import TimestampError, ViewSpec


class Backend(Protocol):
    """Decoding and the model, however they are deployed (Ray replicas, or in-process)."""

    async def predict(self, data: bytes, spec: ViewSpec, params) -> Inference: ...
    async def ready(self) -> bool: ...
    async def model_card(self) -> dict: ...


class Metrics(Protocol):
    def observe_request(self, endpoint: str, status: int, seconds: float) -> None: ...
    def observe_stage(self, stage: str, seconds: float) -> None: ...
    def set_in_flight(self, count: int) -> None: ...


@contextlib.contextmanager
def decode_problems():
    """Decode errors as 4xx problems, with the decoder's own message (a Ray task error wraps
    the original exception as `cause`, and is an instance of its class)."""
    try:
        yield
    except (VideoError, TimestampError) as e:
        cause = getattr(e, "cause", None)
        message = str(cause if isinstance(cause, BaseException) else e)
        if isinstance(e, VideoTooLarge):
            raise problems.Problem(413, "Video too large", message) from None
        if isinstance(e, OverCostLimit):
            raise problems.Problem(422, "Request over its cost limit", message) from None
        if isinstance(e, DecodeTimeout):
            raise problems.Problem(422, "Video too slow to decode", message) from None
        if isinstance(e, TimestampError):
            raise problems.bad_parameters(f"timestamps: {message}") from None
        raise problems.unsupported(message) from None


class VideoService:
    def __init__(
        self,
        settings: ServiceSettings,
        info: CheckpointInfo,
        backend: Backend,
        metrics: Metrics | None = None,
    ):
        self.settings = settings
        self.info = info
        self.backend = backend
        self.metrics = metrics
        self.spec = ViewSpec.from_preprocess(info.preprocess)
        self.pending = 0
        self.uploads = 0

    @contextlib.asynccontextmanager
    async def receiving(self):
        """Room to receive one more body, or 503 with Retry-After past max_uploads."""
        if self.uploads >= self.settings.max_uploads:
            raise problems.overloaded(self.settings.retry_after_s, "too many uploads at once")
        self.uploads += 1
        try:
            yield
        finally:
            self.uploads -= 1

    @contextlib.asynccontextmanager
    async def admission(self):
        """Admit a request or answer 503 with Retry-After when too many are pending."""
        if self.pending >= self.settings.max_pending_requests:
            raise problems.overloaded(self.settings.retry_after_s)
        self.pending += 1
        self.refresh_gauges()
        try:
            yield
        finally:
            self.pending -= 1
            self.refresh_gauges()

    def refresh_gauges(self) -> None:
        if self.metrics:
            self.metrics.set_in_flight(self.pending)

    @property
    def task(self) -> ServingTask:
        return TASKS[self.info.config.task]

    def require_task(self, name: str) -> ServingTask:
        """The served model's task, if it is `name` (the endpoint's); else 409."""
        if self.task.name != name:
            raise problems.Problem(
                409,
                "Wrong endpoint for this model",
                f"the served model is a {self.task.name} model ({self.model_id}); use POST "
                f"{self.task.endpoint}",
            )
        return self.task

    def check(self, params):
        """The request's parameters, checked by its task before any upload is read."""
        self.task.check(params, self.settings, self.spec)
        return params

    async def predict(self, data: bytes, params, start: float):
        """The task's answer for one upload."""
        task = self.task
        spec = task.view_spec(self.spec, params)
        t0 = time.perf_counter()
        with decode_problems():
            result = await self.backend.predict(data, spec, params)
        round_trip_ms = (time.perf_counter() - t0) * 1e3
        common = {
            "model": self.model_id,
            "batch_size": result.batch_size,
            "decoder": decoder_card(result.decoded),
            "timings": self.timings(start, round_trip_ms, result.decoded, result.inference_ms),
        }
        return task.answer(result, spec, params, self.info.class_names, common)

    def timings(
        self, start: float, round_trip_ms: float, decoded: Decoded, inference_ms: float
    ) -> Timings:
        """A response's `timings`, each stage also recorded in the latency metrics (the total
        is recorded by the app's middleware). queue_ms is the rest of the round trip to the
        decoder and the model: routing, transport, waiting for a model batch."""
        queue_ms = max(0.0, round_trip_ms - decoded.decode_ms - decoded.wait_ms - inference_ms)
        if self.metrics:
            self.metrics.observe_stage("decode", decoded.decode_ms / 1e3)
            self.metrics.observe_stage("decode_wait", decoded.wait_ms / 1e3)
            self.metrics.observe_stage("queue", queue_ms / 1e3)
            self.metrics.observe_stage("inference", inference_ms / 1e3)
        return Timings(
            decode_ms=round(decoded.decode_ms, 2),
            decode_wait_ms=round(decoded.wait_ms, 2),
            queue_ms=round(queue_ms, 2),
            inference_ms=round(inference_ms, 2),
            total_ms=round((time.perf_counter() - start) * 1e3, 2),
            frames_decoded=decoded.frames_decoded,
            frames_used=decoded.frames_used,
        )

    @property
    def model_id(self) -> str:
        """The checkpoint's file name and architecture, e.g. k400:ViT-B-16/8f/400c."""
        cfg = self.info.config
        name = Path(self.settings.model_path).stem
        return f"{name}:{cfg.backbone}/{cfg.num_frames}f/{cfg.num_classes}c"

    async def ready(self) -> bool:
        return await self.backend.ready()

    async def model_card(self) -> ModelCard:
        return ModelCard(id=self.model_id, **(await self.backend.model_card()))


def decoder_card(decoded: Decoded) -> DecoderCard:
    return DecoderCard(
        replica=decoded.decoder,
        device="cuda" if decoded.hardware else "cpu",
    )


def parse_boxes(text: str | None) -> dict[float, list[list[float]]] | None:
    """The `boxes` form field: JSON {"<seconds>": [[x1, y1, x2, y2], ...], ...}."""
    if text is None or not text.strip():
        return None
    try:
        doc = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as e:  # RecursionError: absurdly deep nesting
        raise problems.bad_parameters(f"boxes: not valid JSON: {e}") from e
    if not isinstance(doc, dict):
        raise problems.bad_parameters(
            'boxes: expected a JSON object {"<seconds>": [[x1, y1, x2, y2], ...]}'
        )
    out = {}
    for key, given in doc.items():
        try:
            t = float(key)
        except ValueError:
            raise problems.bad_parameters(f"boxes: key {key!r} is not a time in seconds") from None
        if not isinstance(given, list):
            raise problems.bad_parameters(f"boxes at {key} s: expected a list of boxes")
        out[t] = given
    return out
