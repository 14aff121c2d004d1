"""The service: plain logic without Ray, then the real Ray Serve app over HTTP (started once)."""

import asyncio
import json
import os
import re
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from model import read_info
from service.app import create_app
from service.local import LocalBackend
from service.model_runner import ModelRunner
from service.settings import ServiceSettings
from service.video_service import VideoService
from video.packaged import packaged_clip


class SlowBackend(LocalBackend):
    """The in-process backend, `delay_s` slower per request (a busy model, a slow decoder)."""

    def __init__(self, runner: ModelRunner, settings: ServiceSettings, delay_s: float = 0.0):
        super().__init__(runner, settings)
        self.delay_s = delay_s

    async def predict(self, data: bytes, spec, params):
        await asyncio.sleep(self.delay_s)
        return await super().predict(data, spec, params)


TIMINGS = {"decode_ms", "decode_wait_ms", "queue_ms", "inference_ms", "total_ms", "frames_decoded",
           "frames_used"}  # fmt: skip


# A raw video POST /classify at the ASGI level, for tests that drive the body themselves.
POST_CLASSIFY = {
    "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
    "scheme": "http", "path": "/classify", "raw_path": b"/classify", "query_string": b"",
    "root_path": "", "headers": [(b"content-type", b"video/mp4")],
    "client": ("t", 1), "server": ("t", 80),
}  # fmt: skip


def local_client(model: Path, delay_s: float = 0.0, **settings) -> TestClient:
    s = ServiceSettings(model_path=str(model), **settings)
    runner = ModelRunner(str(model), max_batch_size=2)
    runner.warm_up()
    app = create_app()
    app.state.service = VideoService(s, read_info(model), SlowBackend(runner, s, delay_s))
    return TestClient(app)


def test_classify_without_ray(merged_model, synth_dir):
    client = local_client(merged_model)
    video = next((synth_dir / "videos").rglob("*.mp4")).read_bytes()
    r = client.post("/classify?top_k=3", files={"file": ("clip.mp4", video, "video/mp4")})
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["labels"]) == 3 and body["views"]["temporal_clips"] == 2
    assert set(body["timings"]) == TIMINGS
    raw = client.post("/classify?top_k=3", content=video, headers={"content-type": "video/mp4"})
    assert raw.json()["labels"] == body["labels"]


@pytest.mark.parametrize(
    ("kwargs", "status", "title"),
    [
        ({"content": b"", "headers": {"content-type": "video/mp4"}}, 400, "Empty upload"),
        ({"files": {"file": ("x.mp4", b"\x00" * 5000, "video/mp4")}}, 415, "Not a decodable"),
        ({"files": {"other": ("x.mp4", b"abc", "video/mp4")}}, 422, "Invalid parameters"),
        ({"content": b"x" * 70_000, "headers": {"content-type": "video/mp4"}}, 413, "too large"),
        ({"content": b"{}", "headers": {"content-type": "application/json"}}, 415, "decodable"),
    ],
)
def test_bad_uploads_are_problems(merged_model, kwargs, status, title):
    client = local_client(merged_model, max_upload_bytes=65_536)
    r = client.post("/classify", **kwargs)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert title.lower() in r.json()["title"].lower()
    assert client.get("/livez").status_code == 200  # still serving


def test_media_types_are_case_insensitive(merged_model, synth_dir):
    client = local_client(merged_model)
    video = next((synth_dir / "videos").rglob("*.mp4")).read_bytes()
    r = client.post("/classify", content=video, headers={"content-type": "VIDEO/MP4"})
    assert r.status_code == 200, r.text
    boundary = "zeroi2vboundary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=file; filename=a.mp4\r\n"
            f"Content-Type: video/mp4\r\n\r\n")  # fmt: skip
    body = head.encode() + video + f"\r\n--{boundary}--\r\n".encode()
    content_type = f"Multipart/Form-Data; boundary={boundary}"
    r = client.post("/classify", content=body, headers={"content-type": content_type})
    assert r.status_code == 200, r.text


def test_a_thin_video_is_over_the_cost_limit(merged_model, tmp_path):
    """33 KB of 3840x2 frames: resized to a short side of 32 each would be 32x61440."""
    from tests.media import write_clip

    thin = write_clip(tmp_path / "thin.mp4", 2, size=(3840, 2)).read_bytes()
    client = local_client(merged_model)
    r = client.post("/classify?temporal_clips=30", content=thin,
                    headers={"content-type": "video/mp4"})  # fmt: skip
    assert r.status_code == 422 and r.json()["title"] == "Request over its cost limit", r.text
    assert "aspect ratio of 1920:1" in r.json()["detail"]


def test_unknown_paths_and_methods_are_problems(merged_model):
    client = local_client(merged_model)
    r = client.get("/nowhere")
    assert r.status_code == 404 and r.headers["content-type"] == "application/problem+json"
    assert r.json()["detail"] == "no endpoint /nowhere; see /docs"
    r = client.get("/classify")
    assert r.status_code == 405 and r.headers["content-type"] == "application/problem+json"
    assert r.headers["allow"] == "POST" and "allowed: POST" in r.json()["detail"]


def test_slow_uploads_hold_no_admission_slot_and_are_cut_off(merged_model, synth_dir):
    """Twice max_pending_requests clients trickle their bodies: every normal request sent
    meanwhile is served, and each trickler gets 408 once it falls behind the minimum rate."""
    client = local_client(merged_model, max_pending_requests=2, max_uploads=8,
                          min_upload_bytes_per_s=2000, upload_grace_s=1.0)  # fmt: skip
    video = next((synth_dir / "videos").rglob("*.mp4")).read_bytes()

    async def trickle():
        for _ in range(40):  # 10 bytes every 0.25 s: 40 bytes/s, for up to 10 s
            yield b"\x00" * 10
            await asyncio.sleep(0.25)

    async def main():
        transport = httpx.ASGITransport(app=client.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            headers = {"content-type": "video/mp4"}
            start = time.monotonic()
            slow = [asyncio.create_task(http.post("/classify", content=trickle(), headers=headers))
                    for _ in range(4)]  # fmt: skip
            await asyncio.sleep(0.3)  # the tricklers are receiving
            normal = []
            for _ in range(4):
                normal.append(await http.post("/classify", content=video, headers=headers))
            cut = await asyncio.gather(*slow)
            return normal, cut, time.monotonic() - start

    normal, cut, seconds = asyncio.run(main())
    assert [r.status_code for r in normal] == [200] * 4, [r.text for r in normal]
    assert [r.status_code for r in cut] == [408] * 4
    assert cut[0].json()["title"] == "Upload too slow" and cut[0].headers["connection"] == "close"
    assert seconds < 5  # cut off after the 1 s grace, not after the 10 s the bodies would take


def test_a_burst_does_not_buy_a_silence(merged_model):
    """The rate is averaged since the start, but no gap may exceed the grace: 20 kB at once,
    then nothing, is cut off after upload_grace_s, not after 20 kB / min_rate."""
    client = local_client(merged_model, min_upload_bytes_per_s=2000, upload_grace_s=0.5)

    async def burst_then_silence():
        yield b"\x00" * 20_000
        await asyncio.sleep(5)
        yield b"\x00"

    async def main():
        transport = httpx.ASGITransport(app=client.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            start = time.monotonic()
            r = await http.post("/classify", content=burst_then_silence())
            return r, time.monotonic() - start

    r, seconds = asyncio.run(main())
    assert r.status_code == 408 and seconds < 2, (r.status_code, seconds)


def test_a_client_gone_mid_upload_is_a_problem_not_a_500(merged_model):
    client = local_client(merged_model)
    messages = iter([{"type": "http.request", "body": b"\x00" * 100, "more_body": True},
                     {"type": "http.disconnect"}])  # fmt: skip
    sent = []

    async def receive():
        return next(messages)

    async def send(message):
        sent.append(message)

    asyncio.run(client.app(dict(POST_CLASSIFY), receive, send))  # the app adds keys
    assert sent[0]["status"] == 400


def test_too_many_uploads_at_once_are_503(merged_model):
    client = local_client(merged_model, max_uploads=2, upload_grace_s=5.0)

    async def stall():
        yield b"\x00"
        await asyncio.sleep(1.0)

    async def main():
        transport = httpx.ASGITransport(app=client.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            held = [asyncio.create_task(http.post("/classify", content=stall())) for _ in range(2)]
            await asyncio.sleep(0.2)
            third = await http.post("/classify", content=b"\x00" * 100)
            await asyncio.gather(*held)
            return third

    third = asyncio.run(main())
    assert third.status_code == 503 and third.headers["retry-after"] == "1"
    assert "too many uploads at once" in third.json()["detail"]


def test_oversized_headers_are_431(merged_model):
    client = local_client(merged_model, max_header_bytes=4096)
    r = client.get("/readyz", headers={"x-padding": "a" * 5000})
    assert r.status_code == 431 and r.headers["content-type"] == "application/problem+json"
    assert "at most 4096" in r.json()["detail"]
    assert client.get("/readyz", headers={"x-padding": "a" * 3000}).status_code == 200
    assert client.get("/readyz?x=" + "a" * 5000).status_code == 431  # the request line counts


def test_a_request_past_its_deadline_is_504_whatever_the_client_asks(merged_model, synth_dir):
    client = local_client(merged_model, delay_s=3.0, request_timeout_s=0.5)
    video = next((synth_dir / "videos").rglob("*.mp4")).read_bytes()
    start = time.monotonic()
    headers = {"content-type": "video/mp4", "x-request-timeout-seconds": "-1"}
    r = client.post("/classify", content=video, headers=headers)
    assert r.status_code == 504 and r.json()["title"] == "Request timed out", r.text
    assert time.monotonic() - start < 2.5
    assert client.app.state.service.pending == 0  # the slot is free again


def test_too_large_is_refused_while_streaming(merged_model):
    """At the ASGI level: the app stops pulling body chunks once the limit is passed."""
    client = local_client(merged_model, max_upload_bytes=65_536)
    app, pulled, sent = client.app, [], []

    async def receive():
        pulled.append(1)
        return {"type": "http.request", "body": b"\x00" * 16_384, "more_body": len(pulled) < 100}

    async def send(message):
        sent.append(message)

    asyncio.run(app(dict(POST_CLASSIFY), receive, send))  # the app adds keys
    assert sent[0]["status"] == 413
    assert len(pulled) <= 6  # 65_536 / 16_384 + 1, not the whole 1.6 MB body


@pytest.mark.parametrize(
    "query", ["top_k=0", "top_k=1000", "spatial_crops=2", "temporal_clips=0", "temporal_clips=40"]
)
def test_bad_parameters_are_422(merged_model, synth_dir, query):
    client = local_client(merged_model)
    video = next((synth_dir / "videos").rglob("*.mp4")).read_bytes()
    r = client.post(f"/classify?{query}", files={"file": ("c.mp4", video, "video/mp4")})
    assert r.status_code == 422 and r.headers["content-type"] == "application/problem+json"


def test_api_key(merged_model, synth_dir):
    client = local_client(merged_model, api_key="s3cret")
    video = next((synth_dir / "videos").rglob("*.mp4")).read_bytes()
    files = {"file": ("c.mp4", video, "video/mp4")}
    assert client.post("/classify", files=files).status_code == 401
    bad = client.post("/classify", files=files, headers={"authorization": "Bearer nope"})
    assert bad.status_code == 401 and bad.headers["www-authenticate"] == "Bearer"
    ok = client.post("/classify", files=files, headers={"authorization": "Bearer s3cret"})
    assert ok.status_code == 200
    assert client.get("/livez").status_code == 200  # health stays open for probes


def test_full_queue_answers_503_with_retry_after(merged_model, synth_dir):
    s = ServiceSettings(model_path=str(merged_model), max_pending_requests=2, retry_after_s=3)
    runner = ModelRunner(str(merged_model))
    service = VideoService(s, read_info(merged_model), SlowBackend(runner, s, delay_s=0.5))
    app = create_app()
    app.state.service = service
    video = next((synth_dir / "videos").rglob("*.mp4")).read_bytes()

    async def burst():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            files = {"file": ("c.mp4", video, "video/mp4")}
            return await asyncio.gather(*(client.post("/classify", files=files) for _ in range(5)))

    responses = asyncio.run(burst())
    codes = sorted(r.status_code for r in responses)
    assert codes == [200, 200, 503, 503, 503]
    rejected = next(r for r in responses if r.status_code == 503)
    assert rejected.headers["retry-after"] == "3"
    assert service.pending == 0


def test_docs_exist(merged_model):
    client = local_client(merged_model)
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert "/classify" in paths and "/detect" in paths


def test_docs_show_every_answer_shape_and_the_problem_shape(merged_model):
    spec = local_client(merged_model).get("/openapi.json").json()
    schemas = spec["components"]["schemas"]

    def ok(path: str, method: str) -> str:
        ref = spec["paths"][path][method]["responses"]["200"]["content"]["application/json"]
        return ref["schema"]["$ref"].rsplit("/", 1)[-1]

    assert ok("/classify", "post") == "Classification"
    assert ok("/detect", "post") == "Detection"
    assert ok("/v1/model", "get") == "ModelCard"
    assert ok("/readyz", "get") == "Status"
    assert set(schemas["Timings"]["properties"]) == TIMINGS
    assert set(schemas["Classification"]["required"]) >= {"labels", "views", "timings"}
    refused = spec["paths"]["/classify"]["post"]["responses"]["422"]["content"]
    assert list(refused) == ["application/problem+json"]
    problem = refused["application/problem+json"]["schema"]
    assert problem["title"] == "ProblemDetail"
    assert set(problem["properties"]) == {"type", "title", "status", "detail", "instance"}


def test_an_answer_that_strays_from_its_shape_is_refused_where_it_is_made():
    from pydantic import ValidationError

    from service.responses import Timings

    with pytest.raises(ValidationError, match="extra"):
        Timings(decode_ms=1, decode_wait_ms=0, queue_ms=0, inference_ms=1, total_ms=2,
                frames_decoded=8, frames_used=8, surprise=1)  # fmt: skip


# ---- /detect ----


@pytest.fixture
def ava_video(synth_ava_dir) -> bytes:
    return next((synth_ava_dir / "videos").glob("synth_val_*.mp4")).read_bytes()


def test_detect_with_the_localiser(merged_detector, ava_video):
    client = local_client(merged_detector)
    r = client.post(
        "/detect?box_threshold=0.05&score_threshold=0",
        files={"file": ("v.mp4", ava_video, "video/mp4")},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert [k["timestamp"] for k in body["keyframes"]] == [1.0, 2.0]  # 1 Hz in a 3 s clip
    actors = body["keyframes"][0]["actors"]
    assert actors and all(a["box_source"] == "localiser" for a in actors)
    assert len(actors[0]["actions"]) == 8  # threshold 0: every action, best first
    scores = [a["score"] for a in actors[0]["actions"]]
    assert scores == sorted(scores, reverse=True)
    assert actors[0]["actions"][0]["score"] <= actors[0]["box_score"]  # box x action
    assert set(body["timings"]) == TIMINGS
    assert body["clip"]["frames_per_clip"] == 4
    # A high box threshold keeps no localiser actor.
    r = client.post("/detect?box_threshold=1", files={"file": ("v.mp4", ava_video, "video/mp4")})
    assert all(not k["actors"] for k in r.json()["keyframes"])


def test_detect_with_given_boxes(merged_detector, ava_video):
    client = local_client(merged_detector)
    boxes = {"1.5": [[0.1, 0.2, 0.5, 0.9], [0.5, 0.1, 0.9, 0.6]]}
    r = client.post(
        "/detect?score_threshold=0",
        files={"file": ("v.mp4", ava_video, "video/mp4")},
        data={"boxes": json.dumps(boxes)},
    )
    assert r.status_code == 200, r.text
    (frame,) = r.json()["keyframes"]  # no timestamps: the boxes' times
    assert frame["timestamp"] == 1.5
    assert [a["box"] for a in frame["actors"]] == boxes["1.5"]
    assert all(a["box_source"] == "request" and a["box_score"] == 1 for a in frame["actors"])
    # With timestamps, the boxes' time is added; other key frames use the localiser.
    r = client.post(
        "/detect",
        params={"timestamps": "0.5,2", "boxes": json.dumps(boxes)},
        content=ava_video,
        headers={"content-type": "video/mp4"},
    )
    assert r.status_code == 200, r.text
    assert [k["timestamp"] for k in r.json()["keyframes"]] == [0.5, 2.0, 1.5]


@pytest.mark.parametrize(
    ("params", "boxes", "detail"),
    [
        ({}, {"1": [[0.1, 0.2, 1.2, 0.9]]}, "out of range"),
        ({}, {"1": [[0.6, 0.2, 0.5, 0.9]]}, "inverted"),
        ({}, {"1": [[0.1, 0.1, 0.2, 0.2]] * 3}, "at most 2"),
        ({}, {"1": [[0.1, 0.2, 0.5]]}, "is not [x1, y1, x2, y2]"),
        ({}, {"1": [["a", 0.2, 0.5, 0.9]]}, "not a number"),
        ({}, {"soon": [[0.1, 0.2, 0.5, 0.9]]}, "not a time"),
        ({}, "[1, 2", "not valid JSON"),
        ({"timestamps": "1,x"}, None, "comma-separated"),
        ({"timestamps": "-1"}, None, "not a time in seconds"),
        ({"timestamps": "7"}, None, "outside the video"),
        ({"timestamps": "0.1,0.2,0.3,0.4"}, None, "at most 3"),
        ({"score_threshold": "2"}, None, "score_threshold"),
        ({"box_threshold": "0.01"}, None, "box_threshold"),
        ({"timestamps": ","}, None, "empty"),
        ({}, "[" * 5000, "not valid JSON"),
    ],
)
def test_bad_detect_parameters_are_422(merged_detector, ava_video, params, boxes, detail):
    client = local_client(merged_detector, max_boxes=2, max_keyframes=3)
    data = {"boxes": boxes if isinstance(boxes, str) else json.dumps(boxes)} if boxes else None
    r = client.post(
        "/detect", params=params, files={"file": ("v.mp4", ava_video, "video/mp4")}, data=data
    )
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert detail in r.json()["detail"]


def test_detect_errors_and_wrong_endpoints(merged_detector, merged_model, ava_video):
    detector = local_client(merged_detector)
    r = detector.post("/detect", files={"file": ("x.mp4", b"\x00" * 5000, "video/mp4")})
    assert r.status_code == 415
    r = detector.post("/classify", files={"file": ("v.mp4", ava_video, "video/mp4")})
    assert r.status_code == 409 and "use POST /detect" in r.json()["detail"]
    r = local_client(merged_model).post(
        "/detect", files={"file": ("v.mp4", ava_video, "video/mp4")}
    )
    assert r.status_code == 409 and "use POST /classify" in r.json()["detail"]
    assert detector.get("/v1/model").json()["task"] == "detect"


def test_model_card(merged_model):
    card = local_client(merged_model).get("/v1/model").json()
    assert card["frames"] == 4 and len(card["classes"]) == 8
    assert card["temporal_offsets"][0] == [1, -1, 0, 0]
    assert card["gflops_per_video"] == pytest.approx(card["gflops_per_view"] * 2, rel=1e-3)


# ---- the real app under Ray Serve, over HTTP ----


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")  # Ray stops when this module ends: later tests get the CPUs
def ray_service(merged_model):
    from service.server import start, stop

    http_port, metrics_port = free_port(), free_port()
    start(
        {"model_path": str(merged_model), "max_batch_size": 8, "batch_wait_timeout_s": 0.05,
         "max_upload_bytes": 2_000_000, "decode_replicas": 2, "max_pending_requests": 16,
         "max_timelines": 1},
        host="127.0.0.1", port=http_port, metrics_port=metrics_port,
    )  # fmt: skip
    yield f"http://127.0.0.1:{http_port}", f"http://127.0.0.1:{metrics_port}/metrics"
    stop()


def test_ray_ready_and_real_videos(ray_service):
    base, _ = ray_service
    assert httpx.get(f"{base}/readyz", timeout=30).status_code == 200
    # H.264 MP4s, MPEG-4 AVI with packed B-frames and audio, Cinepak AVI.
    for name in ("bikes.mp4", "bigbuckbunny.mp4", "carphone_pristine.mp4", "Megamind.avi",
                 "tree.avi"):  # fmt: skip
        kind = "video/mp4" if name.endswith(".mp4") else "video/x-msvideo"
        with open(packaged_clip(name), "rb") as f:
            r = httpx.post(f"{base}/classify", files={"file": (name, f, kind)}, timeout=60)
        assert r.status_code == 200, r.text
        assert r.json()["timings"]["total_ms"] > 0


def test_ray_listens_on_loopback_only(ray_service):
    """The local default: no port of Ray's (GCS, raylet, workers, agents, metrics) nor the
    service's on any other interface (the HTTP address given here is loopback too), but one
    that Ray 2.60 hard-codes: each Serve replica's inter-deployment gRPC server on [::]:0
    (ray/serve/_private/replica.py), one per replica, which README "Security" says to firewall."""
    import collections
    import ipaddress

    from tests.helpers import listening_sockets

    def command(pid: int | None) -> bytes:
        if pid is None:
            return b""
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                return f.read()
        except OSError:
            return b""

    open_, replica_servers = [], collections.Counter()
    for ip, port, pid in listening_sockets():
        rays = pid == os.getpid() or b"ray" in command(pid)  # this process is Ray's driver
        if not rays or ipaddress.ip_address(ip).is_loopback:
            continue
        if command(pid).startswith(b"ray::ServeReplica") and ip == "::":
            replica_servers[pid] += 1
        else:
            open_.append((ip, port, command(pid)[:40]))
    assert not open_, f"Ray listens beyond loopback: {open_}"
    assert set(replica_servers.values()) <= {1}


def test_ray_errors_are_problems(ray_service):
    base, _ = ray_service
    cases = [
        ({"content": b""}, 400),
        ({"files": {"file": ("a.txt", b"hello, not a video", "text/plain")}}, 415),
        ({"content": b"\x00" * 2_100_000, "headers": {"content-type": "video/mp4"}}, 413),
    ]
    for kwargs, status in cases:
        r = httpx.post(f"{base}/classify", timeout=60, **kwargs)
        assert r.status_code == status, r.text
        assert r.headers["content-type"] == "application/problem+json"
    assert httpx.post(f"{base}/classify?top_k=-1", content=b"x", timeout=30).status_code == 422
    r = httpx.get(f"{base}/readyz", headers={"x-padding": "a" * 100_000}, timeout=30)
    assert r.status_code == 431 and r.headers["content-type"] == "application/problem+json"
    r = httpx.get(f"{base}/nowhere", timeout=30)
    assert r.status_code == 404 and r.headers["content-type"] == "application/problem+json"
    r = httpx.post(f"{base}/detect", timeout=30)  # a classifier is served
    assert r.status_code == 409 and r.headers["content-type"] == "application/problem+json"


def test_ray_concurrent_requests_batch_and_metrics(ray_service, synth_dir):
    base, metrics_url = ray_service
    videos = sorted((synth_dir / "videos").rglob("*.mp4"))[:12]

    async def load():
        async with httpx.AsyncClient(timeout=120) as client:
            return await asyncio.gather(
                *(client.post(f"{base}/classify", files={"file": (v.name, v.read_bytes())})
                  for v in videos)
            )  # fmt: skip

    responses = asyncio.run(load())
    assert [r.status_code for r in responses] == [200] * len(videos)
    # Each request has 2 views: a larger batch holds views of several requests.
    assert max(r.json()["batch_size"] for r in responses) > 2
    # Decoding ran on both decode replicas, and the frames decoded are reported.
    assert len({r.json()["decoder"]["replica"] for r in responses}) == 2
    assert all(r.json()["timings"]["frames_decoded"] >= 1 for r in responses)
    deadline, text = time.time() + 120, ""
    while time.time() < deadline:  # Ray's agent exports metrics every few seconds
        text = httpx.get(metrics_url, timeout=10).text
        if all(
            n in text
            for n in (
                "ray_zeroi2v_requests_total",
                "ray_zeroi2v_latency_seconds_bucket",
                "ray_zeroi2v_batch_size_bucket",
                "ray_serve_num_http_requests",
            )
        ):
            break
        time.sleep(2)
    for name in ("ray_zeroi2v_latency_seconds_bucket", "ray_zeroi2v_batch_size_bucket",
                 "ray_zeroi2v_requests_total", "ray_zeroi2v_in_flight_requests",
                 "ray_serve_num_http_requests"):  # fmt: skip
        assert name in text, name
    for stage in ("decode", "queue", "inference", "total"):
        assert f'stage="{stage}"' in text
    sizes = [
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("ray_zeroi2v_batch_size_bucket") and 'le="1.0"' in line
    ]
    counts = [
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("ray_zeroi2v_batch_size_count")
    ]
    assert sum(counts) > sum(sizes)  # some batches held more than one view


def test_ray_gauges_stay_exported_while_idle(ray_service):
    """Ray drops a gauge nobody sets for two export intervals: the replicas keep setting theirs,
    so an idle service reads 0 in flight and 0 queued instead of no series at all."""
    base, metrics_url = ray_service
    assert httpx.get(f"{base}/readyz", timeout=30).status_code == 200
    time.sleep(8)  # idle: four export intervals of 2 s
    text = httpx.get(metrics_url, timeout=10).text
    for name in ("ray_zeroi2v_in_flight_requests", "ray_zeroi2v_queue_depth"):
        values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                  if line.startswith(name + "{")]  # fmt: skip
        assert values and set(values) == {0.0}, (name, values)


def test_ray_full_queue_answers_503_end_to_end(ray_service):
    """Past max_pending_requests (16) the ingress answers 503 with Retry-After at once, while
    the admitted requests go through the decode replicas and the model and succeed."""
    base, _ = ray_service
    data = packaged_clip("bikes.mp4").read_bytes()

    async def burst():
        async with httpx.AsyncClient(timeout=300) as client:
            return await asyncio.gather(
                *(client.post(f"{base}/classify?temporal_clips=10&spatial_crops=3", content=data,
                              headers={"content-type": "video/mp4"}) for _ in range(40))
            )  # fmt: skip

    responses = asyncio.run(burst())
    codes = [r.status_code for r in responses]
    assert set(codes) == {200, 503} and codes.count(200) >= 16, codes
    # Every 503 says Retry-After. The app's are problem+json; Ray's router, holding the burst
    # while it picks a replica, may turn some away itself first (text/plain), but not all.
    rejected = [r for r in responses if r.status_code == 503]
    for r in rejected:
        assert r.headers.get("retry-after") == "1", (r.headers, r.text)
        if r.headers["content-type"] != "application/problem+json":
            assert "backpressure" in r.text, r.text
    assert any(r.headers["content-type"] == "application/problem+json" for r in rejected)


@pytest.fixture(scope="module")
def five_minutes(tmp_path_factory) -> Path:
    from tests.media import ordinal_image, write_clip

    images = [ordinal_image(i % 1024, 64, 48) for i in range(3000)]
    path = tmp_path_factory.mktemp("long") / "five_minutes.mp4"
    return write_clip(path, 3000, fps=10, gop=50, images=images)


def test_ray_timeline_streams_and_a_client_that_leaves_frees_its_slot(ray_service, five_minutes):
    """Through Ray's proxy: the windows stream as NDJSON (scored by the model replica's
    batcher), then the summary; with the one timeline slot taken a second is 503; a client that
    hangs up after one line frees the slot within seconds (the whole video takes far longer)."""
    base, _ = ray_service
    data = five_minutes.read_bytes()
    r = httpx.post(f"{base}/timeline?stride_s=30&top_k=2", content=data,
                   headers={"content-type": "video/mp4"}, timeout=120)  # fmt: skip
    assert r.status_code == 200 and r.headers["content-type"] == "application/x-ndjson"
    records = [json.loads(line) for line in r.text.splitlines()]
    assert [w["start_s"] for w in records[:-1]] == [30.0 * k for k in range(10)]
    assert records[-1]["type"] == "summary" and records[-1]["windows"] == 10
    # Decoding ends soon after the last window's last frame (270.6 s, frame 2706).
    assert 2707 < records[-1]["frames_decoded"] < 2750

    url = f"{base}/timeline?stride_s=0.1"
    with httpx.stream("POST", url, content=data, timeout=120) as streamed:
        lines = streamed.iter_lines()  # kept: a dropped iterator closes the connection
        assert json.loads(next(lines))["type"] == "window"
        busy = httpx.post(url, content=b"x" * 2000, timeout=30)
        assert busy.status_code == 503 and "too many timelines" in busy.json()["detail"]
    hung_up, status = time.monotonic(), 503
    while status == 503 and time.monotonic() - hung_up < 5:
        time.sleep(0.2)
        # A body that is not a video: answered 415 once the slot is free, without decoding.
        status = httpx.post(url, content=b"x" * 2000, timeout=30).status_code
    assert status == 415, "the timeline's slot was still taken 5 s after its client left"


RAY_SERVE_PANELS = (
    "QPS per application",
    "P90 latency per application",
    "Replicas per deployment",
    "QPS per deployment",
    "P90 latency per deployment",
)


def test_ray_dashboard_queries_return_data_from_a_real_prometheus(ray_service, tmp_path):
    """Debian's Prometheus scrapes the running service; every dashboard query returns data.

    The DCGM GPU panel is the one exemption: its exporter is a separate container that needs a
    GPU, so no machine without one can feed it."""
    _, metrics_url = ray_service
    target = metrics_url.removeprefix("http://").removesuffix("/metrics")
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s}\n"
        f"scrape_configs: [{{job_name: zeroi2v, static_configs: [{{targets: ['{target}']}}]}}]\n"
    )
    subprocess.run(["promtool", "check", "config", str(config)], check=True, capture_output=True)
    port = free_port()
    prometheus = subprocess.Popen(
        ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    dashboards = Path(__file__).resolve().parent.parent / "deploy/grafana/dashboards"
    exprs = {
        t["expr"].replace("$__rate_interval", "30s"): panel["title"]
        for dash in (dashboards / "zeroi2v").glob("*.json")
        for panel in json.loads(dash.read_text())["panels"]
        for t in panel["targets"]
        if "DCGM_" not in t["expr"]
    }
    # Ray's own Serve dashboard, provisioned beside ours: its core panels must work on this
    # setup too (template variables set to "All"; panels for gRPC, errors and nodes may be
    # legitimately empty here).
    ray_serve = json.loads((dashboards / "ray/ray_serve.json").read_text())
    for panel in ray_serve["panels"]:
        if panel["title"] in RAY_SERVE_PANELS:
            for t in panel["targets"]:
                if "grpc" not in t["expr"]:  # no gRPC ingress here
                    exprs[re.sub(r"\$\w+", ".*", t["expr"])] = f"Ray: {panel['title']}"
    assert set(exprs.values()) >= {f"Ray: {title}" for title in RAY_SERVE_PANELS}
    try:
        with open(packaged_clip("bikes.mp4"), "rb") as f:  # traffic after Prometheus started
            body = f.read()
        base = ray_service[0]
        empty = dict(exprs)
        deadline = time.time() + 90
        while empty and time.time() < deadline:
            httpx.post(f"{base}/classify", files={"file": ("bikes.mp4", body)}, timeout=60)
            httpx.post(f"{base}/classify", content=b"not a video", timeout=30)  # a 4xx
            httpx.post(f"{base}/timeline", content=body, timeout=60)
            time.sleep(2)
            for expr in list(empty):
                try:
                    r = httpx.get(f"http://127.0.0.1:{port}/api/v1/query",
                                  params={"query": expr}, timeout=10)  # fmt: skip
                except httpx.TransportError:
                    break  # Prometheus still starting
                assert r.status_code == 200, (expr, r.text)
                if r.json()["data"]["result"]:
                    del empty[expr]
        assert not empty, f"dashboard queries with no data: {empty}"
    finally:
        prometheus.terminate()
        prometheus.wait(timeout=30)


def test_ray_readyz_goes_red_when_the_model_replica_dies_and_green_when_it_is_back(ray_service):
    """Kill the model replica's actor (its process ends at once, as on a crash): /readyz answers
    503 within 5 s (Serve takes ~20 s to replace the replica), then 200 again, and serves."""
    import ray

    base, _ = ray_service
    assert httpx.get(f"{base}/readyz", timeout=30).status_code == 200
    (name,) = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
               if a["name"].startswith("SERVE_REPLICA::zeroi2v#Model#")]  # fmt: skip
    ray.kill(ray.get_actor(name, namespace="serve"), no_restart=True)
    killed, seen = time.monotonic(), []
    while time.monotonic() - killed < 5:
        seen.append(httpx.get(f"{base}/readyz", timeout=10).status_code)
        if seen[-1] != 200:
            break
        time.sleep(0.2)
    assert seen[-1] == 503, f"/readyz stayed {seen} for 5 s after the replica died"
    deadline = time.monotonic() + 120
    while httpx.get(f"{base}/readyz", timeout=10).status_code != 200:
        assert time.monotonic() < deadline, "the model replica never came back"
        time.sleep(0.5)
    video = packaged_clip("bikes.mp4").read_bytes()
    r = httpx.post(f"{base}/classify", content=video, headers={"content-type": "video/mp4"},
                   timeout=60)  # fmt: skip
    assert r.status_code == 200, r.text


def test_placement_comes_from_the_settings_not_the_node_building_the_app(monkeypatch):
    """This machine has no GPU, as a cluster's head node may not: the model replicas still ask
    Ray for the GPUs the settings give, and decoding gets its own replicas and range."""
    from service.deployments import build_app
    from service.server import local_defaults

    def deployments(app) -> dict:
        ingress = app._bound_deployment
        bound = [getattr(a, "_bound_deployment", None) for a in ingress.init_args]
        return {ingress.name: ingress, **{d.name: d for d in bound if d is not None}}

    d = deployments(
        build_app({"model_path": "/m.safetensors", "model_replicas": 2, "decode_replicas": 3,
                   "decode_max_replicas": 9, "decode_cpus": 2, "decode_gpus": 0.25})
    )  # fmt: skip
    assert d["Model"].ray_actor_options["num_gpus"] == 1 and d["Model"].num_replicas == 2
    scaling = d["Decoder"]._deployment_config.autoscaling_config
    assert (scaling.min_replicas, scaling.max_replicas) == (3, 9)
    options = d["Decoder"].ray_actor_options
    assert (options["num_cpus"], options["num_gpus"]) == (2, 0.25)
    assert d["Ingress"].ray_actor_options["num_cpus"] == 0
    # Ray counts a request from its arrival, body still coming: room for every upload, every
    # admitted request and every timeline, so the app's 503s are what clients see, then Ray's.
    ingress = d["Ingress"]._deployment_config
    assert ingress.max_ongoing_requests == 64 + 16 + 2 + 16 and ingress.max_queued_requests == 16
    assert ingress.backpressure_config.retry_after_s == 1
    cluster = deployments(build_app({"model_path": "/m", "ingress_cpus": 2, "max_timelines": 2}))
    assert cluster["Ingress"].ray_actor_options["num_cpus"] == 2
    with pytest.raises(ValueError, match="decode_max_replicas"):
        build_app({"model_path": "/m.safetensors", "decode_replicas": 4, "decode_max_replicas": 2})
    # Locally (`zeroi2v serve`): a decode replica per core, the model where this machine
    # has a GPU; what the caller or a ZEROI2V_* variable says wins.
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    monkeypatch.setattr("os.cpu_count", lambda: 6)
    local = local_defaults({"model_path": "/m.safetensors"})
    assert (local["decode_replicas"], local["model_gpus"]) == (6, 0)
    assert local_defaults({"model_path": "/m", "decode_replicas": 1})["decode_replicas"] == 1
    assert local_defaults({"model_path": "/m", "decode_cpus": 2})["decode_replicas"] == 3
    assert local_defaults({"model_path": "/m", "decode_max_replicas": 4})["decode_replicas"] == 4
    with pytest.raises(ValueError, match="decode_gpus > 0"):
        build_app({"model_path": "/m.safetensors", "decode_device": "cuda"})
    monkeypatch.setenv("ZEROI2V_DECODE_REPLICAS", "3")
    assert "decode_replicas" not in local_defaults({"model_path": "/m"})


def test_a_cancelled_wait_cancels_the_ray_responses():
    """A request past its deadline: the decode and model responses are cancelled with it."""
    from service.deployments import cancelling

    class Response:
        def __init__(self, forever: bool):
            self.forever, self.cancelled = forever, False

        def __await__(self):
            return asyncio.sleep(3600 if self.forever else 0).__await__()

        def cancel(self):
            self.cancelled = True

    decoded, inference = Response(False), Response(True)

    async def main():
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(cancelling(decoded, inference), 0.05)

    asyncio.run(main())
    assert decoded.cancelled and inference.cancelled


def test_readiness_needs_a_running_replica_of_each_deployment(monkeypatch):
    from types import SimpleNamespace as NS

    from service import deployments

    def status(model_running: int, with_decoder: bool = True):
        deps = {"Model": NS(replica_states={"RUNNING": model_running})}
        if with_decoder:
            deps["Decoder"] = NS(replica_states={"RUNNING": 2})
        return NS(applications={"zeroi2v": NS(deployments=deps)})

    for state, expected in [(status(1), True), (status(0), False), (status(1, False), False)]:
        monkeypatch.setattr(deployments.serve, "status", lambda s=state: s)
        assert deployments.replicas_running("zeroi2v", ("Model", "Decoder")) is expected
    assert deployments.replicas_running("other", ("Model",)) is False


def test_a_requests_views_reach_the_batcher_a_round_at_a_time():
    from service.deployments import in_rounds

    pending, most = 0, 0

    async def batched(item):
        nonlocal pending, most
        pending += 1
        most = max(most, pending)
        await asyncio.sleep(0.01)
        pending -= 1
        return item * 10

    assert asyncio.run(in_rounds(batched, list(range(7)), 2)) == [0, 10, 20, 30, 40, 50, 60]
    assert most == 2


def test_a_request_of_more_than_one_round_waits_its_turn_and_one_round_never_waits():
    from service.deployments import ShortFirst

    entered = []

    async def batched(item):
        entered.append(item)
        await asyncio.sleep(0.05)
        return item

    async def scenario():
        priority = ShortFirst(max_wait_s=5.0)
        with priority.short_request():  # a short request is at the model
            long = asyncio.create_task(priority.rounds(batched, ["l1", "l2", "l3"], 2))
            assert await priority.rounds(batched, ["s"], 2) == ["s"]  # one round: at once
            await asyncio.sleep(0.2)
            assert entered == ["s"]  # three items in rounds of two: it waits
        assert await long == ["l1", "l2", "l3"]
        # a timeline's batch is long even when it fits in one round
        with priority.short_request():
            windows = asyncio.create_task(priority.rounds(batched, ["w"], 2, short=False))
            await asyncio.sleep(0.2)
            assert "w" not in entered
        assert await windows == ["w"]

    asyncio.run(scenario())


def test_a_timelines_rounds_wait_while_a_short_request_is_at_the_model():
    from service.deployments import ShortFirst, in_rounds

    rounds = []

    async def batched(item):
        rounds.append((item, time.monotonic()))
        return item

    async def scenario():
        priority = ShortFirst(max_wait_s=2.0)
        with priority.short_request():
            # the timeline's first round waits for the short request (at most 2 s)
            waited = asyncio.create_task(in_rounds(batched, [1, 2], 1, priority.long_turn))
            await asyncio.sleep(0.1)
            assert rounds == []
        left = time.monotonic()
        await waited  # the short request left: the rounds go on at once, not after 2 s
        assert [item for item, _ in rounds] == [1, 2] and rounds[0][1] - left < 1.0
        rounds.clear()
        priority = ShortFirst(max_wait_s=0.3)
        with priority.short_request():
            asked = time.monotonic()
            await in_rounds(batched, [3], 1, priority.long_turn)  # it never leaves: 0.3 s
        assert 0.3 <= rounds[0][1] - asked < 1.5

    asyncio.run(scenario())
