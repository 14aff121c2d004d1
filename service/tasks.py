"""The task seam of the service: how a request of each task is checked, decoded, batched, run
and answered. The ingress, the decode and model deployments, the local backend and the CLI ask
`TASKS[model task]` and never branch; a task's model head is in model/tasks.py, its training in
training/tasks.py.

Per request: `check` its parameters (before the upload is read) -> the Decoder method
`decode_call` names decodes the bytes into uint8 clips -> `items` turns them into batch items
on the model's device -> the model replica runs items of any requests together (`run`) ->
`combine` puts a request's results back together -> `answer` shapes the response.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from model.detection import BOX_THRESHOLD, ActorDetections
from service import problems
from service.decoding import Decoded
from service.responses import (
    Action,
    Actor,
    Classification,
    Clip,
    Detection,
    KeyFrame,
    Label,
    Views,
)
from service.settings import ServiceSettings
from video.views import SAMPLING_MODES, ViewSpec


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
    """One request's result from the model."""

    # classification: (num_classes,) probabilities averaged over the views; detection: the
    # actors of each key frame, in order
    output: Any
    inference_ms: float  # the model batch(es) this request's items ran in
    batch_size: int  # items in the largest batch this request's items ran in
    decoded: Decoded  # what decoding cost (its stats, without the frames; detection: the times)


class ServingTask(Protocol):
    name: str
    endpoint: str
    timeline: bool  # whether labels over sliding windows make sense (service/timeline.py)

    def local_params(self, top_k: int, temporal_clips: int | None, spatial_crops: int | None):
        """The parameters of `zeroi2v predict` (its options; top_k is applied when printing)."""

    def check(self, params, settings: ServiceSettings, spec: ViewSpec) -> None:
        """Refuse bad parameters (a 422 problem) before any upload is read."""

    def view_spec(self, spec: ViewSpec, params) -> ViewSpec:
        """The model's view spec as this request asks for it."""

    def decode_call(self, spec: ViewSpec, params) -> tuple[str, tuple]:
        """The Decoder method that decodes the upload, and its arguments after the bytes."""

    def items(self, runner, decoded: Decoded, spec: ViewSpec, params) -> list:
        """The request's batch items on the model's device."""

    def run(self, runner, items: list) -> list:
        """One model batch: a result per item."""

    def window_items(self, runner, clips: torch.Tensor, spec: ViewSpec) -> list[list]:
        """Tasks with a timeline: each window's batch items, from the windows' uint8 clips (n,
        T, 3, H, W) (their results are combined per window, as a request's are)."""

    def example_item(self, runner):
        """An item of the model's shape (warm-up)."""

    def combine(self, results: list):
        """A request's items' results as its Inference.output."""

    def answer(
        self, result: Inference, spec: ViewSpec, params, class_names: list[str], common: dict
    ):
        """The response model; `common` holds the fields every answer has (model, batch size,
        decoder, timings)."""


class Classify:
    """One label set per video: softmax averaged over temporal clips x spatial crops."""

    name, endpoint = "classify", "/classify"
    timeline = True

    def local_params(self, top_k, temporal_clips, spatial_crops) -> ClassifyParams:
        return ClassifyParams(top_k, temporal_clips, spatial_crops)

    def check(self, params: ClassifyParams, settings: ServiceSettings, spec: ViewSpec) -> None:
        if params.top_k > settings.max_top_k:
            raise problems.bad_parameters(f"top_k: at most {settings.max_top_k}")
        if params.sampling not in SAMPLING_MODES:
            raise problems.bad_parameters(f"sampling: {' or '.join(SAMPLING_MODES)}")
        if params.temporal_clips is not None and params.temporal_clips < 1:
            raise problems.bad_parameters("temporal_clips: at least 1")
        if params.spatial_crops not in (None, 1, 3):
            raise problems.bad_parameters("spatial_crops: 1 (centre) or 3 (three crops)")
        views = self.view_spec(spec, params).num_views
        if views > settings.max_views:
            raise problems.bad_parameters(
                f"temporal_clips x spatial_crops = {views} views; at most {settings.max_views}"
            )

    def view_spec(self, spec: ViewSpec, params: ClassifyParams) -> ViewSpec:
        return spec.with_views(params.temporal_clips, params.spatial_crops)

    def decode_call(self, spec: ViewSpec, params: ClassifyParams) -> tuple[str, tuple]:
        return "clips", (spec, params.sampling)

    def items(self, runner, decoded: Decoded, spec: ViewSpec, params) -> list:
        return runner.views(decoded.clips, spec)

    def window_items(self, runner, clips: torch.Tensor, spec: ViewSpec) -> list[list]:
        return [runner.views(clip[None], spec) for clip in clips]

    def run(self, runner, items: list) -> list:
        return runner.run(items)

    def example_item(self, runner) -> torch.Tensor:
        return torch.zeros(runner.clip_shape)

    def combine(self, results: list) -> torch.Tensor:
        return torch.stack(results).mean(0)

    def answer(
        self, result: Inference, spec: ViewSpec, params: ClassifyParams, class_names, common
    ) -> Classification:
        scores, indices = result.output.topk(min(params.top_k, len(class_names)))
        return Classification(
            labels=[
                Label(label=class_names[i], index=i, score=round(float(s), 6))
                for s, i in zip(scores.tolist(), indices.tolist(), strict=True)
            ],
            views=Views(
                temporal_clips=spec.sampling.num_clips,
                spatial_crops=spec.spatial_crops,
                frames_per_clip=spec.sampling.num_frames,
                image_size=spec.image_size,
                sampling=params.sampling,
            ),
            **common,
        )


class Detect:
    """AVA-style: per key frame, actor boxes (given, or the localiser's) and their actions."""

    name, endpoint = "detect", "/detect"
    timeline = False

    def local_params(self, top_k, temporal_clips, spatial_crops) -> DetectParams:
        # 1 Hz key frames; every action of an actor, best first (the top_k are printed
        # whatever their score)
        return DetectParams(score_threshold=0.0)

    def check(self, params: DetectParams, settings: ServiceSettings, spec: ViewSpec) -> None:
        if params.timestamps is not None and not params.timestamps:
            raise problems.bad_parameters("timestamps: empty; leave it out for 1 Hz key frames")
        for t in params.timestamps or []:
            if not math.isfinite(t) or t < 0:
                raise problems.bad_parameters(f"timestamps: {t} is not a time in seconds >= 0")
        for t, given in (params.boxes or {}).items():
            if len(given) > settings.max_boxes:
                raise problems.bad_parameters(
                    f"boxes at {t} s: {len(given)} boxes; at most {settings.max_boxes} per key "
                    f"frame"
                )
            for box in given:
                check_box(t, box)
        times = keyframe_times(params)
        if times is not None and len(times) > settings.max_keyframes:
            raise problems.bad_parameters(
                f"timestamps: {len(times)} key frames; at most {settings.max_keyframes}"
            )

    def view_spec(self, spec: ViewSpec, params: DetectParams) -> ViewSpec:
        return spec

    def decode_call(self, spec: ViewSpec, params: DetectParams) -> tuple[str, tuple]:
        return "keyframe_clips", (spec, keyframe_times(params))

    def items(self, runner, decoded: Decoded, spec: ViewSpec, params: DetectParams) -> list:
        clips = runner.keyframe_inputs(decoded.clips, spec)
        given = boxes_per_clip(decoded.times, params.boxes or {})
        return list(zip(clips, given, strict=True))

    def run(self, runner, items: list) -> list[ActorDetections]:
        return runner.detect(items)

    def example_item(self, runner) -> tuple:
        return torch.zeros(runner.clip_shape), None

    def combine(self, results: list) -> list[ActorDetections]:
        return results

    def answer(
        self, result: Inference, spec: ViewSpec, params: DetectParams, class_names, common
    ) -> Detection:
        times = result.decoded.times
        keyframes = []
        given = boxes_per_clip(times, params.boxes or {})
        for t, given_boxes, found in zip(times, given, result.output, strict=True):
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
                            Action(label=class_names[i], index=i, score=round(float(scores[i]), 6))
                            for i in order
                            if scores[i] >= params.score_threshold
                        ],
                    )
                )
            keyframes.append(KeyFrame(timestamp=t, actors=actors))
        clip = Clip(
            frames_per_clip=spec.sampling.num_frames,
            frame_interval=spec.sampling.interval,
            image_size=spec.image_size,
        )
        return Detection(keyframes=keyframes, clip=clip, **common)


TASKS: dict[str, ServingTask] = {"classify": Classify(), "detect": Detect()}


def keyframe_times(params: DetectParams) -> list[float] | None:
    """The requested times plus those with boxes (a box's time is a key frame too); only the
    boxes' times when no timestamps are sent; None (1 Hz) when neither is."""
    boxes = list(params.boxes or {})
    if params.timestamps is None:
        return boxes or None
    return list(dict.fromkeys([*params.timestamps, *boxes]))


def boxes_per_clip(
    times: list[float], boxes: dict[float, list[list[float]]]
) -> list[torch.Tensor | None]:
    """The boxes a request gave for each key-frame clip, None where the localiser finds them."""
    return [torch.tensor(boxes[t]).view(-1, 4) if t in boxes else None for t in times]


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
