"""POST /detect through the real Ray Serve app: key-frame clips of concurrent requests share
the model deployment's batches and come back to their own request."""

import asyncio
import json
import time

import httpx
import pytest

from tests.test_service import free_port
from training.export import export_merged


@pytest.fixture(scope="module")  # Ray stops when this module ends
def ray_detector(trained_detector, tmp_path_factory):
    from service.server import start, stop

    model, _ = export_merged(
        trained_detector / "last.pt", tmp_path_factory.mktemp("rd") / "detector.safetensors"
    )
    http_port, metrics_port = free_port(), free_port()
    start(
        {"model_path": str(model), "max_batch_size": 8, "batch_wait_timeout_s": 0.1},
        host="127.0.0.1", port=http_port, metrics_port=metrics_port,
    )  # fmt: skip
    yield f"http://127.0.0.1:{http_port}", f"http://127.0.0.1:{metrics_port}/metrics"
    stop()


def test_ray_detect_batches_and_answers_each_request(ray_detector, synth_ava_dir):
    base, metrics_url = ray_detector
    videos = sorted((synth_ava_dir / "videos").glob("*.mp4"))
    boxes = json.dumps({"1": [[0.1, 0.1, 0.6, 0.7]]})

    async def load():
        async with httpx.AsyncClient(timeout=120) as client:
            return await asyncio.gather(
                *(client.post(f"{base}/detect?score_threshold=0",
                              files={"file": (v.name, v.read_bytes())},
                              data={"boxes": boxes} if i % 2 else None)
                  for i, v in enumerate(videos))
            )  # fmt: skip

    responses = asyncio.run(load())
    assert [r.status_code for r in responses] == [200] * len(videos), responses[0].text
    for i, r in enumerate(responses):
        frames = r.json()["keyframes"]
        if i % 2:  # given boxes: that key frame only, that box, every action scored
            assert [f["timestamp"] for f in frames] == [1.0]
            (actor,) = frames[0]["actors"]
            assert actor["box"] == [0.1, 0.1, 0.6, 0.7] and len(actor["actions"]) == 8
        else:
            assert [f["timestamp"] for f in frames] == [1.0, 2.0]
    # Requests without boxes send 2 clips: a larger batch holds clips of several requests.
    assert max(r.json()["batch_size"] for r in responses) > 2
    inverted = json.dumps({"1": [[0.5, 0.5, 0.2, 0.9]]})
    bad = httpx.post(f"{base}/detect", files={"file": ("v.mp4", videos[0].read_bytes())},
                     data={"boxes": inverted}, timeout=60)  # fmt: skip
    assert bad.status_code == 422 and bad.headers["content-type"] == "application/problem+json"
    deadline, text = time.time() + 60, ""
    while time.time() < deadline:  # Ray's agent exports metrics every few seconds
        text = httpx.get(metrics_url, timeout=10).text
        if 'endpoint="/detect"' in text and 'status="422"' in text:
            break
        time.sleep(2)
    assert 'endpoint="/detect"' in text and 'status="422"' in text
