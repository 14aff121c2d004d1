"""The model side of the service: a merged model on the best device, run on view batches.

Plain code; the Ray model deployment wraps `run` (classification) and `detect` (detection) in
`@serve.batch`. A classification batch is a list of single views (3, T, S, S) from any number of
requests; each comes back as its softmax probabilities, and the caller averages a request's
views. A detection batch is a list of key-frame clips, each with the boxes a user sent or None
(then the model's localiser finds the actors); each comes back as its ActorDetections.

Precision: the backbone's weights in bf16 on GPUs (model/precision.py), not autocast over fp32.
Compilation (`compile`, off by default): torch.compile of the transformer blocks, with static
shapes. Batches are padded up to a few sizes (1, 2, 4, ... max_batch_size), each compiled (and
with reduce-overhead, captured as a CUDA graph) during warm-up, before the replica reports ready.
"""

from __future__ import annotations

import time

import torch

from model import load_merged, read_info
from model.detection import ActorDetections, detect_actors
from model.flops import model_macs
from model.precision import inference_dtype
from service.settings import MAX_BATCH_SIZE
from service.tasks import TASKS
from video.views import ViewSpec, detection_views, view_list

COMPILE_MODES = ("off", "default", "reduce-overhead")


def batch_buckets(max_batch_size: int) -> list[int]:
    """The batch sizes a compiled model runs: powers of two below max_batch_size, and it.
    Padding a batch to the next one wastes < half a batch; each size costs one compilation."""
    sizes = [1]
    while sizes[-1] * 2 < max_batch_size:
        sizes.append(sizes[-1] * 2)
    return sorted({*sizes, max_batch_size})


class ModelRunner:
    def __init__(
        self,
        model_path: str,
        device: str = "auto",
        precision: str = "auto",
        compile: str = "off",
        max_batch_size: int = MAX_BATCH_SIZE,
        base: str | None = None,
    ):
        if compile not in COMPILE_MODES:
            raise ValueError(f"unknown compile mode {compile!r}: {', '.join(COMPILE_MODES)}")
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.info = read_info(model_path)
        self.dtype = inference_dtype(precision, self.device)
        model = load_merged(model_path, device=self.device, base=base)
        self.model = model.cast_backbone(self.dtype)
        cfg = self.model.cfg
        self.clip_shape = (3, cfg.num_frames, cfg.image_size, cfg.image_size)
        self.macs_per_view = model_macs(self.model, self.clip_shape)
        self.max_batch_size = max_batch_size
        self.compile = compile
        self.buckets = batch_buckets(max_batch_size) if compile != "off" else []
        if self.buckets:
            # One graph per bucket, and dynamo's recompile limit counts the graphs of a compiled
            # function across every model in the process: each runner raises it by what it
            # needs (with fullgraph, going past it is an error, not a fall-back to eager).
            # (The setting is recompile_limit from torch 2.7 on, cache_size_limit before.)
            config = torch._dynamo.config
            name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
            setattr(config, name, getattr(config, name) + len(self.buckets))
            # The blocks are the cost; embedding, pooling and the heads (box decoding has
            # data-dependent shapes) stay eager, so both tasks compile the same way.
            self.model.backbone.transformer.compile(mode=compile, dynamic=False, fullgraph=True)
        self.warm_up_s: dict[int, float] = {}
        self.warmed_up = False

    def _chunks(self, n: int) -> list[tuple[int, int, int]]:
        """(start, end, padded size) of the model calls for n items."""
        out = []
        for start in range(0, n, self.max_batch_size):
            end = min(n, start + self.max_batch_size)
            size = end - start
            padded = next((b for b in self.buckets if b >= size), size)
            out.append((start, end, padded))
        return out

    def _pad(self, batch: torch.Tensor, size: int) -> torch.Tensor:
        if len(batch) == size:
            return batch
        return torch.cat([batch, batch.new_zeros(size - len(batch), *batch.shape[1:])])

    @torch.inference_mode()
    def run(self, views: list[torch.Tensor]) -> list[torch.Tensor]:
        """Per-view softmax probabilities for a batch of views, each (3, T, S, S)."""
        probs = []
        for start, end, padded in self._chunks(len(views)):
            # Stacked frame-major, (B, T, 3, S, S) in memory, and handed over as its (B, 3, T,
            # S, S) view: the model's frames-as-images reshape is then free, not a copy.
            frames = torch.stack([v.transpose(0, 1) for v in views[start:end]])
            batch = self._pad(frames.to(self.device, non_blocking=True), padded)
            logits = self.model(batch.transpose(1, 2))[: end - start]
            probs.append(logits.float().softmax(-1).cpu())
        return list(torch.cat(probs).unbind(0))

    @property
    def task(self) -> str:
        return self.model.cfg.task

    # Localiser boxes down to this score come back; each request keeps those above its own
    # box threshold, so requests with different thresholds share a batch.
    MIN_BOX_SCORE = 0.05
    MAX_ACTORS = 20

    @torch.inference_mode()
    def detect(
        self, items: list[tuple[torch.Tensor, torch.Tensor | None]]
    ) -> list[ActorDetections]:
        """Actors and action probabilities for key-frame clips (3, T, S, S), each with its given
        boxes (K, 4) normalised, or None for the localiser's."""
        found = []
        for start, end, padded in self._chunks(len(items)):
            clips = torch.stack([clip for clip, _ in items[start:end]]).to(self.device)
            # Padding clips get no boxes (not None, which would ask the localiser for actors).
            padding = [torch.zeros(0, 4)] * (padded - (end - start))
            boxes = [b for _, b in items[start:end]] + padding
            found += detect_actors(
                self.model, self._pad(clips, padded), boxes,
                threshold=self.MIN_BOX_SCORE, max_actors=self.MAX_ACTORS,
            )[: end - start]  # fmt: skip
        return found

    def views(self, clips: torch.Tensor, spec: ViewSpec) -> list[torch.Tensor]:
        """A request's uint8 clips (C, T, 3, H, W), short side at the view size, as its
        normalised views (3, T, S, S) on the model's device: only uint8 crosses to the device,
        and cropping and normalising run there."""
        return view_list(clips.to(self.device, non_blocking=True), spec)

    def keyframe_inputs(self, clips: torch.Tensor, spec: ViewSpec) -> list[torch.Tensor]:
        """A request's uint8 key-frame clips (K, T, 3, S, S) as detection inputs (3, T, S, S)
        on the model's device."""
        return list(detection_views(clips.to(self.device, non_blocking=True), spec).unbind(0))

    def probabilities(self, views: torch.Tensor) -> torch.Tensor:
        """One video's views (V, 3, T, S, S) -> (num_classes,), softmax averaged over views."""
        return torch.stack(self.run(list(views.unbind(0)))).mean(0)

    def warm_up(self) -> float:
        """Run every batch size the model will see before serving: the compiled buckets (each
        compiles, and is run three times so CUDA graphs are recorded and replayed), or in eager
        mode the largest and the smallest batch (kernels, allocator). Returns seconds; per
        batch size in `warm_up_s`."""
        start = time.perf_counter()
        task = TASKS[self.task]
        item = task.example_item(self)
        sizes = self.buckets or sorted({self.max_batch_size, 1})
        for size in reversed(sizes):
            began = time.perf_counter()
            for _ in range(3 if self.buckets else 1):
                task.run(self, [item] * size)
            if self.device.type == "cuda":
                torch.cuda.synchronize()
            self.warm_up_s[size] = round(time.perf_counter() - began, 3)
        self.warmed_up = True
        return time.perf_counter() - start

    def card(self) -> dict:
        cfg, info = self.model.cfg, self.info
        attn = self.model.attention_layers
        views = info.preprocess.get("temporal_clips", 1) * info.preprocess.get("spatial_crops", 1)
        return {
            "task": cfg.task,
            "backbone": cfg.backbone,
            "blocks": len(attn),
            "heads": attn[0].num_heads,
            "width": self.model.backbone.transformer.width,
            "temporal_offsets": [a.offsets for a in attn],
            "frames": cfg.num_frames,
            "image_size": cfg.image_size,
            "classes": info.class_names,
            "preprocess": info.preprocess,
            "default_views": views,
            "parameters": self.model.count_parameters(),
            "gflops_per_view": round(self.macs_per_view / 1e9, 3),
            "gflops_per_video": round(self.macs_per_view * views / 1e9, 3),
            "gflops_note": "multiply-adds, as the ZeroI2V paper counts them",
            "device": str(self.device),
            "precision": str(self.dtype).replace("torch.", ""),
            "compile": self.compile,
            "warm_up_s": self.warm_up_s,
        }
