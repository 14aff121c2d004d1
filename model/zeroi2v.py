"""The ZeroI2V video model: an open_clip visual tower with STDHA and adapters, plus a task head.

Data flow: frames (B, 3, T, H, W) -> per-frame tokens through the image transformer, whose
temporal heads read other frames' K/V -> `VideoTokens` -> the task's head, which reads them its
own way: classification pools each frame (class token after ln_post) and averages over frames
(model/classification.py); detection averages the patch tokens over frames into a key-frame
feature map (model/detection.py). The model composes the two; model/tasks.py picks the head.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from open_clip.transformer import VisionTransformer
from torch import nn

from model.adapters import adapters_of, add_adapters
from model.config import TrainableSet, ZeroI2VConfig
from model.stdha import STDHAttention


@dataclass(frozen=True)
class VideoTokens:
    """The last block's tokens of B clips of T frames, (B * T, 1 + h * w, width) clip-major,
    and the two ways heads read them."""

    tokens: torch.Tensor
    clips: int
    frames: int
    grid: tuple[int, int]  # patches per frame, (h, w)
    backbone: VisionTransformer  # for its ln_post and pooling (not a copy)

    def frame_features(self) -> torch.Tensor:
        """Per-frame pooled features (B, T, width), fp32: the image model's own pooling."""
        pooled, _ = self.backbone._pool(self.tokens)
        return pooled.view(self.clips, self.frames, -1).float()

    def key_frame_map(self) -> torch.Tensor:
        """Patch tokens after ln_post averaged over the frames: (B, width, h, w)."""
        h, w = self.grid
        patches = self.backbone.ln_post(self.tokens)[:, -h * w :]  # the class token comes first
        return patches.reshape(self.clips, self.frames, h, w, -1).mean(1).permute(0, 3, 1, 2)


class ZeroI2V(nn.Module):
    """`backbone` is an open_clip VisionTransformer whose blocks' `attn` are STDHAttention;
    `head` reads its VideoTokens: forward(x, *head_inputs) = head(encode(x), *head_inputs)."""

    def __init__(self, cfg: ZeroI2VConfig, backbone: VisionTransformer, head: nn.Module):
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone
        self.head = head
        width = backbone.transformer.width
        self.temporal_embedding = (
            nn.Parameter(torch.zeros(cfg.num_frames, width)) if cfg.temporal_embedding else None
        )
        self._grad_masks: list[torch.utils.hooks.RemovableHandle] = []

    @property
    def attention_layers(self) -> list[STDHAttention]:
        return [b.attn for b in self.backbone.transformer.resblocks]

    def encode(self, x: torch.Tensor) -> VideoTokens:
        """x (B, 3, T, H, W) float frames -> the last block's VideoTokens."""
        if x.ndim != 5 or x.shape[1] != 3:
            raise ValueError(f"expected frames (B, 3, T, H, W), got {tuple(x.shape)}")
        b, _, t, h, w = x.shape
        if t != self.cfg.num_frames:
            raise ValueError(f"model takes {self.cfg.num_frames} frames per clip, got {t}")
        visual = self.backbone
        # Clip-major: the frames of a clip adjacent. Frames take the weights' dtype (bf16 for
        # inference, model/precision.py); under autocast the weights stay fp32 and so do they.
        frames = x.transpose(1, 2).reshape(b * t, 3, h, w).to(visual.conv1.weight.dtype)
        if self.temporal_embedding is None:
            tokens = visual._embeds(frames)
        elif self.cfg.temporal_embedding_place == "after_ln_pre":
            tokens = self._add_temporal_embedding(visual._embeds(frames), b, t)
        else:  # the authors' place: every token, before ln_pre
            tokens = _embeds_before_ln_pre(visual, frames)
            tokens = visual.ln_pre(self._add_temporal_embedding(tokens, b, t))
        patch = visual.patch_size
        grid = (h // patch[0], w // patch[1])
        return VideoTokens(visual.transformer(tokens), b, t, grid, visual)

    def _add_temporal_embedding(self, tokens: torch.Tensor, b: int, t: int) -> torch.Tensor:
        # The weights' dtype: under autocast the fp32 embedding keeps the residual stream fp32,
        # as it always did; with a bf16 backbone it joins in bf16.
        embedding = self.temporal_embedding[:, None].to(self.backbone.conv1.weight.dtype)
        tokens = tokens.view(b, t, -1, tokens.shape[-1]) + embedding
        return tokens.view(b * t, -1, tokens.shape[-1])

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, 3, T, H, W) float frames -> per-frame pooled features (B, T, width), fp32."""
        return self.encode(x).frame_features()

    def forward(self, x: torch.Tensor, *head_inputs):
        """The head's output for clips x (B, 3, T, H, W) and whatever else the head takes (a
        detection head: each clip's actor boxes)."""
        return self.head(self.encode(x), *head_inputs)

    def cast_backbone(self, dtype: torch.dtype) -> ZeroI2V:
        """Inference in `dtype` (model/precision.py): the backbone's weights are cast, the heads
        stay fp32 (they are tiny, and box decoding and scores keep full precision). Inputs are
        cast on entry and features leave as fp32, so callers pass and get fp32 either way."""
        self.backbone.to(dtype)
        return self

    # --- which parameters train (paper Table 2 compares these) ---

    def select_trainable(self, mode: TrainableSet) -> None:
        """Set requires_grad for one of the paper's trainable sets.

        adapters: adapters + head (+ temporal embedding, + ln_post with cfg.train_ln_post),
        the ZeroI2V default.
        full: everything. linear_probe: head only.
        temporal_heads: the Q/K/V rows and output-projection columns of the temporal heads, plus
        the head. Partial tensors train through gradient masks; give those tensors weight decay
        0, since decoupled decay would otherwise shrink their frozen parts.
        """
        for handle in self._grad_masks:
            handle.remove()
        self._grad_masks = []
        for p in self.parameters():
            p.requires_grad = mode == "full"
        for p in self.head.parameters():
            p.requires_grad = True
        if self.temporal_embedding is not None and mode != "linear_probe":
            self.temporal_embedding.requires_grad = True
        if mode == "adapters":
            for adapter in adapters_of(self):
                adapter.requires_grad_(True)
            if self.cfg.train_ln_post:
                self.backbone.ln_post.requires_grad_(True)
        elif mode == "temporal_heads":
            for attn in self.attention_layers:
                if not attn.temporal:
                    continue
                rows, cols = _temporal_head_masks(attn)
                for param, mask in (
                    (attn.in_proj_weight, rows[:, None]),
                    (attn.in_proj_bias, rows),
                    (attn.out_proj.weight, cols[None, :]),
                ):
                    param.requires_grad = True
                    self._grad_masks.append(param.register_hook(_masker(mask)))
        elif mode not in ("full", "linear_probe"):
            raise ValueError(f"unknown trainable set {mode!r}")

    def masked_parameters(self) -> list[nn.Parameter]:
        """Parameters that train only in part (temporal_heads mode): no weight decay for these."""
        if not self._grad_masks:
            return []
        out = []
        for attn in self.attention_layers:
            if attn.temporal:
                out += [attn.in_proj_weight, attn.in_proj_bias, attn.out_proj.weight]
        return out

    def count_parameters(self, trainable_only: bool = False) -> int:
        """Parameter count; with trainable_only, partial tensors count only their trainable part."""
        if not trainable_only:
            return sum(p.numel() for p in self.parameters())
        total = sum(p.numel() for p in self.parameters() if p.requires_grad)
        for attn in self.attention_layers if self._grad_masks else []:
            if attn.temporal:
                rows, cols = _temporal_head_masks(attn)
                dim = attn.out_proj.in_features
                total -= int((~rows).sum()) * (dim + 1) + int((~cols).sum()) * dim
        return total


def _temporal_head_masks(attn: STDHAttention) -> tuple[torch.Tensor, torch.Tensor]:
    """Boolean masks over in_proj rows (3D) and out_proj columns (D) of the temporal heads."""
    dim = attn.out_proj.in_features
    head_dim = dim // attn.num_heads
    cols = torch.tensor(attn.offsets, device=attn.in_proj_weight.device).ne(0)
    cols = cols.repeat_interleave(head_dim)
    return cols.repeat(3), cols


def _masker(mask: torch.Tensor):
    def hook(grad: torch.Tensor) -> torch.Tensor:
        return grad * mask.to(grad.dtype)

    return hook


def _embeds_before_ln_pre(visual: VisionTransformer, frames: torch.Tensor) -> torch.Tensor:
    """open_clip's VisionTransformer._embeds without its last step, ln_pre: patch tokens, class
    token and position embeddings (a test holds ln_pre of this equal to _embeds)."""
    x = visual.conv1(frames)
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
    cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], dim=1) + visual.positional_embedding.to(x.dtype)
    return visual.patch_dropout(x)


def to_video_backbone(visual: VisionTransformer, cfg: ZeroI2VConfig) -> VisionTransformer:
    """Swap each block's nn.MultiheadAttention for STDHA (same weights) and add adapters."""
    blocks = visual.transformer.resblocks
    heads = blocks[0].attn.num_heads
    for block, offsets in zip(blocks, cfg.offsets_per_block(len(blocks), heads), strict=True):
        block.attn = STDHAttention.from_multihead(block.attn, cfg.num_frames, offsets)
        if cfg.num_adapters:
            add_adapters(
                block, cfg.num_adapters, cfg.adapter_ratio, cfg.adapter_scale, cfg.adapter_dropout
            )
    return visual
