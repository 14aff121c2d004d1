"""What the ingress does per request, as plain async code: admit, check, hand over, answer.

A short request (/classify, /detect) is not decoded here: the ingress admits it (past
`max_pending_requests` it answers 503 at once instead of queueing without limit), checks its
parameters, and hands the bytes to the backend, which decodes them (the decode replicas) and
runs the model (the batched model replica). A decode error comes back as the decoder raised it
and becomes a 4xx problem here. What differs between tasks (parameters, decoding, batching, the
answer) is the served task's (service/tasks.py). A timeline is decoded here, from the file its
upload was spooled to, and its windows go to the backend's model (`timeline`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

import torch

from model.checkpoint import CheckpointInfo
from service import problems
from service.decoding import Decoded, timeline_limits
from service.responses import (
    DecoderCard,
    ModelCard,
    TimelineSummary,
    TimelineWindow,
    Timings,
)
from service.settings import ServiceSettings
from service.tasks import TASKS, Inference, ServingTask
from service.timeline import TimelineParams, WindowScores, WindowSource, timeline_records
from video.decode import DamagedVideo, DecodeTimeout, OverCostLimit, VideoError, VideoTooLarge
from video.sampling import ShorterThanAWindow
from video.views import TimestampError, ViewSpec

log = logging.getLogger(__name__)


class Backend(Protocol):
    """Decoding and the model, however they are deployed (Ray replicas, or in-process)."""

    async def predict(self, data: bytes, spec: ViewSpec, params) -> Inference: ...
    async def windows(self, clips: torch.Tensor, spec: ViewSpec) -> WindowScores: ...
    async def ready(self) -> bool: ...
    async def model_card(self) -> dict: ...


class Metrics(Protocol):
    def observe_request(self, endpoint: str, status: int, seconds: float) -> None: ...
    def observe_stage(self, stage: str, seconds: float) -> None: ...
    def set_in_flight(self, count: int) -> None: ...
    def set_timelines(self, count: int) -> None: ...
    def count_windows(self, count: int) -> None: ...


def decode_problem(e: Exception) -> problems.Problem:
    """A decode error as a 4xx problem, with the decoder's own message (a Ray task error wraps
    the original exception as `cause`, and is an instance of its class)."""
    cause = getattr(e, "cause", None)
    message = str(cause if isinstance(cause, BaseException) else e)
    if isinstance(e, VideoTooLarge):
        return problems.Problem(413, "Video too large", message)
    if isinstance(e, OverCostLimit):
        return problems.Problem(422, "Request over its cost limit", message)
    if isinstance(e, DecodeTimeout):
        return problems.Problem(422, "Video too slow to decode", message)
    if isinstance(e, DamagedVideo):
        return problems.Problem(422, "Damaged video", message)
    if isinstance(e, TimestampError):
        return problems.bad_parameters(f"timestamps: {message}")
    if isinstance(e, ShorterThanAWindow):
        return problems.Problem(422, "Video shorter than a window", message)
    return problems.unsupported(message)


@contextlib.contextmanager
def decode_problems():
    """Whatever answering an upload raises, as a problem: decode errors (and a video with no
    timeline window) as 4xx, anything else as a 500 that says what broke (as_problem), never
    the server's plain-text error page."""
    try:
        yield
    except problems.Problem:
        raise
    except Exception as e:
        raise as_problem(e) from None


class VideoService:
    def __init__(
        self,
        settings: ServiceSettings,
        info: CheckpointInfo,
        backend: Backend,
        metrics: Metrics | None = None,
        timeline_threads: int = 1,
    ):
        self.settings = settings
        self.info = info
        self.backend = backend
        self.metrics = metrics
        self.spec = ViewSpec.from_preprocess(info.preprocess)
        self.pending = 0
        self.uploads = 0
        self.timelines = 0
        # Timelines decode here, on the node that holds their spooled upload: one worker each.
        self.timeline_pool = ThreadPoolExecutor(settings.max_timelines, "timeline")
        # FFmpeg threads per timeline: 1 in the service (a core each, beside the decode
        # replicas), 0 (FFmpeg picks) for a command that decodes one video.
        self.timeline_threads = timeline_threads

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

    @contextlib.asynccontextmanager
    async def timeline_slot(self):
        """Room for one more timeline, or 503 with Retry-After past max_timelines. Held from
        before its upload is read to its last record; apart from the short requests' admission."""
        if self.timelines >= self.settings.max_timelines:
            raise problems.overloaded(self.settings.retry_after_s, "too many timelines at once")
        self.timelines += 1
        self.refresh_gauges()
        try:
            yield
        finally:
            self.timelines -= 1
            self.refresh_gauges()

    def refresh_gauges(self) -> None:
        if self.metrics:
            self.metrics.set_in_flight(self.pending)
            self.metrics.set_timelines(self.timelines)

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

    def require_timeline(self) -> ServingTask:
        """The served task, if a timeline of it makes sense; else 409."""
        if not self.task.timeline:
            raise problems.Problem(
                409,
                "No timeline for this model",
                f"the served model is a {self.task.name} model ({self.model_id}); a timeline "
                f"labels windows of a video with a classifier. Use POST {self.task.endpoint}",
            )
        if self.spec.sampling.kind != "dense":
            raise problems.Problem(
                409,
                "No timeline for this model",
                f"{self.model_id} samples {self.spec.sampling.kind} clips spread over a whole "
                f"video; a timeline's windows are clips of frames a fixed interval apart",
            )
        return self.task

    def check_timeline(self, params: TimelineParams) -> TimelineParams:
        """A timeline request's parameters, checked (with the model) before its upload is read."""
        self.require_timeline()
        params.check(self.settings)
        return params

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

    async def timeline(
        self,
        source: str | Path,
        params: TimelineParams,
        stack: contextlib.AsyncExitStack,
        name: str | None = None,
    ) -> AsyncIterator[TimelineWindow | TimelineSummary]:
        """The timeline of a video file: each window's record as its batch is scored, then the
        summary. The video is opened, its windows planned and its first batch scored before
        this returns, so a bad file, a video shorter than a window or one too long is the
        request's own 4xx problem; an error later is raised from the iteration as a Problem.
        The decode stops when `stack` closes (the answer sent, or the client gone). `name`:
        what messages call the video (default: its path)."""
        self.check_timeline(params)
        spec = self.spec.with_views(temporal_clips=1, spatial_crops=params.spatial_crops)
        per_batch = max(1, self.settings.max_batch_size // spec.spatial_crops)
        limits = timeline_limits(self.settings, self.timeline_threads)
        try:
            windows = await WindowSource.open(
                source, spec, params.stride_s, limits, self.timeline_pool, per_batch, name
            )
        except Exception as e:
            raise as_problem(e) from e
        stack.push_async_callback(windows.aclose)
        started = time.perf_counter()

        async def score(clips: torch.Tensor) -> WindowScores:
            return await self.backend.windows(clips, spec)

        records = timeline_records(
            windows, score, self.info.class_names, params.top_k, per_batch, self.model_id,
            spec.spatial_crops,
        )  # fmt: skip
        stack.push_async_callback(records.aclose)

        async def observed() -> AsyncIterator[TimelineWindow | TimelineSummary]:
            """The records, timed in the metrics, their errors as Problems."""
            last = time.perf_counter()
            try:
                async for record in records:
                    now = time.perf_counter()
                    if self.metrics and isinstance(record, TimelineWindow):
                        self.metrics.count_windows(1)
                        self.metrics.observe_stage("timeline_window", now - last)
                    elif self.metrics:
                        self.metrics.observe_stage("timeline", now - started)
                    last = now
                    yield record
            except problems.Problem:
                raise
            except Exception as e:
                raise as_problem(e) from e

        stream = observed()
        stack.push_async_callback(stream.aclose)
        first = await anext(stream)

        async def answer() -> AsyncIterator[TimelineWindow | TimelineSummary]:
            yield first
            async for record in stream:
                yield record

        return answer()

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


def as_problem(e: Exception) -> problems.Problem:
    """An error met while answering: a decode error's 4xx, or a 500 that says what broke."""
    if isinstance(e, VideoError | TimestampError | ShorterThanAWindow):
        return decode_problem(e)
    log.error("unexpected error while answering", exc_info=e)
    return problems.internal(type(e).__name__)


def decoder_card(decoded: Decoded) -> DecoderCard:
    return DecoderCard(
        replica=decoded.decoder,
        device="cuda" if decoded.hardware else "cpu",
        low_priority=decoded.low_priority,
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
