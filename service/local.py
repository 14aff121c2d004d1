"""Decoding and the model in this process: what the decode and model deployments do for one
request, without Ray and without batching across requests. `zeroi2v predict` answers with it,
and tests drive the HTTP app over it."""

from __future__ import annotations

import time

from service.decoding import Decoder
from service.model_runner import ModelRunner
from service.settings import ServiceSettings
from service.tasks import TASKS, Inference
from video.views import ViewSpec


class LocalBackend:
    def __init__(self, runner: ModelRunner, settings: ServiceSettings, decode_threads: int = 1):
        self.runner = runner
        self.task = TASKS[runner.task]
        self.decoder = Decoder(settings, threads=decode_threads)

    async def predict(self, data: bytes, spec: ViewSpec, params) -> Inference:
        method, args = self.task.decode_call(spec, params)
        decoded = await getattr(self.decoder, method)(data, *args)
        start = time.perf_counter()
        items = self.task.items(self.runner, decoded, spec, params)
        results = self.task.run(self.runner, items)
        ms = (time.perf_counter() - start) * 1e3
        batch = min(len(items), self.runner.max_batch_size)
        return Inference(self.task.combine(results), ms, batch, decoded.stats())

    async def ready(self) -> bool:
        return self.runner.warmed_up

    async def model_card(self) -> dict:
        return self.runner.card()
