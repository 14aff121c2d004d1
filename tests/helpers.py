"""Shared test helpers (fixtures live in conftest.py)."""

import torch

from model.adapters import adapters_of

TINY = "zeroi2v-ViT-T-8"  # 2 blocks, width 64, 4 heads, patch 8 (model/open_clip_configs)


def randomize_adapters(model, std: float = 0.2, seed: int = 0) -> None:
    """Non-zero adapter weights: zero-initialised U would make merge tests pass trivially."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for adapter in adapters_of(model):
            for p in adapter.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * std)
