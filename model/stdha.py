"""Spatial-temporal dual-headed attention (STDHA, paper Eq. 7-9).

A drop-in replacement for the `nn.MultiheadAttention` inside open_clip's ResidualAttentionBlock,
with the same parameter names (`in_proj_weight`, `in_proj_bias`, `out_proj.*`), so a state dict
moves between the two unchanged. Head i of frame t keeps its own query and reads keys/values
from frame t + Δt_i; where that frame is outside the clip it reads its own frame (the authors'
behaviour). All tokens move, the class token included. Same weights, same FLOPs.

Two ways to move K/V, one result (tests hold them equal to each other and to Eq. 7-9 written out):
- Inference (nothing to differentiate): the temporal heads' K/V are shifted in place inside the
  packed q|k|v projection (per run of adjacent heads sharing a Δt, one slice is read out and
  written back one frame range over), and q, k, v go to SDPA as strided views of it, as
  nn.MultiheadAttention's own fast path hands them over. Spatial heads and q are never copied,
  so the merged model costs what the image model costs.
- Training: one gather of all heads' K/V. Autograd through the in-place shift was measured
  slower (its backward re-materialises the overwritten slices), and training copies q anyway.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def source_frames(offsets: list[int], num_frames: int) -> torch.Tensor:
    """(T, H) index: the frame whose K/V head h of frame t reads."""
    t = torch.arange(num_frames)[:, None]
    src = t + torch.tensor(offsets)[None, :]
    return torch.where((src >= 0) & (src < num_frames), src, t)


def shift_runs(offsets: list[int], num_frames: int) -> list[tuple[int, int, int]]:
    """(first head, end head, Δt) per run of adjacent heads that share a Δt and move K/V.

    A Δt of 0, or one whose every target frame is outside the clip (|Δt| >= T), moves nothing.
    """
    runs: list[tuple[int, int, int]] = []
    for head, dt in enumerate(offsets):
        if dt == 0 or abs(dt) >= num_frames:
            continue
        if runs and runs[-1][1] == head and runs[-1][2] == dt:
            runs[-1] = (runs[-1][0], head + 1, dt)
        else:
            runs.append((head, head + 1, dt))
    return runs


class STDHAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, num_frames: int, offsets: list[int]):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by {num_heads} heads")
        if len(offsets) != num_heads:
            raise ValueError(f"{len(offsets)} offsets for {num_heads} heads")
        self.num_heads = num_heads
        self.num_frames = num_frames
        self.offsets = list(offsets)
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)
        # Adapter slots (model/adapters.py); None in a merged model, so it holds nothing extra.
        self.adapter_in: nn.Module | None = None
        self.adapter_q: nn.Module | None = None
        self.adapter_k: nn.Module | None = None
        self.adapter_v: nn.Module | None = None
        self.adapter_out: nn.Module | None = None
        # Non-persistent: derived from the config, never part of a checkpoint.
        self.register_buffer("src", source_frames(offsets, num_frames), persistent=False)
        self.register_buffer(
            "heads", torch.arange(num_heads).repeat(num_frames, 1), persistent=False
        )
        self.temporal = any(offsets)
        self.runs = shift_runs(self.offsets, num_frames)

    @classmethod
    def from_multihead(
        cls, mha: nn.MultiheadAttention, num_frames: int, offsets: list[int]
    ) -> STDHAttention:
        if not isinstance(mha, nn.MultiheadAttention):
            raise TypeError(
                f"STDHA replaces an nn.MultiheadAttention, and this block's attention is a "
                f"{type(mha).__name__}: an open_clip version this package does not support yet "
                f"(pyproject.toml pins open_clip_torch below 4)"
            )
        if not mha.batch_first or not mha._qkv_same_embed_dim or mha.in_proj_bias is None:
            raise ValueError(
                "STDHA needs a batch-first nn.MultiheadAttention with packed biased QKV"
            )
        attn = cls(mha.embed_dim, mha.num_heads, num_frames, offsets)
        attn.load_state_dict(mha.state_dict())
        return attn.to(mha.in_proj_weight.device, mha.in_proj_weight.dtype)

    def project_qkv(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, L, D) -> packed q|k|v (N, L, 3D), through the input adapter(s) when present."""
        w, b = self.in_proj_weight, self.in_proj_bias
        if self.adapter_q is not None:  # six-adapter layout: Q, K and V each have their own
            adapters = (self.adapter_q, self.adapter_k, self.adapter_v)
            parts = zip(adapters, w.chunk(3), b.chunk(3), strict=True)
            return torch.cat([F.linear(a(x), wi, bi) for a, wi, bi in parts], dim=-1)
        if self.adapter_in is not None:
            x = self.adapter_in(x)
        return F.linear(x, w, b)

    def forward(self, query, key=None, value=None, need_weights=False, attn_mask=None):
        """Called as open_clip's block calls nn.MultiheadAttention: (x, x, x, need_weights=False).

        query (B*T, L, D) with the frames of one clip consecutive. Returns (out, None).
        """
        if attn_mask is not None or need_weights:
            raise ValueError("STDHA supports neither attention masks nor returned weights")
        n, length, dim = query.shape
        h, t = self.num_heads, self.num_frames
        if n % t:
            raise ValueError(f"batch of {n} frames is not a whole number of {t}-frame clips")
        b, hd = n // t, dim // h
        qkv = self.project_qkv(query)
        if qkv.requires_grad:
            out = self._attend_gathered(qkv.view(b, t, length, 3, h, hd))
        else:
            out = self._attend_shifted(qkv.view(b, t, length, 3, h, hd))
        out = self.out_proj(out.transpose(1, 2).reshape(n, length, dim))
        if self.adapter_out is not None:
            out = self.adapter_out(out)
        return out, None

    def _attend_shifted(self, qkv: torch.Tensor) -> torch.Tensor:
        """qkv (B, T, L, 3, H, hd), overwritten in place -> (B*T, H, L, hd)."""
        b, t, length, _, h, hd = qkv.shape
        for first, end, dt in self.runs:
            # Frames whose target t + Δt is inside the clip read it; the rest keep their own.
            dst, src = (
                (slice(0, t - dt), slice(dt, t)) if dt > 0 else (slice(-dt, t), slice(0, t + dt))
            )
            # The two slices overlap in memory, so the source is read out before the write.
            qkv[:, dst, :, 1:, first:end] = qkv[:, src, :, 1:, first:end].clone()
        q, k, v = qkv.view(b * t, length, 3, h, hd).permute(2, 0, 3, 1, 4).unbind(0)
        return F.scaled_dot_product_attention(q, k, v)

    def _attend_gathered(self, qkv: torch.Tensor) -> torch.Tensor:
        """qkv (B, T, L, 3, H, hd), left untouched -> (B*T, H, L, hd)."""
        b, t, length, _, h, hd = qkv.shape
        n = b * t
        q = qkv[:, :, :, 0].permute(0, 1, 3, 2, 4).reshape(n, h, length, hd)
        kv = qkv[:, :, :, 1:].permute(3, 0, 1, 4, 2, 5)  # (2, B, T, H, L, hd), a view
        if self.temporal:
            # One gather moves every temporal head's K and V to its source frame.
            kv = kv[:, :, self.src, self.heads]
        kv = kv.reshape(2, n, h, length, hd)
        return F.scaled_dot_product_attention(q, kv[0], kv[1])

    def extra_repr(self) -> str:
        return f"heads={self.num_heads}, frames={self.num_frames}, offsets={self.offsets}"
