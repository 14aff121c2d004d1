"""Decoding and the model in this process: what the decode and model deployments do for one
request, without Ray and without batching across requests. `zeroi2v predict` answers with it,
and tests drive the HTTP app over it."""

from __future__ import annotations

import asyncio
import time

import torch

from service.decoding import Decoder
from service.model_runner import ModelRunner
from service.settings import ServiceSettings
from service.tasks import TASKS, Inference
from service.timeline import WindowScores, window_outputs
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

    async def windows(self, clips: torch.Tensor, spec: ViewSpec) -> WindowScores:
        """A timeline's batch of windows, run in a thread: the loop goes on handing decoded
        windows over meanwhile."""

        def run() -> WindowScores:
            start = time.perf_counter()
            groups = self.task.window_items(self.runner, clips, spec)
            items = [item for group in groups for item in group]
            results = self.task.run(self.runner, items)
            ms = (time.perf_counter() - start) * 1e3
            batch = min(len(items), self.runner.max_batch_size)
            return WindowScores(window_outputs(self.task, groups, results), ms, batch)

        return await asyncio.to_thread(run)

    async def ready(self) -> bool:
        return self.runner.warmed_up

    async def model_card(self) -> dict:
        return self.runner.card()
