"""What every endpoint answers, as pydantic models: /docs shows these shapes, and an answer that
strays from them is a bug caught where it is made (extra fields are refused, not dropped).

Errors are problem details (RFC 9457, service/problems.py); `Problem` documents that shape.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class Answer(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class ProblemDetail(Answer):
    """Every 4xx and 5xx answer, as application/problem+json."""

    type: str = Field(description="a URI naming the kind of problem")
    title: str = Field(description="the same for every problem of this kind")
    status: int
    detail: str = Field(description="what was wrong with this request")
    instance: str | None = Field(None, description="the path that answered")


class Status(Answer):
    status: Literal["alive", "ready"]


class Label(Answer):
    label: str
    index: int = Field(description="the class's index in the model's class list")
    score: float


class Views(Answer):
    """How the video was seen: temporal_clips x spatial_crops views of frames_per_clip frames."""

    temporal_clips: int
    spatial_crops: int
    frames_per_clip: int
    image_size: int
    sampling: Literal["exact", "fast"]


class DecoderCard(Answer):
    replica: str = Field(description="the decode replica that decoded the upload")
    device: Literal["cpu", "cuda"] = Field(description="cuda: NVDEC")
    low_priority: bool = Field(
        False, description="decoded at the lowest CPU priority (over low_priority_megapixels)"
    )


class Timings(Answer):
    decode_ms: float = Field(description="decoding, converting and resizing")
    decode_wait_ms: float = Field(description="waiting for a worker in the decode replica")
    queue_ms: float = Field(description="routing, transport and waiting for a model batch")
    inference_ms: float = Field(description="the model batch(es) this request ran in")
    total_ms: float
    frames_decoded: int = Field(description="frames the decoder produced")
    frames_used: int = Field(description="frames in the clips (shared frames count per clip)")


class Classification(Answer):
    """POST /classify: the top labels, softmax averaged over the views."""

    labels: list[Label]
    views: Views
    model: str = Field(description="checkpoint file name and architecture")
    batch_size: int = Field(description="the largest model batch this request's views ran in")
    decoder: DecoderCard
    timings: Timings

    def text(self, top_k: int) -> list[str]:
        """`zeroi2v predict`'s lines: score and label, best first."""
        return [f"{label.score:.4f}  {label.label}" for label in self.labels[:top_k]]


class Action(Answer):
    label: str
    index: int
    score: float = Field(description="box score x action probability, as AVA scores")


class Actor(Answer):
    box: list[float] = Field(description="x1, y1, x2, y2 normalised to [0, 1]")
    box_score: float
    box_source: Literal["request", "localiser"]
    actions: list[Action]


class KeyFrame(Answer):
    timestamp: float = Field(description="seconds")
    actors: list[Actor]


class Clip(Answer):
    frames_per_clip: int
    frame_interval: int
    image_size: int


class Detection(Answer):
    """POST /detect: per key frame, actor boxes with their actions."""

    keyframes: list[KeyFrame]
    clip: Clip
    model: str
    batch_size: int
    decoder: DecoderCard
    timings: Timings

    def text(self, top_k: int) -> list[str]:
        """`zeroi2v predict`'s lines: per key frame its actors, each with its top actions."""
        lines = []
        for frame in self.keyframes:
            lines.append(f"{frame.timestamp:.1f} s: {len(frame.actors)} actor(s)")
            for actor in frame.actors:
                actions = ", ".join(f"{a.label} {a.score:.2f}" for a in actor.actions[:top_k])
                coords = ", ".join(f"{v:.3f}" for v in actor.box)
                lines.append(f"  [{coords}] person {actor.box_score:.2f}: {actions}")
        return lines


class TimelineWindow(Answer):
    """A timeline's record per window (an NDJSON line), in time order."""

    type: Literal["window"] = "window"
    start_s: float
    end_s: float = Field(description="the end of the window's last frame")
    labels: list[Label]
    decode_ms: float = Field(description="decoding since the window before")
    inference_ms: float = Field(description="the model batch this window ran in")
    batch_size: int = Field(description="items in that batch (windows x crops, and any other "
                            "requests' views batched with them)")  # fmt: skip


class TimelineSegment(Answer):
    start_s: float
    end_s: float = Field(description="where the next segment starts (the last: its window's end)")
    label: str = Field(description="the top label of each of its windows")
    windows: int
    mean_score: float = Field(description="the label's mean score over the windows")


class TimelineSummary(Answer):
    """A timeline's last record."""

    type: Literal["summary"] = "summary"
    model: str
    windows: int
    stride_s: float
    spatial_crops: int
    duration_s: float
    segments: list[TimelineSegment]
    frames_decoded: int
    decode_ms: float = Field(description="decoding, all windows")
    inference_ms: float = Field(description="the model batches the windows ran in, all")
    total_ms: float


class ModelCard(Answer):
    """GET /v1/model: the served model."""

    id: str
    task: Literal["classify", "detect"]
    backbone: str
    blocks: int
    heads: int
    width: int
    temporal_offsets: list[list[int]] = Field(description="Δt of each head, block by block")
    frames: int
    image_size: int
    classes: list[str]
    preprocess: dict = Field(description="the checkpoint's preprocessing metadata")
    default_views: int
    parameters: int
    gflops_per_view: float
    gflops_per_video: float
    gflops_note: str
    device: str
    precision: str
    compile: str
    warm_up_s: dict[int, float] = Field(description="seconds per warmed-up batch size")


def problem_responses(*statuses: int) -> dict:
    """OpenAPI entries for the problem answers of an endpoint: application/problem+json only
    (given a `model`, FastAPI would list application/json as well)."""
    schema = ProblemDetail.model_json_schema()
    return {s: {"content": {"application/problem+json": {"schema": schema}}} for s in statuses}


def inline_schema(model: type[BaseModel]) -> dict:
    """A model's JSON schema with its nested models written in place of their $refs: a schema
    that stands anywhere in the OpenAPI document (a $ref to "#/$defs/..." would be resolved
    against the document's root)."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def resolve(node):
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return resolve(defs[ref.removeprefix("#/$defs/")])
            return {k: resolve(v) for k, v in node.items()}
        if isinstance(node, list):
            return [resolve(v) for v in node]
        return node

    return resolve(schema)


def stream_response(media_type: str, description: str, *models: type[BaseModel]) -> dict:
    """The OpenAPI 200 entry of a streamed answer whose records are any of `models`."""
    records = {"oneOf": [inline_schema(m) for m in models]}
    return {200: {"description": description, "content": {media_type: {"schema": records}}}}
