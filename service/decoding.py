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
import contextlib
import io
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
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
    low_priority: bool = False  # decoded at low priority (over low_priority_megapixels)

    def stats(self) -> Decoded:
        """The same without the frames: what travels back with the model's answer."""
        return replace(self, clips=torch.empty(0, dtype=torch.uint8))


def decode_limits(settings: ServiceSettings) -> DecodeLimits:
    return DecodeLimits(
        max_width=settings.max_video_side,
        max_height=settings.max_video_side,
        max_pixels=settings.max_video_side**2,
        max_decoded_pixels=settings.max_decode_megapixels * 10**6,
        max_aspect_ratio=settings.max_aspect_ratio,
        max_duration_s=settings.max_video_seconds,
        timeout_s=settings.decode_timeout_s,
        threads=1,  # parallelism comes from the workers and replicas: one video, one core
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


def close_opened(opening: Future) -> None:
    """Close the reader of an open_and_plan whose caller has gone."""
    if not opening.cancelled() and opening.exception() is None:
        opening.result()[0].close()


def lower_priority() -> None:
    """Run the calling thread only on cores nothing else wants (Linux's SCHED_IDLE; elsewhere
    nothing). A process cannot raise a thread's priority again without privileges, so the
    threads this is called in serve costly work only, for their whole life."""
    if hasattr(os, "sched_setscheduler") and hasattr(os, "SCHED_IDLE"):
        with contextlib.suppress(OSError):
            os.sched_setscheduler(threading.get_native_id(), os.SCHED_IDLE, os.sched_param(0))


class Decoder:
    """Decodes uploads into uint8 clips in worker threads. A video opens and plans its clips in
    a normal worker; if the plan decodes more than `low_priority_megapixels`, the decoding
    itself runs in a low-priority worker: a costly request takes the cycles that cheap ones and
    the model leave free instead of slowing them (beside a busy decoder, a CPU model batch took
    1.8-1.9x its time at normal priority, 0.9-1.1x at idle priority: benchmarks/README.md).
    Under sustained full load such a request can run into decode_timeout_s."""

    def __init__(self, settings: ServiceSettings, name: str = "local", gpu: bool | None = None):
        self.name = name
        self.limits = decode_limits(settings)
        self.max_keyframes = settings.max_keyframes
        self.low_priority_pixels = settings.low_priority_megapixels * 10**6
        # Resolved here, in the process that decodes (gpu: whether it was given one; None:
        # whether torch sees one): a replica without a GPU fails at start when cuda is forced,
        # instead of on every request.
        self.device = resolve_decode_device(settings.decode_device, gpu)
        workers = settings.decode_workers
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="decode")
        self.low_priority = ThreadPoolExecutor(
            workers, thread_name_prefix="decode-low", initializer=lower_priority
        )

    async def _run(self, data: bytes, make_plan: Callable[[VideoReader], ClipPlan]) -> Decoded:
        waited = ran = 0.0

        def timed(fn):
            queued = time.perf_counter()

            def run():
                nonlocal waited, ran
                started = time.perf_counter()
                waited += started - queued
                try:
                    return fn()
                finally:
                    ran += time.perf_counter() - started

            return run

        def open_and_plan():
            reader = VideoReader(io.BytesIO(data), self.limits, self.device)
            try:
                return reader, make_plan(reader)
            except BaseException:
                reader.close()
                raise

        def read():
            try:
                return plan.read(reader)
            finally:
                reader.close()
                release_free_memory()

        opening = self.pool.submit(timed(open_and_plan))
        try:
            reader, plan = await asyncio.wrap_future(opening)
        except asyncio.CancelledError:
            # A worker already opening the video finishes; the reader it opens is closed then.
            opening.add_done_callback(close_opened)
            raise
        costly = plan.decoded_pixels(reader) > self.low_priority_pixels
        pool = self.low_priority if costly else self.pool
        # Cancelled from here, the read still runs to its end in its worker (threads cannot be
        # stopped), which closes the reader.
        out = await asyncio.wrap_future(pool.submit(timed(read)))
        return Decoded(
            clips=out.clips,
            times=out.times,
            frames_decoded=out.frames_decoded,
            frames_used=out.clips.shape[0] * out.clips.shape[1],
            hardware=out.hardware,
            decode_ms=ran * 1e3,
            wait_ms=waited * 1e3,
            decoder=self.name,
            low_priority=costly,
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
