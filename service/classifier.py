"""Classify a video with a merged checkpoint: video -> frames -> views -> model -> labels.

Plain code, no web framework: `zeroi2v predict` and the service both use it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

from model import load_merged, read_info
from model.precision import autocast_dtype
from model.zeroi2v import video_probabilities
from video.decode import DecodeLimits, VideoInfo
from video.views import ViewSpec, load_views


@dataclass(frozen=True)
class Label:
    name: str
    index: int
    score: float


class VideoClassifier:
    def __init__(self, model_path: str | Path, device: str = "auto", precision: str = "auto"):
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.info = read_info(model_path)
        self.model = load_merged(model_path, device=self.device)
        self.class_names = self.info.class_names
        self.spec = ViewSpec.from_preprocess(self.info.preprocess)
        self.amp = autocast_dtype(precision, self.device)

    def view_spec(self, temporal_clips: int | None = None, spatial_crops: int | None = None):
        spec = self.spec
        if temporal_clips is not None:
            sampling = dataclasses.replace(spec.sampling, num_clips=temporal_clips)
            spec = dataclasses.replace(spec, sampling=sampling)
        if spatial_crops is not None:
            spec = dataclasses.replace(spec, spatial_crops=spatial_crops)
        return spec

    def views(
        self, source, spec: ViewSpec | None = None, limits: DecodeLimits | None = None
    ) -> tuple[torch.Tensor, VideoInfo]:
        """Decoded, normalised views (V, 3, T, S, S) of one video."""
        return load_views(source, spec or self.spec, limits or DecodeLimits())

    def probabilities(self, views: torch.Tensor) -> torch.Tensor:
        """(V, 3, T, S, S) views of one video -> (num_classes,) softmax averaged over views."""
        return video_probabilities(self.model, views[None].to(self.device), self.amp)[0].cpu()

    def top_k(self, probs: torch.Tensor, k: int = 5) -> list[Label]:
        scores, indices = probs.topk(min(k, len(self.class_names)))
        return [
            Label(self.class_names[i], i, float(s))
            for s, i in zip(scores.tolist(), indices.tolist(), strict=True)
        ]

    def classify(self, source, k: int = 5, spec: ViewSpec | None = None) -> list[Label]:
        views, _ = self.views(source, spec)
        return self.top_k(self.probabilities(views), k)
