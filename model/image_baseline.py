"""The image model ZeroI2V is measured against: open_clip per frame, mean over frames, same head.

It is the plain open_clip visual tower (its own nn.MultiheadAttention, fused fast path in
inference) with the weights of a merged ZeroI2V model and its classifier: the "zero extra cost"
claim is that the two cost exactly the same.
"""

from __future__ import annotations

import open_clip
import torch
from torch import nn

from model.zeroi2v import ZeroI2V


class PlainImageModel(nn.Module):
    def __init__(self, zeroi2v: ZeroI2V):
        super().__init__()
        cfg = zeroi2v.cfg
        visual = open_clip.create_model(cfg.backbone, force_image_size=cfg.image_size).visual
        visual.load_state_dict(zeroi2v.backbone.state_dict(), strict=True)
        visual.proj = None  # classify the width-d class token, as ZeroI2V's head does
        self.visual = visual.to(zeroi2v.head.fc.weight.device)
        self.head = zeroi2v.head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, t, h, w = x.shape
        frames = x.transpose(1, 2).reshape(b * t, 3, h, w).to(self.visual.conv1.weight.dtype)
        return self.head.logits(self.visual(frames).view(b, t, -1).float().mean(1))

    def cast_backbone(self, dtype: torch.dtype) -> PlainImageModel:
        """As ZeroI2V.cast_backbone: the tower in `dtype`, the head fp32."""
        self.visual.to(dtype)
        return self
