"""Views: the model inputs made from a video, identical for evaluation and serving.

A view is one temporal clip seen through one spatial crop: resize the short side to the image
size, crop (centre, or three crops along the long side), normalise, and lay out as the model
wants, (3, T, S, S). A video gives `num_clips * spatial_crops` views; the caller averages their
scores.

The spec's test protocol (video.sampling.PROTOCOLS) picks the frames, the resize and the crops:
"zeroi2v" (the default) resizes with antialiasing and takes its own three crops; "mmaction2"
reproduces mmaction2's test pipeline (SampleFrames or UniformSample, Resize(scale=(-1, S)),
CenterCrop or ThreeCrop), so an imported model sees the views its accuracy was measured on.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF

# CLIP's normalisation is the default view's: taken from open_clip, which defines it, so that
# video/ needs nothing from model/.
from open_clip.constants import OPENAI_DATASET_MEAN as OPENAI_MEAN
from open_clip.constants import OPENAI_DATASET_STD as OPENAI_STD

from video.decode import DecodeLimits, FrameTransform, Source, VideoInfo, VideoReader
from video.sampling import (
    SamplingSpec,
    check_protocol,
    keyframe_clip,
    sliding_windows,
    snap_to_keyframes,
)


def resize_short_side(frames: torch.Tensor, size: int, protocol: str = "zeroi2v") -> torch.Tensor:
    """(..., 3, H, W) uint8 -> (..., 3, H', W') uint8 with min(H', W') == size, aspect kept.
    Frames whose short side is already `size` come back as they are.

    zeroi2v: torchvision's antialiased bilinear resize; the long side is truncated,
    int(size * long / short).
    mmaction2: mmaction2's Resize(scale=(-1, size)) (keep_ratio): mmcv.rescale_size's sizes,
    each side int(side * size / short + 0.5), resized as mmcv.imresize's cv2.resize INTER_LINEAR
    does (bilinear, half-pixel centres, no antialias). Computed here in float and rounded, not in
    cv2's fixed point (11-bit weights, truncated in its SIMD loop, whose tail rounds exactly: the
    last bit depends on the CPU's vector width): against opencv-python-headless 4.14 (and 5.1,
    which gives the same pixels) no pixel differs by more than 1 grey level, and 11% of them
    differ by 1 (at most 13% of a frame), nearly all one level above cv2's
    (tests/test_mmaction_protocol.py, tests/data/cv2_resize_reference.safetensors).
    """
    check_protocol(protocol)
    h, w = frames.shape[-2:]
    if min(h, w) == size:
        return frames
    if protocol == "zeroi2v":
        return TF.resize(frames, [size], antialias=True)
    scale = size / min(h, w)
    new_h, new_w = int(h * scale + 0.5), int(w * scale + 0.5)
    # In float: torch's uint8 bilinear is CPU-only and rounds in its own fixed point, while the
    # float one is the textbook formula on every device (frames may be decoded on a GPU).
    flat = frames.reshape(-1, *frames.shape[-3:]).float()
    resized = F.interpolate(
        flat, size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=False
    )
    out = resized.round_().clamp_(0, 255).to(torch.uint8)
    return out.reshape(*frames.shape[:-2], new_h, new_w)


def crop_corners(
    h: int, w: int, size: int, num_crops: int, protocol: str = "zeroi2v"
) -> list[tuple[int, int]]:
    """The (top, left) corners of spatial_crops' squares in an h x w frame.

    1 (both protocols, as mmaction2's CenterCrop): ((h - size) // 2, (w - size) // 2).
    3, zeroi2v: left, centre, right (top, centre, bottom for portrait frames), the last flush
    with the far edge.
    3, mmaction2 (its ThreeCrop, which takes frames with one side equal to `size`): along the
    long side, steps of (long - size) // 2 in its order, left, right, middle (top, bottom,
    middle): the right crop is one pixel short of the edge when long - size is odd.
    """
    check_protocol(protocol)
    if min(h, w) < size:
        raise ValueError(f"cannot take {size}x{size} crops from {w}x{h} frames; resize first")
    top, left = (h - size) // 2, (w - size) // 2
    if num_crops == 1:
        return [(top, left)]
    if num_crops != 3:
        raise ValueError(f"spatial_crops must be 1 or 3, got {num_crops}")
    if protocol == "zeroi2v":
        if w >= h:
            return [(top, 0), (top, left), (top, w - size)]
        return [(0, left), (top, left), (h - size, left)]
    if h == size:  # mmaction2 tests the height first: a square frame gives three equal crops
        return [(0, 0), (0, 2 * left), (0, left)]
    if w == size:
        return [(0, 0), (2 * top, 0), (top, 0)]
    raise ValueError(
        f"mmaction2's three crops take frames with one side of {size}, not {w}x{h}; resize first"
    )


def spatial_crops(
    frames: torch.Tensor, size: int, num_crops: int, protocol: str = "zeroi2v"
) -> list[torch.Tensor]:
    """Square crops of side `size` from (..., H, W) frames whose short side is >= size: the
    centre crop (num_crops 1) or three along the long side (3), placed by crop_corners."""
    h, w = frames.shape[-2:]
    corners = crop_corners(h, w, size, num_crops, protocol)
    return [frames[..., y : y + size, x : x + size] for y, x in corners]


def normalize(frames: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 (..., 3, H, W) -> float32 (x / 255 - mean) / std, mean and std in 0..1 units."""
    m = torch.tensor(mean, dtype=torch.float32, device=frames.device).view(3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=frames.device).view(3, 1, 1)
    # Contiguous out, whatever the layout in (decoded frames are channels-last): crops of it are
    # then rows of memory, and stacking them into a batch is a plain copy.
    return frames.to(torch.float32, memory_format=torch.contiguous_format).div_(255).sub_(m).div_(s)


@dataclass(frozen=True)
class ViewSpec:
    sampling: SamplingSpec = field(default_factory=SamplingSpec)
    image_size: int = 224
    spatial_crops: int = 1
    mean: tuple[float, float, float] = OPENAI_MEAN
    std: tuple[float, float, float] = OPENAI_STD

    def __post_init__(self):
        if isinstance(self.image_size, bool) or not isinstance(self.image_size, int):
            raise ValueError(f"image_size must be an int, got {self.image_size!r}")
        if self.image_size < 1:
            raise ValueError(f"image_size must be >= 1, got {self.image_size}")
        if self.spatial_crops not in (1, 3):
            raise ValueError(f"spatial_crops must be 1 or 3, got {self.spatial_crops!r}")
        for name in ("mean", "std"):
            value = tuple(float(v) for v in getattr(self, name))
            if len(value) != 3:
                raise ValueError(f"{name} needs 3 values (R, G, B), got {len(value)}")
            object.__setattr__(self, name, value)  # lists from JSON become hashable tuples
        if min(self.std) <= 0:
            raise ValueError(f"std must be positive, got {self.std}")

    @property
    def num_views(self) -> int:
        return self.sampling.num_clips * self.spatial_crops

    @property
    def protocol(self) -> str:
        """The test protocol (video.sampling.PROTOCOLS): the sampling's, which also picks the
        resize and the crops."""
        return self.sampling.protocol

    def resize(self, frames: torch.Tensor) -> torch.Tensor:
        """(T, 3, H, W) uint8 frames with the short side at the view size, resized as this
        spec's protocol resizes (resize_short_side): each test-time path resizes with this."""
        return resize_short_side(frames, self.image_size, self.protocol)

    @classmethod
    def from_preprocess(cls, d: dict) -> ViewSpec:
        """From a checkpoint's `preprocess` metadata; missing keys take the defaults (no
        "protocol": "zeroi2v"), unknown keys are ignored."""
        sampling = SamplingSpec(
            kind=d.get("sampling", "dense"),
            num_frames=d.get("num_frames", SamplingSpec.num_frames),
            interval=d.get("frame_interval", SamplingSpec.interval),
            num_clips=d.get("temporal_clips", 1),
            protocol=d.get("protocol", SamplingSpec.protocol),
        )
        return cls(
            sampling=sampling,
            image_size=d.get("image_size", cls.image_size),
            spatial_crops=d.get("spatial_crops", cls.spatial_crops),
            mean=d.get("mean", OPENAI_MEAN),
            std=d.get("std", OPENAI_STD),
        )

    def with_views(
        self, temporal_clips: int | None = None, spatial_crops: int | None = None
    ) -> ViewSpec:
        """This spec with another number of temporal clips and/or spatial crops (None: keep)."""
        spec = self
        if temporal_clips is not None:
            spec = dataclasses.replace(
                spec, sampling=dataclasses.replace(spec.sampling, num_clips=temporal_clips)
            )
        if spatial_crops is not None:
            spec = dataclasses.replace(spec, spatial_crops=spatial_crops)
        return spec

    def to_preprocess(self) -> dict:
        return {
            "num_frames": self.sampling.num_frames,
            "image_size": self.image_size,
            "mean": list(self.mean),
            "std": list(self.std),
            "temporal_clips": self.sampling.num_clips,
            "spatial_crops": self.spatial_crops,
            "sampling": self.sampling.kind,
            "frame_interval": self.sampling.interval,
            "protocol": self.protocol,
        }


def make_views(clips: Sequence[torch.Tensor], spec: ViewSpec) -> torch.Tensor:
    """Clips of (T, 3, H, W) uint8 frames -> (V, 3, T, S, S) float32, V = clips * crops,
    clip-major: clip 0 crop 0, clip 0 crop 1, ..., clip 1 crop 0, ..."""
    if not clips:
        raise ValueError("make_views needs at least one clip")
    lengths = {clip.shape[0] for clip in clips}
    if len(lengths) != 1:
        raise ValueError(f"clips must have the same number of frames, got {sorted(lengths)}")
    return views_from_clips(torch.stack([spec.resize(c) for c in clips]), spec)


def views_from_clips(clips: torch.Tensor, spec: ViewSpec) -> torch.Tensor:
    """(C, T, 3, H, W) uint8 clips whose short side is already spec.image_size -> the
    (V, 3, T, S, S) float32 views of make_views, on the clips' device."""
    return torch.stack(view_list(clips, spec))


def view_list(clips: torch.Tensor, spec: ViewSpec) -> list[torch.Tensor]:
    """views_from_clips as a list of strided views (3, T, S, S), for a caller that stacks them
    into its own batch (the service's model replica, which crops and normalises on its device
    so that only uint8 frames travel). Three crops cover the clip: it is normalised once, and
    the crops are views into it; one crop is cut first, so only its pixels are normalised."""
    views = []
    for clip in clips:
        if spec.spatial_crops == 1:
            clip = spatial_crops(clip, spec.image_size, 1, spec.protocol)[0]
        normalised = normalize(clip, spec.mean, spec.std)
        for crop in spatial_crops(normalised, spec.image_size, spec.spatial_crops, spec.protocol):
            views.append(crop.permute(1, 0, 2, 3))
    return views


def detection_view(
    clip: torch.Tensor, size: int, mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
    """(T, 3, H, W) uint8 -> (3, T, S, S) float32: the WHOLE frame resized to S x S (aspect not
    kept), so normalised box coordinates mean the same in the video and in the model input and
    no actor is cropped away."""
    resized = TF.resize(clip, [size, size], antialias=True)
    return normalize(resized, mean, std).permute(1, 0, 2, 3)


@dataclass(frozen=True)
class DecodedClips:
    """What decoding a video for the model gives: uint8 clips and what it cost."""

    clips: torch.Tensor  # (C, T, 3, H, W) uint8, channels-last in memory
    info: VideoInfo
    frames_decoded: int  # what the decoder produced (frames skipped undecoded not counted)
    hardware: bool  # decoded by NVDEC
    times: list[float] | None = None  # key-frame clips: the time of each


@dataclass(frozen=True)
class ClipPlan:
    """Which frames make which clip, and how each frame is resized as it is decoded: made from
    an open reader (its frame count, rate and keyframes) before anything past its first frame
    is decoded. Each task's plan (clips_plan, keyframe_clips_plan) is read the same way."""

    clips: list[list[int]]  # frame ordinals, clip by clip
    transform: FrameTransform
    times: list[float] | None = None  # key-frame clips: the time of each

    def frames_to_decode(self, reader: VideoReader) -> int:
        """How many frames reading this plan decodes (VideoReader.frames_to_decode)."""
        return reader.frames_to_decode(sorted({i for clip in self.clips for i in clip}))

    def read(self, reader: VideoReader) -> DecodedClips:
        """The frames of the plan in one read, each transformed as it is decoded, as (clips, T,
        3, H, W) uint8 with what the read cost."""
        frames = reader.read([i for clip in self.clips for i in clip], transform=self.transform)
        clips = frames.unflatten(0, (len(self.clips), len(self.clips[0])))
        return DecodedClips(clips, reader.info, reader.frames_decoded, reader.hardware, self.times)


SAMPLING_MODES = ("exact", "fast")


def clips_plan(reader: VideoReader, spec: ViewSpec, sampling: str = "exact") -> ClipPlan:
    """The test-time clips of `spec` for the video `reader` has open, frames resized to a short
    side of the view size, both as the spec's protocol says. sampling="fast" moves each frame to
    a keyframe at most half a frame gap away when there is one (see snap_to_keyframes): fewer
    frames to decode, at some cost in accuracy."""
    if sampling not in SAMPLING_MODES:
        raise ValueError(f"sampling is {' or '.join(SAMPLING_MODES)}, not {sampling!r}")
    plan = spec.sampling.plan(reader.info.num_frames, train=False)
    if sampling == "fast":
        plan = snap_to_keyframes(plan, reader.keyframes)
    return ClipPlan(plan, spec.resize)


def decode_clips(
    source: Source,
    spec: ViewSpec,
    limits: DecodeLimits = DecodeLimits(),
    device: str = "cpu",
    sampling: str = "exact",
) -> DecodedClips:
    """The test-time clips of a video (clips_plan), short side resized to the view size,
    as uint8: what views_from_clips turns into the model's views. One decoding pass, each frame
    converted and resized as it comes out of the decoder, so no full-size frame is kept."""
    if sampling not in SAMPLING_MODES:  # before the file is opened
        raise ValueError(f"sampling is {' or '.join(SAMPLING_MODES)}, not {sampling!r}")
    with VideoReader(source, limits, device) as reader:
        return clips_plan(reader, spec, sampling).read(reader)


@dataclass(frozen=True)
class Window:
    """One window of a timeline: a clip of the model's frames, short side at the view size."""

    start_s: float  # the first frame's time, from its timestamp (VideoReader.frame_times)
    end_s: float  # the end of the last frame
    clip: torch.Tensor  # (T, 3, H, W) uint8


@dataclass(frozen=True)
class WindowPlan:
    """A timeline's windows over the video a reader has open (windows_plan), made before any
    frame is decoded: a video too short for one window fails here, not midway."""

    windows: list[list[int]]  # frame ordinals, window by window
    stride_s: float
    frame_times: list[float]  # each frame's start, seconds
    duration_s: float
    transform: FrameTransform

    def stream(
        self, reader: VideoReader, stop: Callable[[], bool] | None = None
    ) -> Iterator[Window]:
        """Each window as soon as its last frame is decoded. One decode front to back; only
        the frames a window still to come needs are kept, so memory is one window's span of
        resized frames whatever the video's length. `stop`: as VideoReader.stream's."""
        windows, times = self.windows, self.frame_times
        ordinals = sorted({i for w in windows for i in w})
        kept: dict[int, torch.Tensor] = {}
        w = 0
        for ordinal, frame in reader.stream(ordinals, self.transform, stop):
            kept[ordinal] = frame
            while w < len(windows) and windows[w][-1] <= ordinal:
                frames = windows[w]
                clip = torch.stack([kept[i] for i in frames])
                after = frames[-1] + 1  # the window ends where the frame after it starts
                end = times[after] if after < len(times) else self.duration_s
                yield Window(times[frames[0]], end, clip)
                w += 1
                first_needed = windows[w][0] if w < len(windows) else ordinal + 1
                for i in [i for i in kept if i < first_needed]:
                    del kept[i]


def windows_plan(reader: VideoReader, spec: ViewSpec, stride_s: float | None = None) -> WindowPlan:
    """The sliding windows (video.sampling.sliding_windows) of the spec's frames and interval
    over the video `reader` has open, `stride_s` apart; None: half a window's span at the
    video's frame rate, so each moment is seen by two windows."""
    info, s = reader.info, spec.sampling
    if s.kind != "dense":
        raise ValueError(
            f"a timeline's windows are clips of frames a fixed interval apart; this model samples "
            f"{s.kind} clips (spread over a whole video), which a window cannot reproduce"
        )
    if stride_s is None:
        span = (s.num_frames - 1) * s.interval + 1
        stride_s = round(span / 2 / (info.fps or 1.0), 3) or 0.001
    times = reader.frame_times()
    windows = sliding_windows(times, s.num_frames, s.interval, stride_s)
    # The windows are the same under either protocol (a timeline is this project's own); the
    # frames are resized as the model's protocol resizes, so each window's views are its test
    # views of that clip.
    return WindowPlan(windows, stride_s, times, info.duration_s, spec.resize)


def load_views(
    source: Source, spec: ViewSpec, limits: DecodeLimits = DecodeLimits()
) -> tuple[torch.Tensor, VideoInfo]:
    """Test-time views of a video, (V, 3, T, S, S) float32, and its VideoInfo. Decodes the
    frames of all clips in one pass: each frame once, however many clips share it."""
    decoded = decode_clips(source, spec, limits)
    return views_from_clips(decoded.clips, spec), decoded.info


class TimestampError(ValueError):
    """A requested key-frame time the video does not have."""


def default_keyframes(duration_s: float) -> list[float]:
    """AVA's 1 Hz key frames: every whole second strictly inside the video, or its middle
    when it is shorter than two seconds."""
    seconds = [float(t) for t in range(1, int(duration_s) + 1) if t < duration_s]
    return seconds or [round(duration_s / 2, 3)]


def load_keyframe_clips(
    source: Source,
    spec: ViewSpec,
    timestamps: Sequence[float] | None = None,
    limits: DecodeLimits = DecodeLimits(),
    max_keyframes: int | None = None,
) -> tuple[torch.Tensor, list[float], VideoInfo]:
    """Detection inputs: for each key-frame time (seconds; default 1 Hz), the clip centred on
    it as (K, 3, T, S, S) float32 (detection_view), the times used and the VideoInfo."""
    decoded = decode_keyframe_clips(source, spec, timestamps, limits, max_keyframes)
    return detection_views(decoded.clips, spec), decoded.times, decoded.info


def detection_views(clips: torch.Tensor, spec: ViewSpec) -> torch.Tensor:
    """(K, T, 3, S, S) uint8 key-frame clips -> (K, 3, T, S, S) float32, on their device."""
    return normalize(clips, spec.mean, spec.std).permute(0, 2, 1, 3, 4)


def keyframe_clips_plan(
    reader: VideoReader,
    spec: ViewSpec,
    timestamps: Sequence[float] | None = None,
    max_keyframes: int | None = None,
) -> ClipPlan:
    """For each key-frame time (seconds; default 1 Hz), the clip centred on it, each whole
    frame resized to S x S as detection_view does. More than `max_keyframes` times (a long
    video's 1 Hz default) is refused before any frame is decoded."""
    info = reader.info
    times = list(timestamps) if timestamps is not None else default_keyframes(info.duration_s)
    if not times:
        raise TimestampError("no key-frame times")
    if max_keyframes is not None and len(times) > max_keyframes:
        raise TimestampError(
            f"{len(times)} key frames (1 Hz over {info.duration_s:.1f} s); at most "
            f"{max_keyframes}: send `timestamps`"
        )
    plan = []
    for t in times:
        # The last frame starts before duration_s; allow up to its end.
        if not 0 <= t <= info.duration_s:
            raise TimestampError(
                f"key frame at {t} s is outside the video (0 to {info.duration_s:.3f} s)"
            )
        centre = min(round(t * info.fps), info.num_frames - 1)
        s = spec.sampling
        plan.append(keyframe_clip(centre, info.num_frames, s.num_frames, s.interval))
    size = [spec.image_size, spec.image_size]
    return ClipPlan(plan, functools.partial(TF.resize, size=size, antialias=True), times)


def decode_keyframe_clips(
    source: Source,
    spec: ViewSpec,
    timestamps: Sequence[float] | None = None,
    limits: DecodeLimits = DecodeLimits(),
    max_keyframes: int | None = None,
    device: str = "cpu",
) -> DecodedClips:
    """The key-frame clips of keyframe_clips_plan as uint8 (K, T, 3, S, S), with the times.
    One decoding pass; a frame shared by clips is decoded once."""
    with VideoReader(source, limits, device) as reader:
        return keyframe_clips_plan(reader, spec, timestamps, max_keyframes).read(reader)
