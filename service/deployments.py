"""Ray Serve deployments: thin wrappers around service/ plain code.

    Ingress (FastAPI, CPU)  --DeploymentHandle-->  Model (merged checkpoint, GPU when present)

The ingress decodes uploads in a bounded thread pool and sends the views; the model replica
batches views from all requests with `@serve.batch` (a request with 3 views adds 3) and returns
each view's probabilities. /detect goes the same way with key-frame clips (and any boxes the
request sent) batched by `detect_clips`. `build_app` is the import path of the Serve config file
(deploy/serve.yaml); `zeroi2v serve` runs the same application on a local Ray instance.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time

import torch
from ray import serve
from ray.serve.handle import DeploymentHandle

from model.checkpoint import CheckpointInfo
from service.app import create_app
from service.metrics import IngressMetrics, ModelMetrics
from service.model_runner import ModelRunner
from service.settings import ServiceSettings
from service.video_service import DetectInference, Inference, VideoService


@serve.deployment(name="Model", max_ongoing_requests=64)
class ModelDeployment:
    def __init__(self, settings: dict):
        s = ServiceSettings.model_validate(settings)
        torch.set_num_threads(s.torch_threads or os.cpu_count() or 1)
        self.runner = ModelRunner(s.model_path, s.device, s.precision, s.compile, s.max_batch_size)
        self.infer_views.set_max_batch_size(s.max_batch_size)
        self.infer_views.set_batch_wait_timeout_s(s.batch_wait_timeout_s)
        self.detect_clips.set_max_batch_size(s.max_batch_size)
        self.detect_clips.set_batch_wait_timeout_s(s.batch_wait_timeout_s)
        self.metrics = ModelMetrics()
        self.waiting = 0
        seconds = self.runner.warm_up()
        logging.getLogger("ray.serve").info(
            "model warmed up in %.1f s on %s (%s, compile %s; seconds per batch size: %s)",
            seconds, self.runner.device, self.runner.dtype, s.compile, self.runner.warm_up_s,
        )  # fmt: skip

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
    async def infer_views(self, views: list[torch.Tensor]) -> list[tuple]:
        start = time.perf_counter()
        self.waiting -= len(views)
        self.metrics.queue_depth.set(self.waiting)
        self.metrics.batch_size.observe(len(views))
        # Run here, blocking the replica's loop: views that arrive meanwhile wait and form the
        # next batch. (Run in a thread, batches went concurrent and stayed at 1-2 views.)
        probs = self.runner.run(views)
        seconds = time.perf_counter() - start
        return [(p, seconds, len(views)) for p in probs]

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
    async def detect_clips(self, items: list[tuple]) -> list[tuple]:
        """Detection's batch: key-frame clips of any requests, each with its boxes or None."""
        start = time.perf_counter()
        self.waiting -= len(items)
        self.metrics.queue_depth.set(self.waiting)
        self.metrics.batch_size.observe(len(items))
        found = self.runner.detect(items)
        seconds = time.perf_counter() - start
        return [(f, seconds, len(items)) for f in found]

    async def detect(self, clips: torch.Tensor, boxes: list) -> DetectInference:
        self.waiting += len(clips)
        self.metrics.queue_depth.set(self.waiting)
        results = await asyncio.gather(
            *(self.detect_clips((c, b)) for c, b in zip(clips.unbind(0), boxes, strict=True))
        )
        return DetectInference(
            actors=[r[0] for r in results],
            inference_ms=max(r[1] for r in results) * 1e3,
            batch_size=max(r[2] for r in results),
        )

    async def infer(self, views: torch.Tensor) -> Inference:
        self.waiting += len(views)
        self.metrics.queue_depth.set(self.waiting)
        results = await asyncio.gather(*(self.infer_views(v) for v in views.unbind(0)))
        return Inference(
            probabilities=torch.stack([r[0] for r in results]).mean(0),
            inference_ms=max(r[1] for r in results) * 1e3,
            batch_size=max(r[2] for r in results),
        )

    def ready(self) -> bool:
        return self.runner.warmed_up

    def card(self) -> dict:
        return self.runner.card()

    def checkpoint_info(self) -> CheckpointInfo:
        return self.runner.info


class RayModelBackend:
    """The ingress's view of the model deployment."""

    def __init__(self, handle: DeploymentHandle):
        self.handle = handle
        self._card: dict | None = None
        self._ready = False

    async def infer(self, views: torch.Tensor) -> Inference:
        return await self.handle.infer.remote(views)

    async def detect(self, clips: torch.Tensor, boxes: list) -> DetectInference:
        return await self.handle.detect.remote(clips, boxes)

    async def ready(self) -> bool:
        # Once warmed up, stay ready: a replica busy with a long CPU batch would otherwise
        # time out here and be reported unready exactly when it is working. Ray Serve's own
        # health checks restart a replica that dies.
        if not self._ready:
            try:
                self._ready = await asyncio.wait_for(self.handle.ready.remote(), timeout=5)
            except Exception:  # a replica that is starting or gone is simply not ready
                return False
        return self._ready

    async def model_card(self) -> dict:
        if self._card is None:
            self._card = await self.handle.card.remote()
        return self._card


@serve.deployment(name="Ingress", max_ongoing_requests=64)
@serve.ingress()
class Ingress:
    async def __init__(self, model: DeploymentHandle, settings: dict):
        s = ServiceSettings.model_validate(settings)
        backend = RayModelBackend(model)
        # Class names and preprocessing come from the model replica: only it reads the file.
        info = await model.checkpoint_info.remote()
        self.service = VideoService(s, info, backend, IngressMetrics())

    def __serve_build_asgi_app__(self):
        # Built per replica, after __init__, so the app holds this replica's service.
        app = create_app()
        app.state.service = self.service
        return app


def build_app(args: dict) -> serve.Application:
    """The application, from Serve config `args` (any ServiceSettings field) and ZEROI2V_* env."""
    settings = ServiceSettings.from_env(**args)
    gpus = 1 if settings.device in ("auto", "cuda") and torch.cuda.is_available() else 0
    model = ModelDeployment.options(ray_actor_options={"num_gpus": gpus, "num_cpus": 1}).bind(
        settings.model_dump()
    )
    return Ingress.bind(model, settings.model_dump())
