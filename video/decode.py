"""Decoding: frames by ordinal, read with as little decoding as the request needs.

Opening a `VideoReader` demuxes the video packets without decoding pixels. That gives the exact
frame count and every frame's presentation timestamp (pts), and the limits (decode bombs) are
enforced before anything is decoded. Frame i is the i-th frame in presentation order, whatever
its timestamp, so variable frame rate is handled exactly. `read` seeks to the keyframe before
each group of requested frames and decodes forward only as far as that group needs.

Refused: still images and text (FFmpeg would show them as one-frame videos), playlists and
network streams (they open other files or sockets), and anything over `DecodeLimits`. Every
failure is a `VideoError` whose `reason` a service can return as is; only `IndexError` (a frame
that does not exist), `TypeError` (a source that is not a path, bytes or a file) and
`ValueError` (a decode device other than cpu or cuda) escape otherwise.
"""

from __future__ import annotations

import bisect
import collections
import contextlib
import functools
import io
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import BinaryIO

import av
import numpy as np
import torch

Source = str | os.PathLike | bytes | bytearray | memoryview | BinaryIO
# A per-frame step of `VideoReader.read`: (1, 3, H, W) uint8 -> (1, 3, H', W') uint8.
FrameTransform = Callable[[torch.Tensor], torch.Tensor]


class VideoError(ValueError):
    """A video that cannot be used; `reason` is a stable code for APIs and metrics."""

    reason: str = "video_error"


class NotAVideo(VideoError):
    reason = "not_a_video"


class DamagedVideo(NotAVideo):
    """A video whose container or stream is damaged: FFmpeg failed (or could not allocate what
    the file's sizes asked for) at a named stage after recognising the format."""

    reason = "damaged"


class NoVideoStream(VideoError):
    reason = "no_video_stream"


class EmptyVideo(VideoError):
    reason = "empty"


class VideoTooLarge(VideoError):
    reason = "too_large"


class DecodeTimeout(VideoError):
    reason = "timeout"


class OverCostLimit(VideoError):
    """What a request would cost is over its limits, whatever the file's size: frames so thin
    that resizing them blows up, or more decoding than one request may ask for."""

    reason = "over_cost_limit"


@dataclass(frozen=True)
class DecodeLimits:
    """Bounds on what one video may cost. Width and height bind either orientation: the long
    side may be up to max(max_width, max_height), the short side up to the smaller of the two,
    and the area up to max_pixels (so 3840x2160 and 2160x3840 pass, 3840x3840 does not)."""

    max_width: int = 3840
    max_height: int = 3840
    max_duration_s: float = 600.0
    max_frames: int = 36000
    timeout_s: float = 60.0  # wall clock for opening, and again for each read
    threads: int = 0  # decoder threads; 0 lets FFmpeg pick
    max_pixels: int = 3840 * 2160
    # Per-request cost, which a small file can make huge: resizing 3840x2 frames to a short
    # side of 224 makes each 224x430080; and a long GOP of 4K frames, which compress to almost
    # nothing when flat, makes every target cost hundreds of decoded frames.
    max_aspect_ratio: float = 8.0  # long side / short side
    # Per read: frames it decodes x their pixels. None here (training and evaluation read what
    # the dataset holds); the service sets one (service/decoding.py).
    max_decoded_pixels: int | None = None

    def __post_init__(self):
        if not self.max_aspect_ratio >= 1:
            raise ValueError(
                f"DecodeLimits.max_aspect_ratio must be >= 1, got {self.max_aspect_ratio}"
            )
        if self.max_decoded_pixels is not None and self.max_decoded_pixels < 1:
            raise ValueError(
                f"DecodeLimits.max_decoded_pixels must be >= 1, got {self.max_decoded_pixels}"
            )
        for name in ("max_width", "max_height", "max_frames", "max_pixels"):
            if getattr(self, name) < 1:
                raise ValueError(f"DecodeLimits.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_duration_s", "timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"DecodeLimits.{name} must be > 0, got {getattr(self, name)}")
        if self.threads < 0:
            raise ValueError(f"DecodeLimits.threads must be >= 0, got {self.threads}")


@dataclass(frozen=True)
class VideoInfo:
    num_frames: int  # counted from the demuxed packets, not the container's estimate
    fps: float  # average: num_frames / duration_s
    duration_s: float
    width: int  # as displayed, i.e. after rotation
    height: int
    rotation: int  # clockwise degrees a player turns the coded picture: 0, 90, 180 or 270
    codec: str
    has_audio: bool


# Demuxers that read still images (or text rendered as video), not videos. Animated formats
# (gif, apng, webp animations) have their own demuxers and are accepted.
IMAGE_DEMUXERS = {"image2", "image2pipe", "tty", "bin", "xbin", "adf", "idf", "ico", "fits"}
# Demuxers that open other files or network streams (playlists, session descriptions). FFmpeg
# refuses them before they read anything: a live playlist would otherwise wait for new segments
# for minutes inside av.open, where no timeout of ours can reach.
REFUSED_DEMUXERS = {"hls", "dash", "concat", "sdp", "rtsp", "rtp"}


# H.264 NAL unit types a skipped packet may hold: non-IDR slices and their partitions (1-4),
# SEI (6), access unit delimiters (9), filler (12).
SKIPPABLE_NAL_TYPES = {1, 2, 3, 4, 6, 9, 12}


class _PtsOutOfOrder(Exception):
    """Decoded frames came out with decreasing timestamps."""


def _is_image(name: str) -> bool:
    return any(n in IMAGE_DEMUXERS or n.endswith("_pipe") for n in name.split(","))


@functools.cache
def _open_options() -> dict[str, str]:
    allowed = (n for n in av.formats_available if not set(n.split(",")) & REFUSED_DEMUXERS)
    return {"format_whitelist": ",".join(sorted(allowed)), "protocol_whitelist": "file"}


def _describe(exc: BaseException) -> str:
    if isinstance(exc, av.FFmpegError):
        return exc.strerror or type(exc).__name__
    if isinstance(exc, MemoryError):
        return "cannot allocate memory (a corrupt size in the file?)"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class VideoReader:
    """Random access to the frames of one video. Not thread-safe; use one per thread.

    source: a path, the file's bytes, or a readable binary file object (left open; if it cannot
    seek it is read into memory first).

        with VideoReader("clip.mp4") as reader:
            frames = reader.read([0, 16, 32])  # (3, 3, H, W) uint8, upright

    `frames_decoded` and `seeks` count the work done, for tests and diagnostics.
    """

    def __init__(
        self,
        source: Source,
        limits: DecodeLimits = DecodeLimits(),
        device: str = "cpu",
        name: str | None = None,
    ):
        if device not in ("cpu", "cuda"):
            raise ValueError(f"decode device is 'cpu' or 'cuda', not {device!r}")
        self.limits = limits
        self.device = device
        self.hardware = False  # whether NVDEC decodes this video (see _open)
        self.frames_decoded = 0
        self._budget: tuple[int, int] | None = None  # (frames_decoded at the read's start, frames)
        self.seeks = 0
        self._container = None
        self._transform: FrameTransform | None = None
        self._keep_pts: set[int] | None = None
        self._resume: tuple | None = None  # _first_frame's decode, to go on with (_decode_from)
        self._stage = "opening"  # what the reader is doing, for error messages
        self._input, self.name = _input_of(source)
        self.name = name or self.name  # what messages call the video (a service: not its path)
        try:
            with _translate_errors(self.name, "open", limits.timeout_s, lambda: self._stage):
                self._start_pos = self._input.tell() if hasattr(self._input, "tell") else 0
                self._deadline = time.monotonic() + limits.timeout_s
                self._open()
                self.info = self._index()
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._resume = None
        if self._container is not None:
            container, self._container = self._container, None
            # Closing a half-opened container must not hide the error that got us here.
            with contextlib.suppress(Exception):
                container.close()

    def read(self, indices: Sequence[int], transform: FrameTransform | None = None) -> torch.Tensor:
        """Frames by ordinal (any order, repeats allowed) as (N, 3, H, W) uint8, in the order
        asked. Raises IndexError for an ordinal outside [0, num_frames).

        transform: applied to each frame, (1, 3, H, W) uint8, right after it is decoded (a
        resize, say): only the transformed frames are kept, and the result has their size. The
        frame it gets and the result are channels-last in memory, which is what torch's fast
        uint8 resize reads, and how the decoder's RGB comes out; no NCHW copy is made.
        """
        if self._container is None:
            raise ValueError(f"{self.name}: the reader is closed")
        wanted = [_ordinal(i, self.info.num_frames, self.name) for i in indices]
        if not wanted:
            return torch.empty((0, 3, self.info.height, self.info.width), dtype=torch.uint8)
        self._check_cost(sorted(set(wanted)))
        with _translate_errors(self.name, "read", self.limits.timeout_s, lambda: self._stage):
            self._deadline = time.monotonic() + self.limits.timeout_s
            self._transform = transform
            frames = self._decode_targets(sorted(set(wanted)))
        if transform is None:
            out = torch.empty(
                (len(wanted), 3, self.info.height, self.info.width), dtype=torch.uint8
            )
            for k, i in enumerate(wanted):
                out[k] = frames[i].permute(2, 0, 1)
            return out
        return torch.stack([frames[i] for i in wanted]).permute(0, 3, 1, 2)

    def stream(
        self,
        ordinals: Sequence[int],
        transform: FrameTransform | None = None,
        stop: Callable[[], bool] | None = None,
    ) -> Iterator[tuple[int, torch.Tensor]]:
        """(ordinal, frame) for the sorted unique `ordinals`, in that order, from one decode of
        the video front to back: no seeking back and no frame kept here, so a long video costs
        the memory of one frame at a time. Frames are (3, H, W) uint8 (after `transform`, as
        in `read`). `timeout_s` bounds each wait for the next frame, not the whole stream; the
        per-read cost limit does not apply (the duration limit bounds a stream). `stop`, asked
        after every decoded frame, ends the stream early when it says so (a client gone)."""
        if self._container is None:
            raise ValueError(f"{self.name}: the reader is closed")
        wanted = [_ordinal(i, self.info.num_frames, self.name) for i in ordinals]
        if wanted != sorted(set(wanted)):
            raise ValueError("stream() takes sorted, unique ordinals")
        if not wanted:
            return
        self._transform, self._budget = transform, None
        pending = iter(wanted)
        want = next(pending)
        # As read() does: unreferenced frames are skipped on the first pass; a wanted frame lost
        # to that, or timestamps that go backwards (AVI's packed B-frames), start the decode
        # again from the beginning (every frame decoded; or frames counted in order), passing
        # over what was already yielded.
        skip = self.info.codec == "h264" and self._reordered and not self._sequential
        while True:
            self._keep_pts = {self._pts[i] for i in wanted if i >= want} if skip else None
            out_of_order = False
            try:
                with _translate_errors(
                    self.name, "read", self.limits.timeout_s, lambda: self._stage
                ):
                    try:
                        remaining = [i for i in wanted if i >= want]
                        for ordinal, pixels in self._stream_pass(remaining, stop):
                            yield ordinal, pixels
                            self._deadline = time.monotonic() + self.limits.timeout_s
                            want = next(pending, None)
                            if want is None:
                                return
                    except _PtsOutOfOrder:
                        out_of_order = True
            finally:
                self._keep_pts = None
            if stop is not None and stop():
                return
            if out_of_order:
                self._sequential, skip = True, False
            elif skip:
                skip = False
            else:
                break
        raise NotAVideo(
            f"{self.name}: frame {want} of {self.info.num_frames} could not be decoded "
            f"(corrupt or truncated file)"
        )

    # Frames a stream holds back in timestamp order before giving them out: timestamps that go
    # backwards (AVI's packed B-frames) show within a frame or two of the frames they mislabel,
    # and a frame given out cannot be taken back.
    STREAM_LOOKAHEAD = 8

    def _stream_pass(
        self, remaining: list[int], stop: Callable[[], bool] | None = None
    ) -> Iterator[tuple[int, torch.Tensor]]:
        """One decode from the start: (ordinal, frame) for each of the sorted `remaining`,
        ending early when one of them did not come out (skipped, lost, or damaged), or when
        `stop()` says so."""
        self._deadline = time.monotonic() + self.limits.timeout_s
        targets = iter(remaining)
        want = next(targets)
        last_pts = None
        held: collections.deque = collections.deque()  # (decoded count, ordinal, frame)
        lookahead = 0 if self._sequential else self.STREAM_LOOKAHEAD
        for count, (frame, trusted) in enumerate(self._decode_from(None)):
            if stop is not None and stop():
                return
            if self._sequential:
                ordinal = count
                # A packet that failed to decode left no frame: the count is off after it.
                trusted = trusted and not self._decode_errors
            else:
                ordinal = self._ordinal_of.get(frame.pts)
                if ordinal is None:
                    continue
                if last_pts is not None and frame.pts < last_pts:
                    raise _PtsOutOfOrder
                last_pts = frame.pts
            while held and count - held[0][0] >= lookahead:
                yield held.popleft()[1:]
            if want is None or ordinal < want:
                if want is None and not held:
                    return
                continue
            if ordinal > want or not trusted:
                break
            held.append((count, ordinal, self._to_array(frame).permute(2, 0, 1)))
            want = next(targets, None)
        while held:
            yield held.popleft()[1:]

    def frame_times(self) -> list[float]:
        """Each frame's start in seconds from the first frame, from its timestamp (so a
        variable frame rate is followed); ordinal / average fps where frames are counted in
        order because the timestamps cannot be trusted."""
        if self._sequential or not getattr(self, "_time_base", None):
            fps = self.info.fps or 1.0
            return [i / fps for i in range(self.info.num_frames)]
        first, tb = self._pts[0], self._time_base
        return [float((p - first) * tb) for p in self._pts]

    @property
    def keyframes(self) -> list[int]:
        """Ordinals of the keyframes (where decoding can start), [] when frames are counted
        in decode order because the timestamps cannot be trusted."""
        return [] if self._sequential else list(self._keyframes)

    # -- opening and indexing --------------------------------------------------------------

    def _open(self) -> None:
        self._stage = "opening"
        # "file:" so that a name like "12:30.mp4" is not taken for a protocol. PyAV's timeout
        # interrupts a read that blocks (a stalled file system) where our clock cannot.
        source = "file:" + self._input if isinstance(self._input, str) else self._input
        try:
            self._container = self._open_container(source)
        except av.error.ArgumentError as exc:
            raise NotAVideo(
                f"{self.name}: cannot open as a video: {_describe(exc)} (a playlist or network "
                f"stream, which are refused, or an unsupported format)"
            ) from exc
        fmt = self._container.format.name
        if _is_image(fmt):
            raise NotAVideo(f"{self.name}: a still image or text ({fmt} format), not a video")
        video = self._container.streams.video
        covers = [s for s in video if s.disposition & av.stream.Disposition.attached_pic]
        streams = [s for s in video if s not in covers]
        if not streams:
            kinds = sorted({s.type for s in self._container.streams if s not in covers})
            found = f"{' and '.join(kinds)} only" if kinds else "no streams"
            found += ", and a cover picture" if covers else ""
            raise NoVideoStream(f"{self.name}: no video stream ({found})")
        self._stream = streams[0]
        if self._stream.codec_context is None:
            raise NotAVideo(f"{self.name}: no decoder for the video codec of this file")
        for s in self._container.streams:
            if s is not self._stream:
                s.discard = av.stream.Discard.all  # never read audio or other streams
        ctx = self._stream.codec_context
        extradata = ctx.extradata or b""
        # avcC extradata (version 1) gives the size of the NAL length fields; without it the
        # stream is Annex B.
        avcc = ctx.name == "h264" and len(extradata) >= 7 and extradata[0] == 1
        self._nal_length_size = (extradata[4] & 3) + 1 if avcc else None
        self.hardware = bool(ctx.is_hwaccel)
        if not self.hardware:  # NVDEC runs one stream per context; threads would only wait
            ctx.thread_type = "AUTO"
            ctx.thread_count = self.limits.threads
        if ctx.width and ctx.height:
            self._check_size(ctx.width, ctx.height)

    def _open_container(self, source):
        options = dict(container_options=_open_options(), timeout=self.limits.timeout_s)
        if self.device == "cuda":
            # NVDEC where the codec has it (PyAV falls back to software for the others); the
            # frames come back to host memory as NV12 and are converted as software frames
            # are. If the device cannot be opened at all, this video decodes on the CPU.
            try:
                return av.open(source, "r", hwaccel=hardware_decoder(), **options)
            except av.FFmpegError:
                if hasattr(source, "seek"):
                    source.seek(self._start_pos)
        return av.open(source, "r", **options)

    def _index(self) -> VideoInfo:
        """Demux every video packet (no decoding) and check the limits, then decode one frame."""
        self._stage = "indexing"
        stream, limits = self._stream, self.limits
        tb = stream.time_base
        if stream.duration and tb and float(stream.duration * tb) > limits.max_duration_s:
            raise self._too_long(f"{float(stream.duration * tb):.1f} s", " (container header)")
        if stream.frames > limits.max_frames:
            raise self._too_many(str(stream.frames), " (container header)")
        pts: list[int | None] = []
        keyframes: list[int | None] = []
        max_ticks = limits.max_duration_s / float(tb) if tb else float("inf")
        first_ts = last_ts = None
        last_duration = cut_short = 0
        reordered = False
        for packet in self._container.demux(stream):
            self._check_time()
            if packet.size == 0:  # the flush packet PyAV appends at the end
                continue
            for ts in (packet.pts, packet.dts):
                if ts is not None and (first_ts is None or ts < first_ts):
                    first_ts = ts
            # Pre-roll the demuxer marks for discarding (mp4 edit lists), and a partial packet
            # cut off by the end of a truncated file, are not frames of this video.
            if packet.is_discard or packet.is_corrupt:
                cut_short += packet.is_corrupt
                continue
            pts.append(packet.pts)
            reordered = reordered or packet.pts != packet.dts
            if packet.is_keyframe:
                keyframes.append(packet.pts)
            if len(pts) > limits.max_frames:
                raise self._too_many(f"more than {limits.max_frames}")
            if packet.pts is not None:
                if last_ts is None or packet.pts > last_ts:
                    last_ts, last_duration = packet.pts, packet.duration or 0
                # Checked while demuxing, so a very long file is refused without reading it all.
                if last_ts - first_ts > max_ticks:
                    raise self._too_long(f"more than {float((last_ts - first_ts) * tb):.1f} s")
        if not pts and cut_short:
            raise NotAVideo(f"{self.name}: truncated or corrupt, no complete video frame")
        if not pts:
            raise EmptyVideo(f"{self.name}: the video stream has no frames")
        self._first_ts = first_ts if first_ts is not None else 0
        # Presentation times that differ from decode times: the container says the display
        # order (AVI, say, stamps frames in decode order; skipping there could hide the
        # backwards timestamps that make the reader count frames instead).
        self._reordered = reordered

        # Ordinals come from sorted timestamps. Without a usable timestamp for every frame (raw
        # streams, broken muxers) frames are counted in decode order from the start instead.
        self._sequential = None in pts or len(set(pts)) != len(pts)
        rate = stream.average_rate or stream.guessed_rate
        duration = Fraction(len(pts)) / rate if rate else Fraction(0)
        if self._sequential:
            self._pts, self._keyframes = [], []
        else:
            self._pts = sorted(pts)
            self._time_base = tb
            self._ordinal_of = {p: i for i, p in enumerate(self._pts)}
            self._keyframes = sorted(self._ordinal_of[p] for p in keyframes)
            gaps = np.diff(self._pts)
            last = last_duration or (int(np.median(gaps)) if len(gaps) else 0)
            span = self._pts[-1] - self._pts[0] + last
            if tb and span > 0:  # else a single frame of unknown duration: keep the rate's
                duration = span * tb
            if duration > limits.max_duration_s:
                raise self._too_long(f"{float(duration):.1f} s")

        first = self._first_frame()
        self._coded_size = (first.width, first.height)
        self._rotation = _rotation_of(first, stream)
        width, height = self._coded_size
        if self._rotation in (90, 270):
            width, height = height, width
        has_audio = any(s.type == "audio" for s in self._container.streams)
        return VideoInfo(
            num_frames=len(pts),
            fps=float(len(pts) / duration) if duration else 0.0,
            duration_s=float(duration),
            width=width,
            height=height,
            rotation=self._rotation,
            codec=stream.codec_context.name,
            has_audio=has_audio,
        )

    def _first_frame(self) -> av.VideoFrame:
        """The first decodable frame: proves the stream decodes and carries the rotation. The
        decode it came from is kept: a first read that starts at the beginning goes on from
        there instead of decoding the start again (a frame or more; 11 ms at 1080p)."""
        decoding = self._decode_from(None)
        for frame, trusted in decoding:
            if not self._sequential and self._ordinal_of.get(frame.pts) is None:
                # The decoder's timestamps do not match the packets': count frames instead.
                self._sequential = True
            # A device context alone does not say NVDEC decodes: FFmpeg falls back to software
            # for what it cannot (4:4:4, 10-bit H.264, no libnvcuvid in the container).
            self.hardware = self.hardware and self._stream.codec_context.pix_fmt == "cuda"
            self._resume = (decoding, frame, trusted, self._decode_errors)
            return frame
        if self._decode_errors:
            raise NotAVideo(
                f"{self.name}: the {self._stream.codec_context.name} video stream does not "
                f"decode ({self._decode_errors} bad packets, no frame)"
            )
        raise EmptyVideo(f"{self.name}: no frame of the video stream decodes")

    # -- decoding --------------------------------------------------------------------------

    def _decode_targets(
        self, targets: list[int], skip_unreferenced: bool = True
    ) -> dict[int, torch.Tensor]:
        """Decode the sorted unique ordinals `targets`; {ordinal: _to_array(frame)}."""
        skip = False
        frames: dict[int, torch.Tensor] = {}
        if self._sequential:
            want = set(targets)
            for ordinal, (frame, trusted) in enumerate(self._decode_from(None)):
                # A packet that failed to decode left no frame behind: the count is off after it.
                if ordinal in want and trusted and not self._decode_errors:
                    frames[ordinal] = self._to_array(frame)
                if ordinal >= targets[-1]:
                    break
        else:
            skip = skip_unreferenced and self.info.codec == "h264" and self._reordered
            self._keep_pts = {self._pts[i] for i in targets} if skip else None
            try:
                for group in self._groups(targets):
                    self._decode_group(group, frames)
            except _PtsOutOfOrder:
                # The decoder hands frames out in display order but with timestamps that go
                # backwards (AVI with "packed B-frames"): the timestamps do not say the order,
                # so count frames from the start instead.
                self._sequential = True
                return self._decode_targets(targets)
            finally:
                self._keep_pts = None
        missing = [i for i in targets if i not in frames]
        if missing and skip:
            # Never a wrong frame, but a file whose packets break that rule can lose one:
            # decode it again with every frame decoded.
            return self._decode_targets(targets, skip_unreferenced=False)
        if missing:
            shown = ", ".join(map(str, missing[:5])) + (", ..." if len(missing) > 5 else "")
            raise NotAVideo(
                f"{self.name}: frame{'s' if len(missing) > 1 else ''} {shown} of "
                f"{self.info.num_frames} could not be decoded (corrupt or truncated file)"
            )
        return frames

    def frames_to_decode(self, targets: list[int]) -> int:
        """How many frames decoding the sorted unique ordinals `targets` plans: from each
        group's keyframe to its last target. A damaged file can take more (retries from an
        earlier keyframe, a second pass): the read counts those against the budget as well."""
        if self._sequential or not self._keyframes:
            return targets[-1] + 1
        return sum(g[-1] - (self._keyframe_before(g[0]) or 0) + 1 for g in self._groups(targets))

    def _check_cost(self, targets: list[int]) -> None:
        """Refuse a read whose plan is over the budget, and arm the count that stops one whose
        decoding goes over it all the same."""
        limit = self.limits.max_decoded_pixels
        self._budget = None
        if limit is None:
            return
        per_frame = self.info.width * self.info.height
        self._budget = (self.frames_decoded, limit // per_frame)
        frames = self.frames_to_decode(targets)
        pixels = frames * per_frame
        if pixels > limit:
            raise OverCostLimit(
                f"{self.name}: this request needs up to {frames} frames of "
                f"{self.info.width}x{self.info.height} decoded ({pixels / 1e6:.4g} megapixels; "
                f"at most {self.limits.max_decoded_pixels / 1e6:.4g} per request): ask for "
                f"fewer clips, or send a shorter video or one with more frequent keyframes"
            )

    def _keyframe_before(self, ordinal: int) -> int | None:
        """The last keyframe at or before `ordinal` in presentation order (None: the start)."""
        k = bisect.bisect_right(self._keyframes, ordinal)
        return self._keyframes[k - 1] if k else None

    def _groups(self, targets: list[int]) -> Iterator[list[int]]:
        """Targets sharing a keyframe: one seek and one forward decode each. A target past the
        next keyframe starts a new group, so the frames between groups are never decoded."""
        group: list[int] = []
        for t in targets:
            if group and self._keyframe_before(t) != self._keyframe_before(group[0]):
                yield group
                group = []
            group.append(t)
        yield group

    def _decode_group(self, group: list[int], frames: dict[int, torch.Tensor]) -> None:
        keyframe = self._keyframe_before(group[0])
        for attempt in range(3):
            want, first_seen, last_pts = set(group), None, None
            start = None if keyframe is None else self._pts[keyframe]
            for frame, trusted in self._decode_from(start):
                ordinal = self._ordinal_of.get(frame.pts)
                if ordinal is None:
                    continue
                if last_pts is not None and frame.pts < last_pts:
                    raise _PtsOutOfOrder
                last_pts = frame.pts
                if first_seen is None:
                    first_seen = ordinal
                if ordinal in want and trusted:
                    frames[ordinal] = self._to_array(frame)
                    want.discard(ordinal)
                if not want or ordinal >= group[-1]:
                    break
            want -= frames.keys()
            landed_late = first_seen is None or first_seen > min(want, default=first_seen)
            if not want or keyframe is None or not landed_late:
                return
            # Some demuxers seek by decode time and land past the keyframe asked for: retry from
            # the keyframe before it, then from the beginning. A frame still missing after that
            # does not decode.
            k = self._keyframes.index(keyframe)
            keyframe = self._keyframes[k - 1] if k and attempt == 0 else None

    def _decode_from(self, start_pts: int | None) -> Iterator[tuple[av.VideoFrame, bool]]:
        """(frame, trusted) in presentation order from the keyframe at or before `start_pts`
        (None: the start of the stream).

        A packet that fails to decode is skipped and counted. The decoder conceals the loss and
        keeps going, so the frames after it, which may reference the lost one, come out
        plausible but wrong and unflagged: they are untrusted until the next keyframe.
        """
        resume, self._resume = self._resume, None
        if resume is not None and self._at_first_frame(start_pts, resume[1]):
            decoding, frame, trusted, self._decode_errors = resume
            yield frame, trusted
            yield from decoding
            return
        if resume is not None:
            resume[0].close()
        self._seek(start_pts)
        self._stage = "decoding"
        self._decode_errors = 0
        stream, trusted = self._stream, True
        for packet in self._container.demux(stream):
            self._check_time()
            if packet.is_corrupt and packet.size:
                # A partial packet (truncated file): with frame threads, feeding it to the
                # decoder can lose the good frames still in flight.
                continue
            # Read per packet: a decode resumed from _first_frame's started with none.
            keep = self._keep_pts
            if keep is not None and packet.pts not in keep and self._unreferenced(packet):
                # A frame nobody wants and no other frame references (most B-frames) is
                # never sent to the decoder: the frames that are wanted come out the same.
                continue
            try:
                decoded = stream.decode(packet)
            except av.FFmpegError:
                # With frame threads the error surfaces where the lost frame would have come
                # out, so every frame output after it is later in decode order.
                self._decode_errors += 1
                trusted = False
                continue
            for frame in decoded:
                self.frames_decoded += 1
                if self._budget and self.frames_decoded - self._budget[0] > self._budget[1]:
                    raise OverCostLimit(
                        f"{self.name}: decoding went past {self._budget[1]} frames, this "
                        f"request's budget of {self.limits.max_decoded_pixels / 1e6:.4g} "
                        f"megapixels (a damaged file decoded again from earlier keyframes?)"
                    )
                self._check_size(frame.width, frame.height)
                trusted = trusted or frame.key_frame
                yield frame, trusted and not frame.is_corrupt

    def _at_first_frame(self, start_pts: int | None, first: av.VideoFrame) -> bool:
        """Whether a decode from `start_pts` begins where _first_frame's did: from the start,
        or from the first keyframe when that is frame 0 and the first frame decoded."""
        if start_pts is None:
            return True
        return (
            not self._sequential
            and self._keyframes[:1] == [0]
            and start_pts == self._pts[0] == first.pts
        )

    def _unreferenced(self, packet: av.Packet) -> bool:
        """Whether an H.264 packet holds one picture that no other picture references: every
        slice's NAL header says nal_ref_idc = 0. Read from the bitstream, not left to the
        decoder's skip_frame: a decoder told to skip drops a packet it cannot parse without an
        error, so a corrupt reference frame would go unnoticed. Anything unexpected: False."""
        data = bytes(packet)
        if self._nal_length_size is None:  # Annex B: NAL units after 00 00 01 start codes
            headers, at = [], data.find(b"\x00\x00\x01")
            while at != -1 and at + 3 < len(data):
                headers.append(data[at + 3])
                at = data.find(b"\x00\x00\x01", at + 3)
        else:  # MP4/MKV (avcC): each NAL unit after its big-endian length
            headers, at, n = [], 0, self._nal_length_size
            while at + n < len(data):
                size = int.from_bytes(data[at : at + n], "big")
                if size == 0 or at + n + size > len(data):
                    return False
                headers.append(data[at + n])
                at += n + size
            if at != len(data):
                return False
        # Only non-IDR slices, SEI, delimiters and filler: a parameter set or an end of
        # sequence in the packet changes how later frames decode, so it is never skipped.
        if not headers or any(h & 0x1F not in SKIPPABLE_NAL_TYPES for h in headers):
            return False
        slices = [h for h in headers if 1 <= h & 0x1F <= 4]
        return bool(slices) and all(h & 0xE0 == 0 for h in slices)  # forbidden bit, ref_idc 0

    def _seek(self, pts: int | None) -> None:
        self._stage = "seeking"
        self.seeks += 1
        target = self._first_ts if pts is None else pts
        try:
            self._container.seek(target, stream=self._stream, backward=True)
        except av.FFmpegError:
            # A format that cannot seek can still be read from the start: decoding from an
            # earlier point than asked only costs time, since frames are matched by pts.
            self._reopen()

    def _reopen(self) -> None:
        self._container.close()
        if hasattr(self._input, "seek"):
            self._input.seek(self._start_pos)
        self._open()

    def _to_array(self, frame: av.VideoFrame) -> torch.Tensor:
        """An upright (H, W, 3) uint8 frame, or (H', W', 3) after the read's transform."""
        width, height = self._coded_size
        # swscale's threads follow the decoder's: with one per video (the service), a second
        # would only contend with the other videos' decoders for the same cores.
        threads = self.limits.threads
        if (frame.width, frame.height) != (width, height):
            # A mid-stream size change: scale to the first frame's size so frames stack.
            array = frame.to_ndarray(format="rgb24", width=width, height=height, threads=threads)
        else:
            array = frame.to_ndarray(format="rgb24", threads=threads)
        if self._rotation:
            array = np.ascontiguousarray(np.rot90(array, k=-self._rotation // 90))
        pixels = torch.from_numpy(array)
        if self._transform is None:
            return pixels
        out = self._transform(pixels.permute(2, 0, 1).unsqueeze(0))
        return out[0].permute(1, 2, 0)

    # -- limits and errors -----------------------------------------------------------------

    def _check_size(self, width: int, height: int) -> None:
        lim = self.limits
        long_max, short_max = max(lim.max_width, lim.max_height), min(lim.max_width, lim.max_height)
        long, short = max(width, height), min(width, height)
        if long > long_max or short > short_max or width * height > lim.max_pixels:
            raise VideoTooLarge(
                f"{self.name}: {width}x{height} video is over the size limit (long side "
                f"<= {long_max} px, short side <= {short_max} px, <= {lim.max_pixels} pixels)"
            )
        if long > lim.max_aspect_ratio * short:
            raise OverCostLimit(
                f"{self.name}: {width}x{height} frames have an aspect ratio of "
                f"{long / short:.0f}:1; at most {lim.max_aspect_ratio:g}:1"
            )

    def _too_long(self, actual: str, source: str = "") -> VideoTooLarge:
        limit = self.limits.max_duration_s
        return VideoTooLarge(
            f"{self.name}: the video lasts {actual}{source}, over the {limit:g} s limit"
        )

    def _too_many(self, actual: str, source: str = "") -> VideoTooLarge:
        limit = self.limits.max_frames
        return VideoTooLarge(
            f"{self.name}: the video has {actual} frames{source}, over the {limit} frame limit"
        )

    def _check_time(self) -> None:
        if time.monotonic() > self._deadline:
            raise DecodeTimeout(
                f"{self.name}: decoding took longer than the {self.limits.timeout_s:g} s limit"
            )


@contextlib.contextmanager
def _translate_errors(name: str, action: str, timeout_s: float, stage=lambda: "") -> Iterator[None]:
    """The one place a decode's failures become VideoErrors naming the file and the stage
    (`stage()`: opening, indexing, seeking, decoding), the original chained as the cause.

    Whatever PyAV, FFmpeg or a file object raises is a property of the upload, not a bug: an
    FFmpeg error of any kind, and an allocation failure, which is what a corrupt header or index
    gives (FFmpeg's ENOMEM arrives as av.error.MemoryError, both an FFmpegError and a Python
    MemoryError; the sizes FFmpeg allocates come from the file). Limits are checked before
    the decode allocates what they bound, and raise their own VideoErrors (413, 422)."""
    try:
        yield
    except (VideoError, IndexError):
        raise
    except av.error.ExitError as exc:  # PyAV's timeout interrupted a blocking read
        raise DecodeTimeout(
            f"{name}: decoding took longer than the {timeout_s:g} s limit (a read was cut off)"
        ) from exc
    except Exception as exc:  # MemoryError included
        where = stage()
        message = f"{name}: cannot {action} as a video ({where}): {_describe(exc)}"
        unknown = where == "opening" and isinstance(exc, av.error.InvalidDataError)
        if isinstance(exc, (av.FFmpegError, MemoryError)) and not unknown:
            raise DamagedVideo(message) from exc
        raise NotAVideo(message) from exc  # not a format FFmpeg knows, or not a readable file


def _input_of(source: Source) -> tuple[str | BinaryIO, str]:
    """What av.open takes for `source`, and a name for messages."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        if not data:
            raise NotAVideo("<0 bytes>: empty input")
        return io.BytesIO(data), f"<{len(data)} bytes>"
    if isinstance(source, (str, os.PathLike)):
        path = os.fsdecode(os.fspath(source))
        if not os.path.exists(path):
            raise NotAVideo(f"{path}: no such file")
        if not os.path.isfile(path):
            raise NotAVideo(f"{path}: not a regular file")
        if os.path.getsize(path) == 0:
            raise NotAVideo(f"{path}: empty file (0 bytes)")
        return path, path
    if hasattr(source, "read"):
        name = getattr(source, "name", None)
        name = name if isinstance(name, str) else "<file object>"
        try:
            seekable = source.seekable() if hasattr(source, "seekable") else False
            if not seekable:  # containers need to seek; read what there is into memory
                return io.BytesIO(source.read()), name
        except Exception as exc:
            raise NotAVideo(f"{name}: cannot read: {_describe(exc)}") from exc
        return source, name
    raise TypeError(
        f"a video source is a path, bytes or a binary file object, not {type(source).__name__}"
    )


def _ordinal(i, num_frames: int, name: str) -> int:
    if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
        raise TypeError(f"frame indices are ints, not {type(i).__name__}")
    i = int(i)
    if not 0 <= i < num_frames:
        raise IndexError(f"{name}: frame {i} does not exist (the video has {num_frames} frames)")
    return i


def _rotation_of(frame: av.VideoFrame, stream) -> int:
    """Clockwise degrees to turn the coded picture upright, a multiple of 90."""
    # FFmpeg's display matrix angle is counter-clockwise; the legacy `rotate` tag is clockwise.
    degrees = -float(getattr(frame, "rotation", 0) or 0)
    if not degrees:
        try:
            degrees = float(stream.metadata.get("rotate", 0))
        except ValueError:
            degrees = 0.0
    return int(round(degrees / 90)) * 90 % 360


class DecodeDeviceError(ValueError):
    """decode_device asks for a decoder this machine does not have."""


def hardware_decoder():
    from av.codec.hwaccel import HWAccel

    # The device's primary context, shared by every video of the process: a context of its own
    # per video would cost its creation and its memory each time.
    return HWAccel(device_type="cuda", allow_software_fallback=True, options={"primary_ctx": "1"})


def resolve_decode_device(name: str, gpu: bool | None = None) -> str:
    """auto -> cuda when this process has a CUDA GPU and PyAV's FFmpeg has CUDA hardware
    decoding, else cpu; cuda without them is a DecodeDeviceError that says what is missing.
    gpu: whether a GPU was given to this process (a Ray replica's assigned GPUs: one it can see
    but was not given belongs to someone else); None: whether torch sees one."""
    if name not in ("auto", "cpu", "cuda"):
        raise DecodeDeviceError(f"decode_device is auto, cpu or cuda, not {name!r}")
    if name == "cpu":
        return "cpu"
    from av.codec.hwaccel import hwdevices_available

    missing = []
    if not (torch.cuda.is_available() if gpu is None else gpu):
        missing.append("this process has no CUDA GPU")
    if "cuda" not in hwdevices_available():
        missing.append("PyAV's FFmpeg was built without CUDA hardware decoding")
    if not missing:
        return "cuda"
    if name == "cuda":
        raise DecodeDeviceError(f"decode_device=cuda, but {' and '.join(missing)}")
    return "cpu"


def probe(source: Source, limits: DecodeLimits = DecodeLimits()) -> VideoInfo:
    """The VideoInfo of `source` (demuxes the whole video but decodes one frame)."""
    with VideoReader(source, limits) as reader:
        return reader.info


def read_frames(
    source: Source, indices: Sequence[int], limits: DecodeLimits = DecodeLimits()
) -> torch.Tensor:
    """`VideoReader(source).read(indices)`: (N, 3, H, W) uint8."""
    with VideoReader(source, limits) as reader:
        return reader.read(indices)
