"""Which frames make a clip: pure functions of the frame count, no I/O.

Three samplers, two as in mmaction2 and one as in AVA:
- dense (SampleFrames): `num_frames` frames `interval` apart; the ZeroI2V Kinetics recipe
  (8 x 16 for ViT-B). Test time takes `num_clips` clips with evenly spaced starts.
- uniform (TSN, UniformSampleFrames): the video cut into `num_segments` equal segments, one
  frame from each; covers the whole video whatever its length (Something-Something recipe).
- keyframe (AVA): `num_frames` frames `interval` apart centred on a key frame; the clip a
  detector sees for the actors at that instant.

And the windows of a timeline (`sliding_windows`): the dense clip, repeated every stride.

Two test protocols (PROTOCOLS), recorded in a checkpoint's preprocess as "protocol":
- zeroi2v (the default, and every checkpoint without the key): dense_clips / uniform_clips
  below, which keep a short video's clips in temporal order.
- mmaction2: exactly what mmaction2's test pipeline samples (mmaction2_dense_clips,
  mmaction2_uniform_clips), for models imported from checkpoints trained and tested with it,
  which must see the frames their reported accuracy was measured on. It also picks the resize
  and the crops (video/views.py). Training samples the same way under both.

Every index returned is a frame ordinal in [0, video_frames).
"""

from __future__ import annotations

import bisect
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

PROTOCOLS = ("zeroi2v", "mmaction2")


def check_protocol(protocol: str) -> None:
    if protocol not in PROTOCOLS:
        raise ValueError(
            f"test protocol must be 'zeroi2v' (this project's views) or 'mmaction2' (mmaction2's "
            f"test pipeline, for imported models), not {protocol!r}"
        )


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")


def _spread(video_frames: int, count: int) -> list[int]:
    """`count` ordinals spread evenly over a video of fewer frames, each frame repeated."""
    return [i * video_frames // count for i in range(count)]


def dense_clips(
    video_frames: int,
    num_frames: int,
    interval: int,
    num_clips: int = 1,
    train: bool = False,
    rng: random.Random | None = None,
) -> list[list[int]]:
    """Clips of `num_frames` frames `interval` apart; a clip spans num_frames * interval frames.

    train: one clip at a random start (`num_clips` is a test-time setting and is ignored).
    test: `num_clips` clips whose starts are spread evenly and centred, as mmaction2 0.x's
    `_get_test_clips`: start_k = int((k + 0.5) * (video_frames - span + 1) / num_clips). (1.x's,
    which the "mmaction2" protocol follows, is mmaction2_dense_clips.)

    Short videos (stated, and unlike mmaction2's loop, which scrambles temporal order): when the
    span does not fit, the interval shrinks to video_frames // num_frames, the largest that
    fits, so the clip stays in order and covers the video. A video with fewer frames than
    `num_frames` has each frame repeated in order (i * video_frames // num_frames); every clip
    is then the same.
    """
    _check_positive(
        video_frames=video_frames, num_frames=num_frames, interval=interval, num_clips=num_clips
    )
    if video_frames < num_frames:
        return [_spread(video_frames, num_frames) for _ in range(1 if train else num_clips)]
    interval = min(interval, video_frames // num_frames)
    span = num_frames * interval
    room = video_frames - span + 1  # number of possible starts, >= 1
    if train:
        rng = rng if rng is not None else random
        starts = [rng.randrange(room)]
    else:
        starts = [int((k + 0.5) * room / num_clips) for k in range(num_clips)]
    return [[s + j * interval for j in range(num_frames)] for s in starts]


def uniform_clips(
    video_frames: int,
    num_segments: int,
    num_clips: int = 1,
    train: bool = False,
    rng: random.Random | None = None,
) -> list[list[int]]:
    """One frame from each of `num_segments` equal segments (TSN).

    Segment i covers [i * video_frames / num_segments, (i + 1) * video_frames / num_segments).
    train: a random frame inside each segment (one clip; `num_clips` is ignored).
    test: clip 0 takes the middle of each segment; clip k of n takes the point a fraction
    (0.5 + k / n) mod 1 into each segment, so the clips interleave evenly.
    Fewer frames than segments: each frame is repeated in order (i * video_frames //
    num_segments), and every clip is the same.
    """
    _check_positive(video_frames=video_frames, num_segments=num_segments, num_clips=num_clips)
    if video_frames < num_segments:
        return [_spread(video_frames, num_segments) for _ in range(1 if train else num_clips)]
    bounds = [i * video_frames // num_segments for i in range(num_segments + 1)]
    if train:
        rng = rng if rng is not None else random
        return [[rng.randrange(lo, hi) for lo, hi in zip(bounds, bounds[1:], strict=False)]]
    scale = 2 * num_clips  # positions in units of 1 / (2 n) segment, so the floor is exact
    clips = []
    for k in range(num_clips):
        where = (num_clips + 2 * k) % scale  # (0.5 + k / n) mod 1, times 2 n
        row = range(num_segments)
        clips.append([(i * scale + where) * video_frames // (scale * num_segments) for i in row])
    return clips


def mmaction2_dense_clips(
    video_frames: int, num_frames: int, interval: int, num_clips: int = 1
) -> list[list[int]]:
    """mmaction2's SampleFrames(clip_len=num_frames, frame_interval=interval, num_clips,
    test_mode=True), index for index. The clip spans (num_frames - 1) * interval + 1 frames;
    with room = max(video_frames - span, 0), clip k starts at round(k * room / (num_clips - 1))
    (half to even, as np.round), or at room // 2 for one clip, so the first clip starts at the
    first frame and the last ends at the last. Ordinals past the end wrap around to the start
    (mmaction2's 'loop' out-of-bound option): a video shorter than a clip is seen looped.
    A one-frame clip follows mmaction2's 2D branch (below).
    """
    _check_positive(
        video_frames=video_frames, num_frames=num_frames, interval=interval, num_clips=num_clips
    )
    if num_frames == 1:  # their 2D branch: clip k at the middle of the k-th of num_clips parts
        part = video_frames / num_clips
        return [[int(k * part + part / 2) % video_frames] for k in range(num_clips)]
    room = max(video_frames - ((num_frames - 1) * interval + 1), 0)
    if num_clips > 1:
        # Python's round() of a float rounds half to even, as np.round does.
        starts = [round(k * (room / (num_clips - 1))) for k in range(num_clips)]
    else:
        starts = [room // 2]
    return [[(s + j * interval) % video_frames for j in range(num_frames)] for s in starts]


def mmaction2_uniform_clips(
    video_frames: int, num_segments: int, num_clips: int = 1
) -> list[list[int]]:
    """mmaction2's UniformSample(clip_len=num_segments, num_clips, test_mode=True), index for
    index: with seg = (video_frames - 1) / num_segments, clip k takes frame
    round(seg * i) + int(seg * (k + 1) / (num_clips + 1)) from segment i (round half to even).
    Always within the video, so no wrap is needed.
    """
    _check_positive(video_frames=video_frames, num_segments=num_segments, num_clips=num_clips)
    seg_size = (video_frames - 1) / num_segments
    duration = seg_size / (num_clips + 1)  # the clips' offsets split a segment evenly
    return [
        [round(seg_size * i) + int(duration * (k + 1)) for i in range(num_segments)]
        for k in range(num_clips)
    ]


def keyframe_clip(key_frame: int, video_frames: int, num_frames: int, interval: int) -> list[int]:
    """`num_frames` ordinals `interval` apart with the key frame at position num_frames // 2
    (SlowFast's AVA clips: the key frame is the middle one). Ordinals past either end of the
    video repeat the first or last frame, so a key frame near an end keeps its place in the clip.
    """
    _check_positive(video_frames=video_frames, num_frames=num_frames, interval=interval)
    if not 0 <= key_frame < video_frames:
        raise ValueError(f"key frame {key_frame} is outside the video's {video_frames} frames")
    first = key_frame - (num_frames // 2) * interval
    return [min(max(first + j * interval, 0), video_frames - 1) for j in range(num_frames)]


class ShorterThanAWindow(ValueError):
    """A timeline of a video shorter than one of its windows."""


def sliding_windows(
    frame_times: Sequence[float], num_frames: int, interval: int, stride_s: float
) -> list[list[int]]:
    """A timeline's windows: clips of `num_frames` ordinals `interval` apart, the k-th starting
    at the frame whose time (`frame_times`, seconds, ascending) is nearest k * stride_s, as many
    as fit wholly in the video; two targets nearest one frame give one window. A video shorter
    than one window is ShorterThanAWindow, which says both lengths."""
    video_frames = len(frame_times)
    _check_positive(video_frames=video_frames, num_frames=num_frames, interval=interval)
    if not 0 < stride_s < math.inf:
        raise ValueError(f"stride_s must be > 0 and finite, got {stride_s!r}")
    span = (num_frames - 1) * interval + 1
    if span > video_frames:
        raise ShorterThanAWindow(
            f"a window of {num_frames} frames {interval} apart spans {span} frames; the video "
            f"has {video_frames} ({frame_times[-1] - frame_times[0]:.2f} s between its first "
            f"and last frame)"
        )
    last = video_frames - span  # the last frame a window can start at
    starts: list[int] = []
    k = 0
    while True:
        target = k * stride_s
        i = bisect.bisect_left(frame_times, target)
        if i == video_frames or (i and target - frame_times[i - 1] <= frame_times[i] - target):
            i -= 1  # the nearer frame; a tie goes to the earlier one
        if i > last:
            break
        if not starts or i != starts[-1]:
            starts.append(i)
        if i == video_frames - 1:
            break
        # Skip the targets that would land on this frame again (a stride under a frame).
        middle = (frame_times[i] + frame_times[i + 1]) / 2
        k = max(k + 1, math.ceil(middle / stride_s))
    return [[start + j * interval for j in range(num_frames)] for start in starts]


def snap_to_keyframes(plan: list[list[int]], keyframes: list[int]) -> list[list[int]]:
    """The fast, lossy plan: each ordinal moved to the nearest keyframe when one lies less than
    half the gap to its clip's neighbouring frames away, so a decoder that seeks there decodes
    that one frame instead of everything since the previous keyframe. Frames with no keyframe
    that close stay where they are (a video with one keyframe is sampled exactly)."""
    if not keyframes:
        return [list(clip) for clip in plan]
    snapped = []
    for clip in plan:
        gaps = [b - a for a, b in zip(clip, clip[1:], strict=False) if b > a]
        gap = min(gaps, default=1)
        row = []
        for i in clip:
            k = bisect.bisect_left(keyframes, i)
            near = min(keyframes[max(k - 1, 0) : k + 1], key=lambda f: abs(f - i))
            # Under half a gap away: two frames of a clip never land on the same keyframe.
            row.append(near if 2 * abs(near - i) < gap else i)
        snapped.append(row)
    return snapped


@dataclass(frozen=True)
class SamplingSpec:
    """How clips are drawn from a video. `num_clips` is the number of test-time clips (views
    along time); training always draws one clip. `protocol` (PROTOCOLS) picks the test-time
    formulas; ViewSpec.protocol reads it from here for the resize and the crops, so the two
    cannot disagree."""

    kind: Literal["dense", "uniform"] = "dense"
    num_frames: int = 8
    interval: int = 16  # dense only
    num_clips: int = 1
    protocol: Literal["zeroi2v", "mmaction2"] = "zeroi2v"

    def __post_init__(self):
        if self.kind not in ("dense", "uniform"):
            raise ValueError(f"sampling kind must be 'dense' or 'uniform', not {self.kind!r}")
        _check_positive(
            num_frames=self.num_frames, interval=self.interval, num_clips=self.num_clips
        )
        check_protocol(self.protocol)

    def plan(
        self, video_frames: int, train: bool, rng: random.Random | None = None
    ) -> list[list[int]]:
        """Frame ordinals of each clip: 1 clip when training, `num_clips` at test time."""
        if self.protocol == "mmaction2" and not train:
            if self.kind == "dense":
                return mmaction2_dense_clips(
                    video_frames, self.num_frames, self.interval, self.num_clips
                )
            return mmaction2_uniform_clips(video_frames, self.num_frames, self.num_clips)
        if self.kind == "dense":
            return dense_clips(
                video_frames, self.num_frames, self.interval, self.num_clips, train, rng
            )
        return uniform_clips(video_frames, self.num_frames, self.num_clips, train, rng)
