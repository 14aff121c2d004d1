"""The decoding side of the service: uploaded bytes -> uint8 clips, as plain code.

The Ray decode deployment wraps a `Decoder` (service/deployments.py), so decoding scales on its
own replicas (CPU cores, or NVDEC where a replica has a GPU) apart from the ingress and the
model. It returns uint8 frames already resized to the model's view size: a quarter of float32's
bytes through Ray's object store, and the model replica crops and normalises on its device.

Each decode runs in a small thread pool (PyAV and torch release the GIL): `decode_workers`
videos at once per replica, one decoder thread each. The time a video waits for a worker is
reported apart from the time it takes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import torch

from service.settings import ServiceSettings
from video.decode import DecodeLimits, VideoReader, resolve_decode_device
from video.views import ClipPlan, ViewSpec, clips_plan, keyframe_clips_plan


@dataclass(frozen=True)
class Decoded:
    """A decoded upload on its way to the model: the uint8 clips and what decoding cost."""

    clips: torch.Tensor  # classification (C, T, 3, H, W); detection (K, T, 3, S, S); uint8
    times: list[float] | None  # detection: the key-frame time of each clip
    frames_decoded: int
    frames_used: int  # frames in the clips (a frame shared by two clips counts twice)
    hardware: bool  # decoded by NVDEC
    decode_ms: float  # decoding, converting and resizing
    wait_ms: float  # waiting for a worker inside the decode replica (routing waits: queue_ms)
    decoder: str  # which decode replica

    def stats(self) -> Decoded:
        """The same without the frames: what travels back with the model's answer."""
        return replace(self, clips=torch.empty(0, dtype=torch.uint8))


def decode_limits(settings: ServiceSettings, threads: int = 1) -> DecodeLimits:
    return DecodeLimits(
        max_width=settings.max_video_side,
        max_height=settings.max_video_side,
        max_pixels=settings.max_video_side**2,
        max_decoded_pixels=settings.max_decode_megapixels * 10**6,
        max_aspect_ratio=settings.max_aspect_ratio,
        max_duration_s=settings.max_video_seconds,
        timeout_s=settings.decode_timeout_s,
        # One video, one core: parallelism comes from the workers and replicas (0: FFmpeg
        # picks, for a process that decodes one video at a time).
        threads=threads,
    )


def release_free_memory() -> None:
    """Hand the heap's free pages back to the OS (glibc's malloc_trim; elsewhere nothing).

    A decode allocates and frees hundreds of MB of frame buffers (a 4K frame is 12 MB as RGB);
    glibc keeps freed memory for reuse, so after a burst of large videos a replica stayed
    gigabytes bigger. Trimming costs about a millisecond per request."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _glibc():
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


_LIBC = _glibc()


def timeline_limits(settings: ServiceSettings, threads: int = 1) -> DecodeLimits:
    """A timeline's: the same bounds on a frame, a longer video, and no per-read cost limit (a
    stream's cost is bounded by its duration; its memory by one window, video.views)."""
    longest = settings.max_timeline_seconds
    return replace(
        decode_limits(settings, threads),
        max_duration_s=longest,
        max_frames=int(longest * 60),  # up to 60 fps
        max_decoded_pixels=None,
    )


class Decoder:
    def __init__(
        self,
        settings: ServiceSettings,
        name: str = "local",
        gpu: bool | None = None,
        threads: int = 1,
    ):
        self.name = name
        self.limits = decode_limits(settings, threads)
        self.max_keyframes = settings.max_keyframes
        # Resolved here, in the process that decodes (gpu: whether it was given one; None:
        # whether torch sees one): a replica without a GPU fails at start when cuda is forced,
        # instead of on every request.
        self.device = resolve_decode_device(settings.decode_device, gpu)
        self.pool = ThreadPoolExecutor(settings.decode_workers, thread_name_prefix="decode")

    async def _run(self, data: bytes, make_plan: Callable[[VideoReader], ClipPlan]) -> Decoded:
        """Open the upload, plan its clips and read them, in one worker."""
        queued = time.perf_counter()

        def timed():
            started = time.perf_counter()
            try:
                # The bytes themselves (not a BytesIO): the reader wraps them without a copy,
                # and its messages name the upload "<N bytes>", not "<file object>".
                with VideoReader(data, self.limits, self.device) as reader:
                    out = make_plan(reader).read(reader)
                return started, out, time.perf_counter()
            finally:
                release_free_memory()

        loop = asyncio.get_running_loop()
        started, out, done = await loop.run_in_executor(self.pool, timed)
        return Decoded(
            clips=out.clips,
            times=out.times,
            frames_decoded=out.frames_decoded,
            frames_used=out.clips.shape[0] * out.clips.shape[1],
            hardware=out.hardware,
            decode_ms=(done - started) * 1e3,
            wait_ms=(started - queued) * 1e3,
            decoder=self.name,
        )

    async def clips(self, data: bytes, spec: ViewSpec, sampling: str = "exact") -> Decoded:
        """Classification: the test-time clips of `spec`, short side resized to its size."""
        return await self._run(data, lambda reader: clips_plan(reader, spec, sampling))

    async def keyframe_clips(
        self, data: bytes, spec: ViewSpec, times: list[float] | None
    ) -> Decoded:
        """Detection: the clip around each key-frame time (None: 1 Hz), frames resized to S x S."""
        return await self._run(
            data, lambda reader: keyframe_clips_plan(reader, spec, times, self.max_keyframes)
        )
