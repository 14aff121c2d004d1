"""Classification: one label per clip. The head pools each frame as the image model does (class
token after ln_post), averages the frames and applies dropout and a linear layer; multi-view
testing averages the softmax of a video's views."""

from __future__ import annotations

import torch
from torch import nn

from model.config import ZeroI2VConfig
from model.precision import autocast
from model.zeroi2v import VideoTokens


class ClassificationHead(nn.Module):
    def __init__(self, dim: int, num_classes: int, dropout: float):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(dim, num_classes)
        nn.init.normal_(self.fc.weight, std=0.02)
        nn.init.zeros_(self.fc.bias)

    @classmethod
    def from_config(cls, cfg: ZeroI2VConfig, width: int) -> ClassificationHead:
        return cls(width, cfg.num_classes, cfg.head_dropout)

    def forward(self, tokens: VideoTokens) -> torch.Tensor:
        """Logits (B, num_classes) of B clips."""
        return self.logits(tokens.frame_features().mean(dim=1))

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """Logits of clip features (B, width): the same head on any model's pooled features
        (model/image_baseline.py)."""
        return self.fc(self.dropout(features))

    def example_inputs(self, clips: int, device: torch.device) -> tuple:
        return ()


@torch.inference_mode()
def video_probabilities(
    model: nn.Module, views: torch.Tensor, amp: torch.dtype | None = None
) -> torch.Tensor:
    """Multi-view testing: (B, V, 3, T, S, S) -> (B, num_classes), softmax averaged over V."""
    b, v = views.shape[:2]
    with autocast(views.device, amp):
        logits = model(views.flatten(0, 1))
    return logits.float().softmax(-1).view(b, v, -1).mean(1)
