"""Ray Serve deployments: thin wrappers around service/ plain code.

    Ingress (FastAPI)  --bytes-->  Decoder (CPU cores, or NVDEC)  --uint8 clips-->  Model (GPU)
           ^------------------------- answer + stats -----------------------------------'

The ingress admits a request and hands its bytes to a decode replica; the decode replica's
answer (a DeploymentResponse) is passed straight on to the model, so the frames go from the
decode replica to the model replica without passing through the ingress. The model replica
crops and normalises on its device and batches views from all requests with `@serve.batch` (a
request with 3 views adds 3), then answers the ingress with the probabilities and the decode
stats. /detect goes the same way with key-frame clips (and any boxes the request sent).

Placement comes from the settings (GPUs and CPUs per replica, replica counts; the Serve
config's `deployments:` section can override them), never from what the node building the app
happens to have. `build_app` is the import path of the Serve config file (deploy/serve.yaml);
`zeroi2v serve` runs the same application on a local Ray instance (service/server.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time

import torch
from ray import serve
from ray.serve.handle import DeploymentHandle

from model.checkpoint import CheckpointInfo
from service.app import create_app
from service.decoding import Decoded, Decoder
from service.metrics import IngressMetrics, ModelMetrics, keep_fresh
from service.model_runner import ModelRunner
from service.settings import BATCH_WAIT_TIMEOUT_S, MAX_BATCH_SIZE, ServiceSettings
from service.tasks import TASKS, Inference, ServingTask
from service.timeline import WindowScores, window_outputs
from service.video_service import VideoService
from video.views import ViewSpec


def assigned_gpus() -> list:
    """The GPUs Ray gave this replica (Ray leaves the others visible when it gives none)."""
    import ray

    return ray.get_runtime_context().get_accelerator_ids().get("GPU", [])


# Serve's controller health-checks each replica every health_check_period_s (default 10 s): a
# replica that died is noticed at the next check, and /readyz (RayBackend.ready) follows the
# controller. 2 s keeps an outage visible within the 5 s a load balancer is given; the timeout
# stays long, since a replica busy with a long CPU batch answers its check only after it.
HEALTH_CHECKS = {"health_check_period_s": 2.0, "health_check_timeout_s": 30.0}


@serve.deployment(name="Decoder", max_ongoing_requests=4, **HEALTH_CHECKS)
class DecodeDeployment:
    def __init__(self, settings: dict):
        s = ServiceSettings.model_validate(settings)
        torch.set_num_threads(1)  # resizing runs per frame inside each decode worker
        self.decoder = Decoder(
            s,
            name=serve.get_replica_context().replica_id.unique_id,
            gpu=bool(assigned_gpus()),
            low_priority=True,
        )
        logging.getLogger("ray.serve").info(
            "decoder %s: %d worker(s), device %s", self.decoder.name, s.decode_workers,
            self.decoder.device,
        )  # fmt: skip

    def __del__(self):
        self.decoder.close()  # its low-priority process goes with the replica

    async def decode(self, data: bytes, method: str, *args) -> Decoded:
        """The Decoder method a task names (ServingTask.decode_call) on the upload."""
        return await getattr(self.decoder, method)(data, *args)


@serve.deployment(name="Model", max_ongoing_requests=64, **HEALTH_CHECKS)
class ModelDeployment:
    async def __init__(self, settings: dict):
        s = ServiceSettings.model_validate(settings)
        torch.set_num_threads(s.torch_threads or os.cpu_count() or 1)
        # A GPU this replica can see but was not given (model_gpus: 0) is not its to use.
        device = "cpu" if s.device == "auto" and not assigned_gpus() else s.device
        self.runner = ModelRunner(
            s.model_path, device, s.precision, s.compile, s.max_batch_size, base=s.base
        )
        self.infer.set_max_batch_size(s.max_batch_size)
        self.infer.set_batch_wait_timeout_s(s.batch_wait_timeout_s)
        self.task = TASKS[self.runner.task]
        self.metrics = ModelMetrics()
        self.waiting = 0
        cpu = self.runner.device.type == "cpu"
        self.views_per_round = s.views_per_round or (2 if cpu else s.max_batch_size)
        self.priority = ShortFirst()
        self._gauges = keep_fresh(lambda: self.metrics.queue_depth.set(self.waiting))
        seconds = self.runner.warm_up()
        logging.getLogger("ray.serve").info(
            "model warmed up in %.1f s on %s (%s, compile %s; seconds per batch size: %s)",
            seconds, self.runner.device, self.runner.dtype, s.compile, self.runner.warm_up_s,
        )  # fmt: skip

    @serve.batch(max_batch_size=MAX_BATCH_SIZE, batch_wait_timeout_s=BATCH_WAIT_TIMEOUT_S)
    async def infer(self, items: list) -> list[tuple]:
        """One model batch of items from any requests (views, or key-frame clips with boxes)."""
        start = time.perf_counter()
        self.metrics.batch_size.observe(len(items))
        # Run here, blocking the replica's loop: items that arrive meanwhile wait and form the
        # next batch. (Run in a thread, batches went concurrent and stayed at 1-2 views.)
        results = self.task.run(self.runner, items)
        seconds = time.perf_counter() - start
        return [(r, seconds, len(items)) for r in results]

    async def at_model(self, item) -> tuple:
        """One item through the batcher, counted in the queue gauge until its batch is done
        (a request cancelled meanwhile leaves no count behind)."""
        self.waiting += 1
        self.metrics.queue_depth.set(self.waiting)
        try:
            return await self.infer(item)
        finally:
            self.waiting -= 1
            self.metrics.queue_depth.set(self.waiting)

    async def predict(self, decoded: Decoded, spec: ViewSpec, params) -> Inference:
        items = self.task.items(self.runner, decoded, spec, params)
        # On a GPU a round is a whole batch of milliseconds: a request of several waits for no
        # one (timelines still yield to short requests).
        short = None if self.runner.device.type == "cpu" else True
        results = await self.priority.rounds(self.at_model, items, self.views_per_round, short)
        return Inference(
            output=self.task.combine([r[0] for r in results]),
            inference_ms=max(r[1] for r in results) * 1e3,
            batch_size=max(r[2] for r in results),
            decoded=decoded.stats(),
        )

    async def windows(self, clips: torch.Tensor, spec: ViewSpec) -> WindowScores:
        """A timeline's batch of windows (n, T, 3, H, W) uint8: their views join the same
        batches as other requests' (a round at a time, as theirs do)."""
        groups = self.task.window_items(self.runner, clips, spec)
        items = [item for group in groups for item in group]
        results = await self.priority.rounds(
            self.at_model, items, self.views_per_round, short=False
        )
        return WindowScores(
            outputs=window_outputs(self.task, groups, [r[0] for r in results]),
            inference_ms=max(r[1] for r in results) * 1e3,
            batch_size=max(r[2] for r in results),
        )

    def ready(self) -> bool:
        return self.runner.warmed_up

    def card(self) -> dict:
        return self.runner.card()

    def checkpoint_info(self) -> CheckpointInfo:
        return self.runner.info


def replicas_running(app: str, deployments: tuple[str, ...]) -> bool:
    """Whether Serve's controller counts a running replica of each of `deployments`."""
    status = serve.status().applications.get(app)
    if status is None:
        return False
    return all(
        name in status.deployments and status.deployments[name].replica_states.get("RUNNING", 0) > 0
        for name in deployments
    )


async def in_rounds(batched, items: list, per_round: int, before_round=None) -> list:
    """`batched(item)` for every item, `per_round` at a time, each round once the last is done
    (and `await before_round()`, if given): a request's 30 views then share every batch with
    the requests behind them instead of filling whole batches ahead of them."""
    results = []
    for start in range(0, len(items), per_round):
        if before_round is not None:
            await before_round()
        part = items[start : start + per_round]
        results += await asyncio.gather(*(batched(item) for item in part))
    return results


class ShortFirst:
    """Short requests first at the model replica: the next round of a long request's views (a
    timeline's, or a /classify or /detect with more views than one round) waits while a short
    request (one round) is at the model, but never more than `max_wait_s` a round. Measured on
    a 2-core CPU, /classify's p95 beside a streaming timeline was 2-4x its p95 alone without it
    (benchmarks/README.md); a long request under a steady stream of short ones still gets a
    round every `max_wait_s`."""

    def __init__(self, max_wait_s: float = 1.0):
        self.max_wait_s = max_wait_s
        self.short = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @contextlib.contextmanager
    def short_request(self):
        self.short += 1
        self._idle.clear()
        try:
            yield
        finally:
            self.short -= 1
            if not self.short:
                self._idle.set()

    async def rounds(self, batched, items: list, per_round: int, short: bool | None = None) -> list:
        """in_rounds for one request: short (default: when its items fit in one round) goes at
        once and holds long requests back while it is in; long waits its turn before each
        round (a timeline's batches are long whatever their size)."""
        if short is None:
            short = len(items) <= per_round
        if short:
            with self.short_request():
                return await in_rounds(batched, items, per_round)
        return await in_rounds(batched, items, per_round, self.long_turn)

    async def long_turn(self) -> None:
        """Wait (at most max_wait_s) until no short request is at the model."""
        if self.short:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._idle.wait(), self.max_wait_s)


async def cancelling(*responses):
    """The last response's result; if the wait is cancelled (a request past its deadline), the
    responses are cancelled too, so the decoder and the model's queue drop the work. (Ray
    cancels them by itself only when the HTTP request is.)"""
    try:
        return await responses[-1]
    except asyncio.CancelledError:
        for response in responses:
            response.cancel()
        raise


class RayBackend:
    """The ingress's view of the decode and model deployments."""

    # How long a readiness answer from the controller is reused: /readyz stays cheap under
    # a load balancer's polling, and an outage still shows within about a second.
    READY_CACHE_S = 1.0

    def __init__(
        self, task: ServingTask, decoder: DeploymentHandle, model: DeploymentHandle, app: str
    ):
        self.task = task
        self.decoder = decoder
        self.model = model
        self.app = app
        self._card: dict | None = None
        self._ready = False
        self._running = (0.0, False)  # (when asked, answer)
        self._asking = asyncio.Lock()

    async def predict(self, data: bytes, spec: ViewSpec, params) -> Inference:
        # The decode replica's response goes to the model unresolved: Ray moves the frames
        # from one replica to the other, and a decode error surfaces here.
        method, args = self.task.decode_call(spec, params)
        decoded = self.decoder.decode.remote(data, method, *args)
        return await cancelling(decoded, self.model.predict.remote(decoded, spec, params))

    async def windows(self, clips: torch.Tensor, spec: ViewSpec) -> WindowScores:
        return await cancelling(self.model.windows.remote(clips, spec))

    async def ready(self) -> bool:
        """Warmed up once, and a model and a decode replica running as Serve's controller
        counts them. Not a call to the model: a replica busy with a long CPU batch would time
        out exactly when it is working. A replica that dies drops out of the controller's count
        within a second or two, long before Serve has started its successor (~20 s)."""
        if not self._ready:
            try:
                self._ready = await asyncio.wait_for(self.model.ready.remote(), timeout=5)
            except Exception:  # a replica that is starting or gone is simply not ready
                return False
        asked, running = self._running
        if time.monotonic() - asked > self.READY_CACHE_S:
            async with self._asking:  # one question to the controller at a time
                asked, running = self._running
                if time.monotonic() - asked > self.READY_CACHE_S:
                    check = asyncio.to_thread(replicas_running, self.app, ("Model", "Decoder"))
                    try:
                        running = await asyncio.wait_for(check, timeout=2.0)
                    except Exception:  # the controller slow or unreachable: not ready
                        running = False
                    self._running = (time.monotonic(), running)
        return running

    async def model_card(self) -> dict:
        if self._card is None:
            self._card = await self.model.card.remote()
        return self._card


INGRESS_HEADROOM = 16  # requests beyond the app's own limits: health checks, /v1/model


@serve.deployment(name="Ingress")
@serve.ingress()
class Ingress:
    async def __init__(self, decoder: DeploymentHandle, model: DeploymentHandle, settings: dict):
        s = ServiceSettings.model_validate(settings)
        # Class names and preprocessing come from the model replica: only it reads the file.
        info = await model.checkpoint_info.remote()
        app = serve.get_replica_context().app_name
        backend = RayBackend(TASKS[info.config.task], decoder, model, app)
        self.service = VideoService(s, info, backend, IngressMetrics())
        self._gauges = keep_fresh(self.service.refresh_gauges)

    def __serve_build_asgi_app__(self):
        # Built per replica, after __init__, so the app holds this replica's service.
        app = create_app()
        app.state.service = self.service
        return app


def build_app(args: dict) -> serve.Application:
    """The application, from Serve config `args` (any ServiceSettings field) and ZEROI2V_* env.

    Resources per replica come from the settings alone: a head node without a GPU builds an
    app whose model replicas still ask Ray for one (model_gpus), and Ray places them on the
    nodes that have it."""
    s = ServiceSettings.from_env(**args)
    settings = s.model_dump()
    if s.decode_max_replicas is None:
        scale = {"num_replicas": s.decode_replicas}
    else:
        scale = {
            "autoscaling_config": {
                "min_replicas": s.decode_replicas,
                "max_replicas": s.decode_max_replicas,
                "target_ongoing_requests": s.decode_workers,
            }
        }
    decoder = DecodeDeployment.options(
        **scale,
        # A request waiting for a worker is queued in the replica, not held by the router:
        # room for one more per worker, so a freed worker starts at once.
        max_ongoing_requests=2 * s.decode_workers,
        ray_actor_options={"num_cpus": s.decode_cpus, "num_gpus": s.decode_gpus},
    ).bind(settings)
    model = ModelDeployment.options(
        num_replicas=s.model_replicas,
        ray_actor_options={
            "num_gpus": s.model_gpus,
            "num_cpus": s.model_cpus,
            # A CPU model shares the cores with decoders: OpenMP threads that spin-wait between
            # ops took twice the model's own CPU time from them (benchmarks/README.md). Read
            # when the process starts, so it is set here, not in the replica.
            "runtime_env": {"env_vars": {"OMP_WAIT_POLICY": "PASSIVE"}},
        },
    ).bind(settings)
    # Ray counts a request against the ingress from the moment it arrives, body still being
    # read: room for every body being received and every admitted request, plus health checks,
    # so the app's own 503s (max_uploads, max_pending_requests) are what clients see. Past
    # that, Ray queues at most a few more and answers 503 itself. Its router also holds a
    # burst of new requests while it asks the replicas how busy they are: a burst of more than
    # INGRESS_HEADROOM at once can meet Ray's 503 (text/plain) before the app's. That one says
    # Retry-After as well. (The queue stays short: a queued request's body is already being
    # buffered by Ray's proxy, with no limit of ours on it yet.)
    ingress = Ingress.options(
        max_ongoing_requests=s.max_uploads
        + s.max_pending_requests
        + s.max_timelines
        + INGRESS_HEADROOM,
        max_queued_requests=INGRESS_HEADROOM,
        backpressure_config={"status_code": 503, "retry_after_s": 1},
        ray_actor_options={"num_cpus": s.ingress_cpus},
    )
    return ingress.bind(decoder, model, settings)
