"""The model side of the service: a merged checkpoint on the best device, run on view batches.

Plain code; the Ray model deployment wraps `run` (classification) and `detect` (detection) in
`@serve.batch`. A classification batch is a list of single views (3, T, S, S) from any number of
requests; each comes back as its softmax probabilities, and the caller averages a request's
views. A detection batch is a list of key-frame clips, each with the boxes a user sent or None
(then the model's localiser finds the actors); each comes back as its ActorDetections.
"""

from __future__ import annotations

import time

import torch

from model import load_merged, read_info
from model.detection import ActorDetections
from model.flops import model_macs
from model.precision import autocast, autocast_dtype
from model.zeroi2v import video_probabilities


class ModelRunner:
    def __init__(self, model_path: str, device: str = "auto", precision: str = "auto"):
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.info = read_info(model_path)
        self.model = load_merged(model_path, device=self.device)
        self.amp = autocast_dtype(precision, self.device)
        cfg = self.model.cfg
        self.clip_shape = (3, cfg.num_frames, cfg.image_size, cfg.image_size)
        self.macs_per_view = model_macs(self.model, self.clip_shape)
        self.warmed_up = False

    @torch.inference_mode()
    def run(self, views: list[torch.Tensor]) -> list[torch.Tensor]:
        """Per-view softmax probabilities for a batch of views, each (3, T, S, S)."""
        batch = torch.stack(views).to(self.device, non_blocking=True)
        with autocast(self.device, self.amp):
            logits = self.model(batch)
        probs = logits.float().softmax(-1).cpu()
        return list(probs.unbind(0))

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
        batch = torch.stack([clip for clip, _ in items]).to(self.device, non_blocking=True)
        with autocast(self.device, self.amp):
            return self.model.detect(
                batch, [boxes for _, boxes in items], threshold=self.MIN_BOX_SCORE,
                max_actors=self.MAX_ACTORS,
            )  # fmt: skip

    def probabilities(self, views: torch.Tensor) -> torch.Tensor:
        """One video's views (V, 3, T, S, S) -> (num_classes,), softmax averaged over views."""
        return video_probabilities(self.model, views[None].to(self.device), self.amp)[0].cpu()

    def warm_up(self, max_batch_size: int) -> float:
        """Run the largest and the smallest batch once (kernels, allocator); returns seconds."""
        start = time.perf_counter()
        view = torch.zeros(self.clip_shape)
        for size in sorted({max_batch_size, 1}, reverse=True):
            if self.task == "detect":
                self.detect([(view, None)] * size)
            else:
                self.run([view] * size)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
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
            "precision": str(self.amp).replace("torch.", "") if self.amp else "float32",
        }
