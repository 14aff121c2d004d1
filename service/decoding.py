"""The decoding side of the service: uploaded bytes -> uint8 clips, as plain code.

The Ray decode deployment wraps a `Decoder` (service/deployments.py), so decoding scales on its
own replicas (CPU cores, or NVDEC where a replica has a GPU) apart from the ingress and the
model. It returns uint8 frames already resized to the model's view size: a quarter of float32's
bytes through Ray's object store, and the model replica crops and normalises on its device.

Each decode runs in a small thread pool (PyAV and torch release the GIL): `decode_workers`
videos at once per replica, one decoder thread each. The time a video waits for a worker is
reported apart from the time it takes.

A costly plan (more than `low_priority_megapixels` to decode, which the worker knows once it has
opened the video and planned its clips) is decoded again from the bytes in a child process
running at the lowest CPU priority (`LowPriority`): on a machine whose cores the model and the
normal requests' decoders share, it takes the cycles they leave instead of a core of theirs. A
child process, not a low-priority thread: a thread starved while it holds the GIL would stall
its replica's event loop and the normal decodes with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import functools
import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, replace

import numpy as np
import torch

from service.settings import ServiceSettings
from video.decode import DecodeLimits, VideoReader, resolve_decode_device
from video.views import ClipPlan, DecodedClips, ViewSpec, clips_plan, keyframe_clips_plan

_log = logging.getLogger(__name__)


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
    low_priority: bool = False  # decoded in the replica's low-priority process

    def stats(self) -> Decoded:
        """The same without the frames: what travels back with the model's answer."""
        return replace(self, clips=torch.empty(0, dtype=torch.uint8))

    def __reduce__(self):
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return _decoded, (*to_array(fields.pop("clips")), fields)


def _decoded(clips: np.ndarray, back: tuple[int, ...], fields: dict) -> Decoded:
    return Decoded(clips=from_array(clips, back), **fields)


def to_array(frames: torch.Tensor) -> tuple[np.ndarray, tuple[int, ...]]:
    """Frames as a numpy array in their memory order (channels last, as decoded), and the
    permutation that gives the tensor back (`from_array`). This is how frames cross processes:
    pickle passes a numpy array's buffer out of band, which Ray's object store takes without a
    copy, where a tensor pickles by copying its bytes (12 ms for a 1080p request's 6.4 MB of
    clips on our 2-core VM) and a multiprocessing queue sends it through /dev/shm, which a
    container's small one can refuse."""
    order = sorted(range(frames.dim()), key=lambda d: -frames.stride(d))
    return frames.permute(order).numpy(), tuple(order.index(d) for d in range(frames.dim()))


def from_array(array: np.ndarray, back: tuple[int, ...]) -> torch.Tensor:
    if not array.flags.writeable:  # a view of Ray's object store: the tensor gets its own copy
        array = array.copy()
    return torch.from_numpy(array).permute(back)


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


# Freed memory a process keeps for its next requests (see release_free_memory).
KEEP_FREED_BYTES = 64 * 2**20
_floor: int | None = None  # the least anonymous memory measured right after a trim


def release_free_memory(keep: int = KEEP_FREED_BYTES) -> None:
    """Hand the heap's free pages back to the OS (glibc's malloc_trim; elsewhere nothing)
    when the process holds more than `keep` bytes of anonymous memory above the least it has
    held right after a trim.

    A decode allocates and frees hundreds of MB of frame buffers (a 4K frame is 12 MB as RGB);
    glibc keeps freed memory for reuse, so after a burst of large videos a replica stayed
    gigabytes bigger. Trimming after every request cost a 1080p one 15-40 ms of a core (the
    next request faulted the same 20-40 MB back in: 3-7k page faults), so requests that reuse
    what the last one freed leave it alone. The reference only goes down, so memory that was
    in use at one trim (another thread's video) is handed back at a later one once freed."""
    global _floor
    if _LIBC is None:
        return
    held = _anonymous_bytes()
    if held is None or _floor is None or held - _floor > keep:
        _LIBC.malloc_trim(0)
        after = _anonymous_bytes()
        if after is not None:
            _floor = after if _floor is None else min(_floor, after)


def _anonymous_bytes(pid: int | str = "self") -> int | None:
    """A process's resident memory less its shared pages (files, Ray's object store), which
    malloc_trim cannot hand back (Linux /proc); None where it cannot be read."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            fields = f.read().split()
        return (int(fields[1]) - int(fields[2])) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _glibc():
    """glibc, for malloc_trim, prctl and raw syscalls; None elsewhere."""
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
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


def read_plan(
    data: bytes,
    limits: DecodeLimits,
    device: str,
    make_plan: Callable[[VideoReader], ClipPlan],
    hand_over: Callable[[ClipPlan, VideoReader], bool] | None = None,
) -> tuple[float, DecodedClips | None, float]:
    """Open the upload, plan its clips and read them: (started, clips, done) in perf_counter
    seconds (a system-wide clock on Linux, so a child process's times compare with ours).
    clips is None when `hand_over(plan, reader)` says the plan is read elsewhere."""
    started = time.perf_counter()
    try:
        # The bytes themselves (not a BytesIO): the reader wraps them without a copy, and its
        # messages name the upload "<N bytes>", not "<file object>".
        with VideoReader(data, limits, device) as reader:
            plan = make_plan(reader)
            if hand_over is not None and hand_over(plan, reader):
                return started, None, time.perf_counter()
            out = plan.read(reader)
        return started, out, time.perf_counter()
    finally:
        release_free_memory()


def _read_plan_in_child(*args) -> tuple[float, DecodedClips, tuple, float]:
    """read_plan in the low-priority process; the clips go back as `to_array` gives them."""
    started, out, done = read_plan(*args)
    return started, replace(out, clips=None), to_array(out.clips), done


# Linux's numbers (the same on x86-64 and arm64).
_PR_SET_PDEATHSIG = 1
_PROCESS_MRELEASE = 448


def lower_priority(pid: int = 0) -> None:
    """Process `pid` (0: this one) at SCHED_IDLE (Linux: it runs only on a core nothing else
    wants; the threads it starts inherit that), else at nice 19."""
    try:
        os.sched_setscheduler(pid, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, pid, 19)


def _setup_child(parent: int) -> None:
    """The low-priority child's initializer: one torch thread, its priority lowered again in
    case its parent could not find it among its children, and killed with its parent."""
    lower_priority()
    torch.set_num_threads(1)
    # A replica killed outright (by Ray, or the OOM killer) cannot close its pool, and its
    # child, waiting for its next job, would hold ~800 MB for good. (Strictly, the signal
    # comes when the thread that started the child ends: the replica's event loop thread.)
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # its parent died while it imported, before that took effect
        os._exit(1)


def kill_now(process: multiprocessing.process.BaseProcess) -> bool:
    """SIGKILL a child process and hand its memory back at once, whatever its priority; False
    where its memory is left for it to free itself.

    A SCHED_IDLE process frees its memory itself, on the cycles other processes leave: with
    both cores of our VM busy, asked to exit it had not after 40 s, and killed it held its
    436 MB of anonymous memory for 14-16 s more. process_mrelease (Linux 5.15+) frees that in
    this process's time instead: 110-140 ms for 436 MB with both cores busy, on the replica's
    event loop once per retirement. Raising the child's priority first would need
    CAP_SYS_NICE, which the service does not have."""
    try:
        pidfd = os.pidfd_open(process.pid)
    except (AttributeError, OSError):  # not Linux, or gone
        process.kill()
        return False
    try:
        # Checked after the pidfd is open: a child not yet reaped still owns its pid, so the
        # pidfd is that child's and not a process that took its pid since.
        if process.exitcode is not None:
            return False
        try:
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        except ProcessLookupError:  # it died and was reaped since
            return False
        except OSError:  # forbidden (a seccomp profile): the plain way
            process.kill()
            return False
        if _LIBC is None or _LIBC.syscall(_PROCESS_MRELEASE, pidfd, 0) != 0:
            # ENOSYS before Linux 5.15, EPERM where seccomp forbids it, ESRCH once the child
            # has begun its own exit: it frees its memory itself, later.
            _log.info("process_mrelease: %s", os.strerror(ctypes.get_errno()))
            return False
        return True
    finally:
        os.close(pidfd)


class LowPriority:
    """One child process, at the lowest CPU priority, that runs costly decodes one at a time.

    Started by the first costly decode, and closed once none has come for `idle_s`: an idle
    child is about 800 MB of resident memory (it imports torch) per decode replica, and on our
    2-core VM its mere presence cost the normal requests 5-10% of their throughput (the
    hypervisor's proactive reclaim of cold memory faulted the other processes' pages; see
    benchmarks/README.md). Closing kills it and frees its memory at once (`kill_now`), and it
    dies with its replica. A child that dies (a crash in FFmpeg, the OOM killer) fails the
    decode it was running, and the next one starts a fresh child.

    The child is lowered by its parent as soon as it exists: its imports (torch, PyAV, 5 to 12
    core-s on a small VM) come before its initializer, and at normal priority they took the
    requests' cores. So the first costly decode after a quiet spell waits for them, on the
    cycles the other requests leave."""

    def __init__(self, idle_s: float = 60.0):
        self.idle_s = idle_s
        self._pool: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()
        # The child's jobs not yet done: a request cancelled while the child decodes leaves
        # its job running, and the child is busy until it ends.
        self._jobs: set[Future] = set()
        self._retire: asyncio.TimerHandle | None = None
        self._child: multiprocessing.process.BaseProcess | None = None

    def _executor(self) -> ProcessPoolExecutor:
        # Called from the thread that runs the jobs (the replica's event loop): the child is
        # killed when the thread that started it ends.
        with self._lock:
            if self._pool is None:
                # spawn: forking a process that runs threads (Ray's, the decode workers) is
                # unsafe.
                context = multiprocessing.get_context("spawn")
                pool = ProcessPoolExecutor(
                    1, context, initializer=_setup_child, initargs=(os.getpid(),)
                )
                before = set(multiprocessing.active_children())
                try:
                    pool.submit(os.getpid)  # a spawn pool starts its process in the first submit
                except BaseException:
                    pool.shutdown(wait=False, cancel_futures=True)
                    raise
                for child in set(multiprocessing.active_children()) - before:
                    lower_priority(child.pid)
                    self._child = child
                self._pool = pool
            return self._pool

    @property
    def started(self) -> bool:
        return self._pool is not None

    async def run(self, fn: Callable, *args):
        # A retirement that comes due while this job runs finds it in _jobs and waits on.
        loop = asyncio.get_running_loop()
        pool = None
        try:
            pool = self._executor()
            try:
                job = pool.submit(fn, *args)
            except BrokenProcessPool:
                # The child died while idle (the OOM killer, say): this job never ran there,
                # so it runs in a fresh one.
                self._forget(pool)
                pool = self._executor()
                job = pool.submit(fn, *args)
            with self._lock:
                self._jobs.add(job)
            job.add_done_callback(self._job_done)
            return await asyncio.wrap_future(job)
        except BrokenProcessPool:
            self._forget(pool)
            raise
        finally:
            if self._retire is not None:  # another run's, armed before this one ended
                self._retire.cancel()
            self._retire = loop.call_later(self.idle_s, self._retire_if_idle)

    def _forget(self, pool: ProcessPoolExecutor | None) -> None:
        with self._lock:
            if self._pool is pool:
                self._pool = None
                self._child = None  # dead, and maybe reaped: its pid may be another's now

    def _job_done(self, job: Future) -> None:
        with self._lock:
            self._jobs.discard(job)

    def _retire_if_idle(self) -> None:
        """Close the child once no job has come for idle_s and none is still running."""
        with self._lock:
            busy = bool(self._jobs)
        if busy:
            self._retire = asyncio.get_running_loop().call_later(self.idle_s, self._retire_if_idle)
        else:
            self._retire = None
            self.close()

    def close(self) -> None:
        """End the child now, with any job it runs (a retirement comes only once none does)."""
        with self._lock:
            pool, self._pool = self._pool, None
            child, self._child = self._child, None
        try:
            if child is not None:
                kill_now(child)
        finally:
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)


class Decoder:
    def __init__(
        self,
        settings: ServiceSettings,
        name: str = "local",
        gpu: bool | None = None,
        threads: int = 1,
        low_priority: bool = False,
    ):
        """low_priority: decode plans over `low_priority_megapixels` in a child process at the
        lowest CPU priority (the decode replicas; one process answering one request at a time,
        as `zeroi2v predict` does, has no one to yield to)."""
        self.name = name
        self.limits = decode_limits(settings, threads)
        self.max_keyframes = settings.max_keyframes
        # Resolved here, in the process that decodes (gpu: whether it was given one; None:
        # whether torch sees one): a replica without a GPU fails at start when cuda is forced,
        # instead of on every request.
        self.device = resolve_decode_device(settings.decode_device, gpu)
        self.pool = ThreadPoolExecutor(settings.decode_workers, thread_name_prefix="decode")
        # NVDEC decodes off the CPU already.
        costly = settings.low_priority_megapixels
        low = low_priority and costly > 0 and self.device == "cpu"
        self.low_priority_pixels = costly * 1e6 if low else None
        self.low_priority = LowPriority() if low else None
        # decode_timeout_s is wall-clock time, and the child runs when cores are free: under
        # load a valid video would time out as "too slow to decode". It has the request's own
        # deadline instead (past it the request is a 504 anyway).
        self.low_priority_limits = replace(self.limits, timeout_s=settings.request_timeout_s)

    def _costly(self, plan: ClipPlan, reader: VideoReader) -> bool:
        """Whether the plan goes to the low-priority process: over low_priority_megapixels, and
        within the request's cost limit (a plan over it fails here, at once)."""
        if self.low_priority_pixels is None:
            return False
        pixels = plan.frames_to_decode(reader) * reader.info.width * reader.info.height
        cap = self.limits.max_decoded_pixels
        return pixels > self.low_priority_pixels and (cap is None or pixels <= cap)

    async def _run(self, data: bytes, make_plan: Callable[[VideoReader], ClipPlan]) -> Decoded:
        """Open the upload, plan its clips and read them in one worker; a costly plan is read
        in the low-priority process instead. `make_plan` is picklable for that (a partial of
        a module-level function)."""
        queued = time.perf_counter()
        loop = asyncio.get_running_loop()
        started, out, done = await loop.run_in_executor(
            self.pool, read_plan, data, self.limits, self.device, make_plan, self._costly
        )
        wait_s, decode_s = started - queued, done - started
        low = out is None
        if low:
            handed_over = done
            started, out, clips, done = await self.low_priority.run(
                _read_plan_in_child, data, self.low_priority_limits, self.device, make_plan
            )
            out = replace(out, clips=from_array(*clips))
            wait_s += started - handed_over
            decode_s += done - started
        return Decoded(
            clips=out.clips,
            times=out.times,
            frames_decoded=out.frames_decoded,
            frames_used=out.clips.shape[0] * out.clips.shape[1],
            hardware=out.hardware,
            decode_ms=decode_s * 1e3,
            wait_ms=wait_s * 1e3,
            decoder=self.name,
            low_priority=low,
        )

    async def clips(self, data: bytes, spec: ViewSpec, sampling: str = "exact") -> Decoded:
        """Classification: the test-time clips of `spec`, short side resized to its size."""
        return await self._run(data, functools.partial(clips_plan, spec=spec, sampling=sampling))

    async def keyframe_clips(
        self, data: bytes, spec: ViewSpec, times: list[float] | None
    ) -> Decoded:
        """Detection: the clip around each key-frame time (None: 1 Hz), frames resized to S x S."""
        plan = functools.partial(
            keyframe_clips_plan, spec=spec, timestamps=times, max_keyframes=self.max_keyframes
        )
        return await self._run(data, plan)

    def close(self) -> None:
        self.pool.shutdown(wait=False)
        if self.low_priority is not None:
            self.low_priority.close()
