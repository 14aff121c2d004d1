"""The ZeroI2V video classifier: an open_clip visual tower with STDHA and adapters, plus a head.

Data flow: frames (B, 3, T, H, W) -> per-frame tokens through the image transformer, whose
temporal heads read other frames' K/V -> per-frame pooled feature (class token after ln_post)
-> mean over frames -> dropout -> linear -> logits (B, num_classes).
"""

from __future__ import annotations

import torch
from open_clip.transformer import VisionTransformer
from torch import nn

from model.adapters import adapters_of, add_adapters
from model.backbone import PretrainedWeights, create_visual
from model.config import TrainableSet, ZeroI2VConfig
from model.precision import autocast
from model.stdha import STDHAttention


class ClassificationHead(nn.Module):
    def __init__(self, dim: int, num_classes: int, dropout: float):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(dim, num_classes)
        nn.init.normal_(self.fc.weight, std=0.02)
        nn.init.zeros_(self.fc.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(features))


class ZeroI2V(nn.Module):
    """`backbone` is an open_clip VisionTransformer whose blocks' `attn` are STDHAttention."""

    def __init__(self, cfg: ZeroI2VConfig, backbone: VisionTransformer):
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone
        width = backbone.transformer.width
        self.head = self.make_head(width)
        self.temporal_embedding = (
            nn.Parameter(torch.zeros(cfg.num_frames, width)) if cfg.temporal_embedding else None
        )
        self._grad_masks: list[torch.utils.hooks.RemovableHandle] = []

    def make_head(self, width: int) -> nn.Module:
        return ClassificationHead(width, self.cfg.num_classes, self.cfg.head_dropout)

    @property
    def attention_layers(self) -> list[STDHAttention]:
        return [b.attn for b in self.backbone.transformer.resblocks]

    def forward_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, 3, T, H, W) float frames -> last-block tokens (B * T, tokens, width),
        clip-major."""
        if x.ndim != 5 or x.shape[1] != 3:
            raise ValueError(f"expected frames (B, 3, T, H, W), got {tuple(x.shape)}")
        b, _, t, h, w = x.shape
        if t != self.cfg.num_frames:
            raise ValueError(f"model takes {self.cfg.num_frames} frames per clip, got {t}")
        visual = self.backbone
        # Clip-major: the frames of a clip adjacent. Frames take the weights' dtype (bf16 for
        # inference, model/precision.py); under autocast the weights stay fp32 and so do they.
        frames = x.transpose(1, 2).reshape(b * t, 3, h, w).to(visual.conv1.weight.dtype)
        tokens = visual._embeds(frames)
        if self.temporal_embedding is not None:
            # The weights' dtype: under autocast the fp32 embedding keeps the residual stream
            # fp32, as it always did; with a bf16 backbone it joins in bf16.
            embedding = self.temporal_embedding[:, None].to(visual.conv1.weight.dtype)
            tokens = tokens.view(b, t, -1, tokens.shape[-1]) + embedding
            tokens = tokens.view(b * t, -1, tokens.shape[-1])
        return visual.transformer(tokens)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, 3, T, H, W) float frames -> per-frame pooled features (B, T, width), fp32."""
        pooled, _ = self.backbone._pool(self.forward_tokens(x))
        return pooled.view(x.shape[0], x.shape[2], -1).float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x).mean(dim=1))

    def cast_backbone(self, dtype: torch.dtype) -> ZeroI2V:
        """Inference in `dtype` (model/precision.py): the backbone's weights are cast, the heads
        stay fp32 (they are tiny, and box decoding and scores keep full precision). Inputs are
        cast on entry and features leave as fp32, so callers pass and get fp32 either way."""
        self.backbone.to(dtype)
        return self

    # --- which parameters train (paper Table 2 compares these) ---

    def select_trainable(self, mode: TrainableSet) -> None:
        """Set requires_grad for one of the paper's trainable sets.

        adapters: adapters + head (+ temporal embedding), the ZeroI2V default.
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


def build_model(
    cfg: ZeroI2VConfig, weights: PretrainedWeights | None = None, quick_gelu: bool | None = None
) -> ZeroI2V:
    """A ZeroI2V model for cfg.task: frozen (maybe pre-trained) backbone, trainable set per
    cfg.trainable. "detect" gives the ActionDetector subclass (model/detection.py).
    `weights`: the base backbone already read (it replaces reading cfg.pretrained);
    `quick_gelu`: the activation a saved model recorded (model/backbone.py create_visual)."""
    visual = create_visual(
        cfg.backbone, cfg.image_size, weights or cfg.pretrained, quick_gelu=quick_gelu
    )
    if cfg.task == "detect":
        from model.detection import ActionDetector  # it subclasses ZeroI2V

        model = ActionDetector(cfg, to_video_backbone(visual, cfg))
    else:
        model = ZeroI2V(cfg, to_video_backbone(visual, cfg))
    model.select_trainable(cfg.trainable)
    return model


@torch.inference_mode()
def video_probabilities(
    model: nn.Module, views: torch.Tensor, amp: torch.dtype | None = None
) -> torch.Tensor:
    """Multi-view testing: (B, V, 3, T, S, S) -> (B, num_classes), softmax averaged over V."""
    b, v = views.shape[:2]
    with autocast(views.device, amp):
        logits = model(views.flatten(0, 1))
    return logits.float().softmax(-1).view(b, v, -1).mean(1)
