"""What the ingress does per request, as plain async code: admit, check, hand over, answer.

The ingress never decodes: it admits the request (past `max_pending_requests` it answers 503 at
once instead of queueing without limit), checks its parameters, and hands the bytes to the
backend, which decodes them (the decode replicas) and runs the model (the batched model replica).
A decode error comes back as the decoder raised it and becomes a 4xx problem here.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from model.checkpoint import CheckpointInfo
from model.detection import BOX_THRESHOLD, ActorDetections
from service import problems
from service.decoding import Decoded
from service.responses import (
    Action,
    Actor,
    Classification,
    Clip,
    DecoderCard,
    Detection,
    KeyFrame,
    Label,
    ModelCard,
    Timings,
    Views,
)
from service.settings import ServiceSettings
from video.decode import DecodeTimeout, OverCostLimit, VideoError, VideoTooLarge
from video.views import SAMPLING_MODES, TimestampError, ViewSpec


@dataclass(frozen=True)
class ClassifyParams:
    top_k: int = 5
    temporal_clips: int | None = None
    spatial_crops: int | None = None
    sampling: str = "exact"  # or "fast": frames moved to nearby keyframes (lossy)


@dataclass(frozen=True)
class DetectParams:
    timestamps: list[float] | None = None  # key-frame times in seconds; None: 1 Hz
    boxes: dict[float, list[list[float]]] | None = None  # per key-frame time, normalised xyxy
    score_threshold: float = 0.3  # box score x action probability, as AVA scores
    box_threshold: float = BOX_THRESHOLD  # localiser boxes below this are not actors


@dataclass(frozen=True)
class Inference:
    """One request's result from the model: probabilities averaged over its views."""

    probabilities: torch.Tensor  # (num_classes,)
    inference_ms: float  # the model batch(es) this request's views ran in
    batch_size: int  # views in the largest batch this request's views ran in
    decoded: Decoded  # what decoding cost (its stats, without the frames)


@dataclass(frozen=True)
class DetectInference:
    """One request's key frames from the model, in order."""

    actors: list[ActorDetections]
    inference_ms: float
    batch_size: int  # key-frame clips in the largest batch this request's clips ran in
    decoded: Decoded  # with the key-frame times


class Backend(Protocol):
    """Decoding and the model, however they are deployed (Ray replicas, or in-process)."""

    async def classify(self, data: bytes, spec: ViewSpec, sampling: str) -> Inference: ...
    async def detect(
        self,
        data: bytes,
        spec: ViewSpec,
        times: list[float] | None,
        boxes: dict[float, list[list[float]]],
    ) -> DetectInference: ...
    async def ready(self) -> bool: ...
    async def model_card(self) -> dict: ...


def boxes_per_clip(
    times: list[float], boxes: dict[float, list[list[float]]]
) -> list[torch.Tensor | None]:
    """The boxes a request gave for each key-frame clip, None where the localiser finds them."""
    return [torch.tensor(boxes[t]).view(-1, 4) if t in boxes else None for t in times]


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
    def task(self) -> str:
        return self.info.config.task

    def require_task(self, task: str) -> None:
        if self.task != task:
            endpoint = {"classify": "/classify", "detect": "/detect"}
            raise problems.Problem(
                409,
                "Wrong endpoint for this model",
                f"the served model is a {self.task} model ({self.model_id}); use POST "
                f"{endpoint[self.task]}",
            )

    def check_params(self, params: ClassifyParams) -> ClassifyParams:
        s = self.settings
        if params.top_k > s.max_top_k:
            raise problems.bad_parameters(f"top_k: at most {s.max_top_k}")
        if params.sampling not in SAMPLING_MODES:
            raise problems.bad_parameters(f"sampling: {' or '.join(SAMPLING_MODES)}")
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

    async def classify(self, data: bytes, params: ClassifyParams, start: float) -> Classification:
        spec = self.view_spec(params)
        t0 = time.perf_counter()
        with decode_problems():
            result = await self.backend.classify(data, spec, params.sampling)
        round_trip_ms = (time.perf_counter() - t0) * 1e3
        scores, indices = result.probabilities.topk(min(params.top_k, len(self.info.class_names)))
        return Classification(
            labels=[
                Label(label=self.info.class_names[i], index=i, score=round(float(s), 6))
                for s, i in zip(scores.tolist(), indices.tolist(), strict=True)
            ],
            views=Views(
                temporal_clips=spec.sampling.num_clips,
                spatial_crops=spec.spatial_crops,
                frames_per_clip=spec.sampling.num_frames,
                image_size=spec.image_size,
                sampling=params.sampling,
            ),
            model=self.model_id,
            batch_size=result.batch_size,
            decoder=decoder_card(result.decoded),
            timings=self.timings(start, round_trip_ms, result.decoded, result.inference_ms),
        )

    def check_detect_params(self, params: DetectParams) -> DetectParams:
        """Validate times and boxes before any decoding; 422 names the first bad value."""
        s = self.settings
        if params.timestamps is not None and not params.timestamps:
            raise problems.bad_parameters("timestamps: empty; leave it out for 1 Hz key frames")
        times = list(params.timestamps or [])
        for t in times:
            if not math.isfinite(t) or t < 0:
                raise problems.bad_parameters(f"timestamps: {t} is not a time in seconds >= 0")
        boxes = params.boxes or {}
        for t, given in boxes.items():
            if len(given) > s.max_boxes:
                raise problems.bad_parameters(
                    f"boxes at {t} s: {len(given)} boxes; at most {s.max_boxes} per key frame"
                )
            for box in given:
                check_box(t, box)
        times = self.keyframe_times(params)
        if times is not None and len(times) > s.max_keyframes:
            raise problems.bad_parameters(
                f"timestamps: {len(times)} key frames; at most {s.max_keyframes}"
            )
        return params

    @staticmethod
    def keyframe_times(params: DetectParams) -> list[float] | None:
        """The requested times plus those with boxes (a box's time is a key frame too); only
        the boxes' times when no timestamps are sent; None (1 Hz) when neither is."""
        boxes = list(params.boxes or {})
        if params.timestamps is None:
            return boxes or None
        return list(dict.fromkeys([*params.timestamps, *boxes]))

    async def detect(self, data: bytes, params: DetectParams, start: float) -> Detection:
        t0 = time.perf_counter()
        given = params.boxes or {}
        with decode_problems():
            result = await self.backend.detect(data, self.spec, self.keyframe_times(params), given)
        round_trip_ms = (time.perf_counter() - t0) * 1e3
        times = result.decoded.times
        boxes = boxes_per_clip(times, given)
        names = self.info.class_names
        keyframes = []
        for t, given_boxes, found in zip(times, boxes, result.actors, strict=True):
            actors = []
            for k in range(len(found.boxes)):
                box_score = float(found.box_scores[k])
                if given_boxes is None and box_score < params.box_threshold:
                    continue
                scores = found.scores[k]
                order = scores.argsort(descending=True).tolist()
                actors.append(
                    Actor(
                        box=[round(v, 4) for v in found.boxes[k].tolist()],
                        box_score=round(box_score, 6),
                        box_source="request" if given_boxes is not None else "localiser",
                        actions=[
                            Action(label=names[i], index=i, score=round(float(scores[i]), 6))
                            for i in order
                            if scores[i] >= params.score_threshold
                        ],
                    )
                )
            keyframes.append(KeyFrame(timestamp=t, actors=actors))
        s = self.spec
        return Detection(
            keyframes=keyframes,
            clip=Clip(
                frames_per_clip=s.sampling.num_frames,
                frame_interval=s.sampling.interval,
                image_size=s.image_size,
            ),
            model=self.model_id,
            batch_size=result.batch_size,
            decoder=decoder_card(result.decoded),
            timings=self.timings(start, round_trip_ms, result.decoded, result.inference_ms),
        )

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
        priority="low" if decoded.low_priority else "normal",
    )


def check_box(t: float, box) -> None:
    where = f"boxes at {t} s"
    if not isinstance(box, list | tuple) or len(box) != 4:
        raise problems.bad_parameters(f"{where}: {box!r} is not [x1, y1, x2, y2]")
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in box):
        raise problems.bad_parameters(f"{where}: {box!r} has a value that is not a number")
    x1, y1, x2, y2 = box
    if not all(0 <= v <= 1 for v in box):
        raise problems.bad_parameters(
            f"{where}: {box} is out of range; coordinates are normalised to [0, 1]"
        )
    if x1 >= x2 or y1 >= y2:
        raise problems.bad_parameters(
            f"{where}: {box} is inverted or empty (need x1 < x2, y1 < y2)"
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
