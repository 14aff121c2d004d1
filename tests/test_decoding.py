"""The decode replicas' plain code (service/decoding.py): costly plans in a low-priority process."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import multiprocessing
import multiprocessing.connection
import os
import pickle
import select
import signal
import subprocess
import sys
import time
import warnings
from concurrent.futures.process import BrokenProcessPool
from dataclasses import replace
from errno import EBADF

import pytest
import torch

import service.decoding as decoding
from service.decoding import Decoded, Decoder, LowPriority
from service.settings import ServiceSettings
from tests.media import write_clip
from video.decode import DecodeTimeout, OverCostLimit
from video.sampling import SamplingSpec
from video.views import ViewSpec

SPEC = ViewSpec(sampling=SamplingSpec(num_frames=4, interval=3, num_clips=2), image_size=32)


def settings(**overrides) -> ServiceSettings:
    return ServiceSettings(model_path="unused.safetensors", **overrides)


def test_a_costly_plan_is_read_in_the_low_priority_process_with_the_same_frames(tmp_path):
    data = write_clip(tmp_path / "a.mp4", 40, size=(96, 64), gop=8).read_bytes()
    # Every plan of more than 0.001 megapixels is costly: all go to the child.
    low = Decoder(settings(low_priority_megapixels=0.001), low_priority=True)
    here = Decoder(settings(low_priority_megapixels=0.001))  # low_priority=False: no child

    async def scenario():
        try:
            for method, args in [("clips", (SPEC,)), ("keyframe_clips", (SPEC, [0.5, 2.0]))]:
                a = await getattr(low, method)(data, *args)
                b = await getattr(here, method)(data, *args)
                assert a.low_priority and not b.low_priority
                assert torch.equal(a.clips, b.clips) and a.clips.stride() == b.clips.stride()
                assert (a.frames_decoded, a.frames_used, a.times) == (
                    b.frames_decoded,
                    b.frames_used,
                    b.times,
                )
                assert a.decode_ms > 0 and a.wait_ms >= 0
            if hasattr(os, "SCHED_IDLE"):
                policy = await low.low_priority.run(os.sched_getscheduler, 0)
                assert policy == os.SCHED_IDLE
        finally:
            low.close()

    asyncio.run(scenario())


def test_a_cheap_plan_stays_in_the_replica_and_one_over_the_cost_cap_fails_there(tmp_path):
    data = write_clip(tmp_path / "a.mp4", 40, size=(320, 240), gop=40).read_bytes()
    before = set(multiprocessing.active_children())

    async def scenario():
        # The plan decodes up to ~27 frames of 0.077 megapixels: about 2.
        cheap = Decoder(settings(low_priority_megapixels=100), low_priority=True)
        capped = Decoder(
            settings(low_priority_megapixels=0.001, max_decode_megapixels=1), low_priority=True
        )
        try:
            assert not (await cheap.clips(data, SPEC)).low_priority
            off = Decoder(settings(low_priority_megapixels=0), low_priority=True)
            assert off.low_priority is None and not (await off.clips(data, SPEC)).low_priority
            with pytest.raises(OverCostLimit, match="megapixels"):
                await capped.clips(data, SPEC)
            # neither started a child process
            assert not set(multiprocessing.active_children()) - before
        finally:
            cheap.close()
            capped.close()

    asyncio.run(scenario())


def test_a_low_priority_process_that_dies_fails_its_decode_and_the_next_starts_afresh(tmp_path):
    data = write_clip(tmp_path / "a.mp4", 20, size=(64, 48)).read_bytes()
    decoder = Decoder(settings(low_priority_megapixels=0.001), low_priority=True)

    async def scenario():
        try:
            child = await decoder.low_priority.run(os.getpid)
            assert child != os.getpid()
            # Dies while it works: that job fails.
            working = asyncio.create_task(decoder.low_priority.run(time.sleep, 60))
            await asyncio.sleep(0.5)
            os.kill(child, signal.SIGKILL)
            with pytest.raises(BrokenProcessPool):
                await working
            decoded = await decoder.clips(data, SPEC)
            assert decoded.low_priority and decoded.clips.shape[:2] == (2, 4)
            second = await decoder.low_priority.run(os.getpid)
            assert second not in (child, os.getpid())
            # Dies while idle: the next job never ran there, and runs in a fresh child.
            os.kill(second, signal.SIGKILL)
            await asyncio.sleep(1.0)
            assert (await decoder.clips(data, SPEC)).low_priority
            assert await decoder.low_priority.run(os.getpid) not in (child, second, os.getpid())
            # A video error in the child reaches the caller as itself (the same HTTP status).
            decoder.low_priority_limits = replace(decoder.limits, timeout_s=1e-6)
            with pytest.raises(DecodeTimeout, match="longer than the 1e-06 s limit"):
                await decoder.clips(data, SPEC)
        finally:
            decoder.close()

    asyncio.run(scenario())


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="Linux scheduling policies")
def test_the_low_priority_process_is_idle_the_replica_is_not_and_closing_frees_it_at_once(
    monkeypatch,
):
    # Its imports take seconds: checked at once, the child is still importing, so the policy
    # is its parent's doing, not the initializer's.
    before = set(multiprocessing.active_children())
    low = LowPriority()
    busy = []
    try:
        low._executor()  # spawns the child, as the first costly decode does, without a job
        (child,) = set(multiprocessing.active_children()) - before
        assert os.sched_getscheduler(child.pid) == os.SCHED_IDLE
        for thread in map(int, os.listdir("/proc/self/task")):
            with contextlib.suppress(ProcessLookupError):  # a thread that ended meanwhile
                assert os.sched_getscheduler(thread) != os.SCHED_IDLE
        assert asyncio.run(low.run(os.getpid)) == child.pid
        if not has_process_mrelease():
            pytest.skip("process_mrelease: Linux 5.15+, where seccomp allows it")
        # At SCHED_IDLE it frees its memory only on a core nothing else wants: killed with
        # every core busy, 14-16 s later. Closing frees it at once. The free memory is read
        # just before and after close(): the others' allocations meanwhile are a few pages.
        held = decoding._anonymous_bytes(child.pid)
        assert held > 100 * 2**20  # torch and PyAV imported
        for _ in os.sched_getaffinity(0):
            busy.append(subprocess.Popen(BUSY_LOOP, stdout=subprocess.PIPE, text=True))
        for process in busy:
            process.stdout.readline()  # looping
        released = []
        kill_now = decoding.kill_now
        monkeypatch.setattr(decoding, "kill_now", lambda p: released.append(kill_now(p)))
        free = free_memory_bytes()
        low.close()
        freed = free_memory_bytes() - free
        if released != [True]:  # the kernel's answer: the child had begun its own exit
            pytest.skip("the killed child ran before process_mrelease (a race, rarely lost)")
        assert freed > held / 2
    finally:
        low.close()
        for process in busy:
            process.kill()
            process.wait()
            process.stdout.close()


BUSY_LOOP = [sys.executable, "-c", "print(flush=True)\nwhile True: pass"]


def free_memory_bytes() -> int:
    with open("/proc/meminfo") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemFree:"))


def has_process_mrelease() -> bool:
    """Asked about no process: EBADF where the call exists (Linux 5.15+), ENOSYS where it does
    not, EPERM where seccomp forbids it."""
    libc = decoding._LIBC
    if libc is None:
        return False
    return libc.syscall(decoding._PROCESS_MRELEASE, -1, 0) == -1 and ctypes.get_errno() == EBADF


def test_decoded_clips_cross_processes_out_of_band_and_come_back_the_same():
    # Channels-last clips, as decoding makes them: (C, T, 3, H, W) over (C, T, H, W, 3) memory.
    clips = torch.randint(0, 256, (3, 4, 10, 12, 3), dtype=torch.uint8).permute(0, 1, 4, 2, 3)
    decoded = Decoded(clips, None, 40, 12, False, 5.0, 0.1, "r1", low_priority=True)
    buffers = []
    data = pickle.dumps(decoded, protocol=5, buffer_callback=buffers.append)
    assert len(data) < 1000 and sum(b.raw().nbytes for b in buffers) == clips.numel()
    # As Ray's object store hands them back: read-only memory.
    readonly = [memoryview(bytes(b.raw())) for b in buffers]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch warns when it wraps read-only memory
        back = pickle.loads(data, buffers=readonly)
    assert torch.equal(back.clips, clips) and back.clips.stride() == clips.stride()
    assert replace(back, clips=None) == replace(decoded, clips=None)
    back.clips[0, 0, 0, 0, 0] = 7  # its own writable copy, not the store's memory


@pytest.mark.skipif(not hasattr(os, "pidfd_open"), reason="Linux pidfds")
def test_the_low_priority_process_dies_with_a_replica_killed_outright():
    # Nothing closes the pool of a replica killed by Ray or the OOM killer.
    replica = subprocess.Popen(
        [sys.executable, "-c", "import asyncio, os, signal, sys\n"
         "from service.decoding import LowPriority\n"
         "print(asyncio.run(LowPriority().run(os.getpid)), flush=True)\n"
         "sys.stdin.readline()\n"
         "os.kill(os.getpid(), signal.SIGKILL)\n"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    with replica:
        child = int(replica.stdout.readline())
        # Opened while its parent lives, so it cannot have been reaped: this pidfd is the
        # child's, and readable once it has exited.
        pidfd = os.pidfd_open(child)
        replica.stdin.write("\n")
        replica.stdin.flush()
        assert replica.wait(timeout=60) == -signal.SIGKILL
    try:
        assert select.select([pidfd], [], [], 30)[0], "the child outlived its replica"
    finally:
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        os.close(pidfd)


def test_the_low_priority_process_starts_with_the_first_costly_decode_and_retires_when_idle(
    tmp_path,
):
    data = write_clip(tmp_path / "a.mp4", 40, size=(96, 64), gop=8).read_bytes()
    decoder = Decoder(settings(low_priority_megapixels=0.001), low_priority=True)
    decoder.low_priority.idle_s = 2.0
    before = set(multiprocessing.active_children())

    async def scenario():
        assert not decoder.low_priority.started  # no idle child with a fresh replica
        assert (await decoder.clips(data, SPEC)).low_priority
        (child,) = set(multiprocessing.active_children()) - before
        await asyncio.sleep(0.2)  # within idle_s: the same child decodes the next one
        assert (await decoder.clips(data, SPEC)).low_priority
        assert await decoder.low_priority.run(os.getpid) == child.pid
        await asyncio.sleep(3.0)
        assert not decoder.low_priority.started
        assert multiprocessing.connection.wait([child.sentinel], timeout=30)
        deadline = time.monotonic() + 10  # the pool's own thread may be reaping it
        while child.exitcode is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert child.exitcode == -signal.SIGKILL
        assert (await decoder.clips(data, SPEC)).low_priority  # and a new one after that

    try:
        asyncio.run(scenario())
    finally:
        decoder.close()


def test_freed_memory_is_handed_back_only_once_the_process_has_grown(monkeypatch):
    class Libc:
        trims = 0

        def malloc_trim(self, pad):
            self.trims += 1
            held[0] = held_after_trim[0]

    libc, held, held_after_trim = Libc(), [0], [0]
    monkeypatch.setattr(decoding, "_LIBC", libc)
    monkeypatch.setattr(decoding, "_floor", None)
    monkeypatch.setattr(decoding, "_anonymous_bytes", lambda: held[0])
    mb, keep = 2**20, 64 * 2**20

    def request(holding: int, after_trim: int) -> None:
        held[0], held_after_trim[0] = holding * mb, after_trim * mb
        decoding.release_free_memory(keep=keep)

    request(600, after_trim=500)  # the first request trims: 500 MB is the reference
    assert libc.trims == 1
    for holding in (510, 564, 530):  # requests reusing what the last one freed: no trim
        request(holding, after_trim=500)
    assert libc.trims == 1
    request(565, after_trim=500)  # a bigger video left more than `keep` behind
    assert libc.trims == 2
    # A trim while another thread's 800 MB video is in use does not raise the reference: once
    # that is freed (glibc keeps it: still held), the next request hands it back.
    request(1400, after_trim=1300)
    request(1300, after_trim=500)
    assert libc.trims == 4 and decoding._floor == 500 * mb
    monkeypatch.setattr(decoding, "_anonymous_bytes", lambda: None)  # unreadable: always trims
    decoding.release_free_memory(keep=keep)
    assert libc.trims == 5


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="Linux /proc")
def test_anonymous_memory_is_read_and_counts_what_this_process_allocates():
    before = decoding._anonymous_bytes()
    block = bytearray(256 * 2**20)  # zero-filled: its pages are resident
    grown = decoding._anonymous_bytes() - before
    del block
    assert 200 * 2**20 < grown < 400 * 2**20
