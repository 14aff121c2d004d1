"""Multiply-add counting that sees every matmul, as the paper counts GFLOPs.

ViT-B/16 at 224² is 17.6 G multiply-adds per image.

torch.utils.flop_counter misses two ops this project runs: CPU scaled-dot-product attention and
nn.MultiheadAttention's fused inference fast path (used by the plain open_clip model). Both are
added here; everything else is the library's own table. Norms, softmax and GELU are not counted
(the paper's convention).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

aten = torch.ops.aten


def _sdpa_cpu(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query, key, value)


def _native_mha(query, key, value, embed_dim, num_heads, *args, out_shape=None, **kwargs) -> int:
    b, length, dim = query
    source = key[1]
    qkv = 2 * b * length * dim * 3 * dim
    attention = 2 * 2 * b * length * source * dim
    out = 2 * b * length * dim * dim
    return qkv + attention + out


EXTRA_FORMULAS = {
    aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu,
    aten._native_multi_head_attention: _native_mha,
}


def count_macs(fn: Callable[[], object]) -> int:
    """Multiply-accumulates of everything `fn` runs (FLOPs / 2)."""
    counter = FlopCounterMode(display=False, custom_mapping=EXTRA_FORMULAS)
    with counter:
        fn()
    return counter.get_total_flops() // 2


@torch.inference_mode()
def model_macs(model: torch.nn.Module, clip_shape: tuple[int, ...]) -> int:
    """Multiply-adds of one forward on a single zero clip of `clip_shape` (3, T, H, W), with
    whatever else the model's head takes (its `example_inputs`: a detection head's one actor
    box, each further box adding only the small action head)."""
    param = next(model.parameters())
    x = torch.zeros(1, *clip_shape, device=param.device, dtype=param.dtype)
    extra = model.head.example_inputs(1, param.device)
    return count_macs(lambda: model(x, *extra))
