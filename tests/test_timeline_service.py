"""POST /timeline over the in-process backend: streamed records, limits and errors, and a client
that goes away. (tests/test_service.py runs it under Ray.)"""

import contextlib
import json
import threading
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from cli import app as cli_app
from model import read_info
from service.app import create_app
from service.local import LocalBackend
from service.model_runner import ModelRunner
from service.settings import ServiceSettings
from service.video_service import VideoService
from tests.media import ordinal_image, write_clip
from tests.test_video_decode import zero_packet
from video.sampling import sliding_windows


def timeline_service(model: Path, **settings) -> VideoService:
    s = ServiceSettings(model_path=str(model), **settings)
    # fp32 as `zeroi2v predict --precision fp32` below: "auto" picks bf16 on CPUs with native
    # bf16, and then the two disagree on such a machine.
    runner = ModelRunner(str(model), precision="fp32", max_batch_size=4)
    runner.warm_up()
    return VideoService(s, read_info(model), LocalBackend(runner, s))


def client_of(service: VideoService) -> TestClient:
    app = create_app()
    app.state.service = service
    return TestClient(app)


def records_of(response: httpx.Response) -> list[dict]:
    assert response.headers["content-type"] == "application/x-ndjson", response.text
    return [json.loads(line) for line in response.text.splitlines()]


@pytest.fixture(scope="module")
def six_seconds(tmp_path_factory) -> Path:
    return write_clip(tmp_path_factory.mktemp("t") / "six.mp4", 60, fps=10, gop=20)


def test_a_timeline_streams_its_windows_then_a_summary(merged_model, six_seconds, tmp_path):
    spool = tmp_path / "spool"
    spool.mkdir()
    client = client_of(timeline_service(merged_model, spool_dir=str(spool)))
    data = six_seconds.read_bytes()
    r = client.post("/timeline?stride_s=1&top_k=2", content=data,
                    headers={"content-type": "video/mp4"})  # fmt: skip
    assert r.status_code == 200
    records = records_of(r)
    windows, summary = records[:-1], records[-1]
    # 4 frames 2 apart span 0.7 s: a window every second that fits in 6 s
    assert [w["start_s"] for w in windows] == [0, 1, 2, 3, 4, 5]
    assert all(w["type"] == "window" and len(w["labels"]) == 2 for w in windows)
    assert all(w["end_s"] == pytest.approx(w["start_s"] + 0.7) for w in windows)
    assert all(w["inference_ms"] > 0 and w["batch_size"] >= 1 for w in windows)
    assert summary["type"] == "summary" and summary["windows"] == 6
    assert summary["stride_s"] == 1 and summary["duration_s"] == 6
    assert summary["frames_decoded"] == 60  # every frame once (the one decoded on opening too)
    segments = summary["segments"]
    assert segments[0]["start_s"] == 0 and segments[-1]["end_s"] == windows[-1]["end_s"]
    assert sum(s["windows"] for s in segments) == 6
    assert list(spool.iterdir()) == []  # the spooled upload is gone

    # Multipart, the default stride (half a window: 7 frames at 10 fps) and the CLI: one
    # pipeline.
    files = {"file": ("six.mp4", data, "video/mp4")}
    multipart = records_of(client.post("/timeline?top_k=2", files=files))
    planned = sliding_windows([i / 10 for i in range(60)], 4, 2, 0.35)
    assert multipart[-1]["stride_s"] == 0.35 and multipart[-1]["windows"] == len(planned)
    assert list(spool.iterdir()) == []
    result = CliRunner().invoke(
        cli_app, ["predict", str(six_seconds), "-m", str(merged_model), "--timeline", "--top-k",
                  "2", "--precision", "fp32"]
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    cli = [json.loads(line) for line in result.output.splitlines()]
    assert [w["labels"] for w in cli[:-1]] == [w["labels"] for w in multipart[:-1]]
    assert cli[-1]["segments"] == multipart[-1]["segments"]


@pytest.mark.parametrize(
    ("query", "settings", "frames", "status", "detail"),
    [
        ("stride_s=0", {}, 60, 422, "stride_s: Input should be greater than 0"),
        ("stride_s=inf", {}, 60, 422, "stride_s: inf is not seconds >= 0.01"),
        ("stride_s=1e-300", {}, 60, 422, "stride_s: 1e-300 is not seconds >= 0.01"),
        ("top_k=101", {}, 60, 422, "top_k: from 1 to 100"),
        ("spatial_crops=2", {}, 60, 422, "spatial_crops: 1 (centre) or 3"),
        ("", {}, 5, 422, "a window of 4 frames 2 apart spans 7 frames; the video has 5"),
        (
            "",
            {"max_timeline_seconds": 5},
            60,
            413,
            "bytes>: the video lasts 6.0 s (container header), over the 5 s limit",
        ),
        ("", {"max_timeline_upload_bytes": 2048}, 60, 413, "exceeds the limit of 2048 bytes"),
    ],
)
def test_bad_timeline_requests_are_problems(
    merged_model, tmp_path, query, settings, frames, status, detail
):
    client = client_of(timeline_service(merged_model, **settings))
    video = write_clip(tmp_path / "v.mp4", frames, fps=10).read_bytes()
    r = client.post(f"/timeline?{query}", content=video, headers={"content-type": "video/mp4"})
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert detail in r.json()["detail"]


def test_timeline_errors_before_streaming(merged_model, merged_detector, six_seconds, tmp_path):
    client = client_of(timeline_service(merged_model, spool_dir=str(tmp_path)))
    # Multipart: a file part not named `file` is refused before its bytes are stored, and a
    # timeline takes no pile of text fields.
    video = six_seconds.read_bytes()
    r = client.post("/timeline", files={"video": ("six.mp4", video, "video/mp4")})
    assert r.status_code == 422 and "named 'video'; send it as `file`" in r.json()["detail"]
    r = client.post("/timeline", files={"file": ("six.mp4", video, "video/mp4")},
                    data={f"f{i}": "x" for i in range(20)})  # fmt: skip
    assert r.status_code == 422 and "Too many fields" in r.json()["detail"]
    r = client.post("/timeline", files={"file": (None, "x" * 100_000)})  # curl -F 'file=<clip
    assert r.status_code == 422 and "must be a file upload, not text" in r.json()["detail"]
    assert list(tmp_path.iterdir()) == []
    r = client.post("/timeline", content=b"", headers={"content-type": "video/mp4"})
    assert r.status_code == 400
    r = client.post("/timeline", content=b"not a video" * 200)
    assert r.status_code == 415 and r.headers["content-type"] == "application/problem+json"
    r = client_of(timeline_service(merged_detector)).post("/timeline", content=b"x")
    assert r.status_code == 409 and "a timeline labels windows" in r.json()["detail"]
    keyed = client_of(timeline_service(merged_model, api_key="k"))
    assert keyed.post("/timeline", content=b"x").status_code == 401


def test_a_failure_after_the_first_line_ends_with_a_problem_record(merged_model, tmp_path):
    """A packet damaged 3 s in (one keyframe, so everything after it is lost): the windows
    before it are answered, then a problem+json record instead of the summary."""
    path = write_clip(tmp_path / "damaged.mp4", 60, fps=10, gop=60)
    client = client_of(timeline_service(merged_model))
    r = client.post("/timeline?stride_s=1", content=zero_packet(path, 30),
                    headers={"content-type": "video/mp4"})  # fmt: skip
    assert r.status_code == 200
    records = records_of(r)
    assert [w["type"] for w in records[:-1]] == ["window"] * (len(records) - 1)
    assert 1 <= len(records) - 1 <= 3  # the windows that end before frame 30
    problem = records[-1]
    assert problem["status"] == 415 and problem["instance"] == "/timeline"
    assert "could not be decoded" in problem["detail"]


def test_a_client_that_goes_away_stops_the_timeline_and_frees_its_slot(merged_model, tmp_path):
    """Over a real socket (uvicorn): a second timeline is 503 while the only slot is taken; the
    first client reads one line and hangs up; the decode stops and the slot is free again
    long before the whole video could have been processed."""
    import uvicorn

    from tests.test_service import free_port

    images = [ordinal_image(i % 1024, 64, 48) for i in range(3000)]
    video = write_clip(tmp_path / "long.mp4", 3000, fps=10, gop=50, images=images)  # 5 min
    service = timeline_service(merged_model, max_timelines=1)
    app = create_app()
    app.state.service = service
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}/timeline?stride_s=0.1"
    try:
        while not server.started:
            time.sleep(0.05)
        with httpx.stream("POST", url, content=video.read_bytes(), timeout=60) as r:
            assert r.status_code == 200
            lines = r.iter_lines()  # kept: a dropped iterator closes the connection
            first = json.loads(next(lines))
            assert first["type"] == "window"
            busy = httpx.post(url, content=b"x" * 2000, timeout=30)
            assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
            assert service.timelines == 1
        hung_up = time.monotonic()
        while service.timelines and time.monotonic() - hung_up < 3:
            time.sleep(0.05)
        # The whole 5 minutes take this machine about 10 s.
        assert service.timelines == 0, "the timeline went on after its client left"
        print(f"slot free {time.monotonic() - hung_up:.2f} s after the client left")
        assert not [t for t in threading.enumerate() if t.name.startswith("timeline")
                    and t.is_alive() and _busy(t)]  # fmt: skip
        r = httpx.post(url.replace("stride_s=0.1", "stride_s=60"), content=video.read_bytes(),
                       timeout=60)  # fmt: skip
        assert r.status_code == 200 and json.loads(r.text.splitlines()[-1])["windows"] == 5
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def _busy(thread: threading.Thread) -> bool:
    """Whether a pool thread is running a task (an idle one waits in the pool's queue)."""
    import sys
    import traceback

    frame = sys._current_frames().get(thread.ident)
    stack = traceback.format_stack(frame) if frame is not None else []
    return any("_produce" in line or "open_and_plan" in line for line in stack)


PIPELINE_MEMORY = """
import asyncio, contextlib, resource, sys
from model import read_info
from service.local import LocalBackend
from service.model_runner import ModelRunner
from service.settings import ServiceSettings
from service.timeline import TimelineParams
from service.video_service import VideoService

model, video = sys.argv[1], sys.argv[2]
s = ServiceSettings(model_path=model)
runner = ModelRunner(model, max_batch_size=4)
runner.warm_up()
service = VideoService(s, read_info(model), LocalBackend(runner, s))

async def main():
    async with contextlib.AsyncExitStack() as stack:
        records = await service.timeline(video, TimelineParams(stride_s=1.0), stack)
        first = await anext(records)  # the decoder, the model and the first batch are up
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        count = 1 + sum([1 async for _ in records])
    return count, before

count, before = asyncio.run(main())
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(count, (after - before) / 1024)
"""


def test_a_ten_minute_timeline_keeps_memory_flat(merged_model, tmp_path):
    """The whole pipeline (spooled file, decode worker, queue, model, records, segments) over a
    10-minute video grows the peak RSS no more than over a 1-minute one."""
    import subprocess
    import sys

    from tests.media import write_minutes

    growth = {}
    for minutes in (1, 10):
        frames = minutes * 60 * 8
        path = write_minutes(tmp_path / f"{minutes}min.mp4", minutes)
        out = subprocess.run([sys.executable, "-c", PIPELINE_MEMORY, str(merged_model),
                              str(path)], check=True, capture_output=True, text=True)  # fmt: skip
        windows, growth[minutes] = out.stdout.split()
        planned = sliding_windows([i / 8 for i in range(frames)], 4, 2, 1.0)
        assert int(windows) == len(planned) + 1  # and the summary
        growth[minutes] = float(growth[minutes])
    assert growth[10] < growth[1] + 16, growth  # MB


@pytest.mark.parametrize("cancel_while", ["streaming", "opening"])
def test_a_cancelled_timeline_lets_go_of_its_slot_only_once_its_decoder_has_stopped(
    merged_model, tmp_path, monkeypatch, cancel_while
):
    """Ray cancels a request's task when its client leaves; Starlette's middleware turns that
    into an anyio cancellation that hits every await again. The slot and the spooled file are
    released after the decode worker has stopped (or the video's opening has ended), not while
    it still runs."""
    import asyncio

    from video.decode import VideoReader

    indexing = threading.Event()
    if cancel_while == "opening":  # an index that takes a while (a long file on a slow disk)
        index = VideoReader._index

        def slow_index(self):
            indexing.set()
            time.sleep(1)
            return index(self)

        monkeypatch.setattr(VideoReader, "_index", slow_index)

    images = [ordinal_image(i % 1024, 64, 48) for i in range(3000)]
    body = write_clip(tmp_path / "long.mp4", 3000, fps=10, gop=50, images=images).read_bytes()
    service = timeline_service(merged_model, max_timelines=1, spool_dir=str(tmp_path))
    app = create_app()
    app.state.service = service
    scope = {
        "type": "http", "asgi": {"version": "3.0", "spec_version": "2.4"}, "http_version": "1.1",
        "method": "POST", "scheme": "http", "path": "/timeline", "raw_path": b"/timeline",
        "query_string": b"stride_s=0.1", "root_path": "",
        "headers": [(b"content-type", b"video/mp4")], "client": ("t", 1), "server": ("t", 80),
    }  # fmt: skip

    async def scenario():
        chunks = [body[i : i + 2**16] for i in range(0, len(body), 2**16)]
        first_line = asyncio.Event()

        async def receive():
            if chunks:
                return {"type": "http.request", "body": chunks.pop(0), "more_body": bool(chunks)}
            await asyncio.Event().wait()  # the client stays; Ray cancels the task instead

        async def send(message):
            if message["type"] == "http.response.body" and message.get("body"):
                first_line.set()

        task = asyncio.create_task(app(scope, receive, send))
        if cancel_while == "opening":
            assert await asyncio.to_thread(indexing.wait, 30), "the video was never opened"
        else:
            await first_line.wait()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        decoding = [t for t in threading.enumerate() if t.name.startswith("timeline")
                    and t.is_alive() and _busy(t)]  # fmt: skip
        return service.timelines, decoding, sorted(p.name for p in tmp_path.glob("zeroi2v-*"))

    assert asyncio.run(scenario()) == (0, [], [])
