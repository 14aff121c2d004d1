"""Structural re-parameterisation: fold every linear adapter into the frozen linear beside it.

For a frozen linear y = W x + b and an adapter A(x) = M x + c:
  adapter before the linear: W' = W M, b' = W c + b
  adapter after the linear:  W' = M W, b' = M b + c
The result is the open_clip visual tower with new weight values, STDHA attention and nothing else.
"""

from __future__ import annotations

import copy
from collections import OrderedDict

import torch
from torch import nn

from model.adapters import LinearAdapter, adapters_of
from model.zeroi2v import ZeroI2V


def fold_before(weight: torch.Tensor, bias: torch.Tensor, adapter: LinearAdapter):
    m, c = adapter.affine()
    w64 = weight.double()
    return (w64 @ m).to(weight.dtype), (w64 @ c + bias.double()).to(bias.dtype)


def fold_after(weight: torch.Tensor, bias: torch.Tensor, adapter: LinearAdapter):
    m, c = adapter.affine()
    return (m @ weight.double()).to(weight.dtype), (m @ bias.double() + c).to(bias.dtype)


@torch.no_grad()
def merge_adapters(model: ZeroI2V) -> ZeroI2V:
    """A new model with every adapter folded away; the input model is left untouched."""
    merged = copy.deepcopy(model).eval()
    merged.select_trainable("linear_probe")  # drops gradient-mask hooks of the copy
    for block in merged.backbone.transformer.resblocks:
        attn = block.attn
        if attn.adapter_q is not None:
            parts = [
                fold_before(w, b, a)
                for w, b, a in zip(
                    attn.in_proj_weight.chunk(3),
                    attn.in_proj_bias.chunk(3),
                    (attn.adapter_q, attn.adapter_k, attn.adapter_v),
                    strict=True,
                )
            ]
            attn.in_proj_weight.copy_(torch.cat([w for w, _ in parts]))
            attn.in_proj_bias.copy_(torch.cat([b for _, b in parts]))
        elif attn.adapter_in is not None:
            _assign(
                attn.in_proj_weight,
                attn.in_proj_bias,
                fold_before(attn.in_proj_weight, attn.in_proj_bias, attn.adapter_in),
            )
        if attn.adapter_out is not None:
            out = attn.out_proj
            _assign(out.weight, out.bias, fold_after(out.weight, out.bias, attn.adapter_out))
        attn.adapter_in = attn.adapter_q = attn.adapter_k = attn.adapter_v = None
        attn.adapter_out = None

        layers = OrderedDict(block.mlp.named_children())
        if "adapter_in" in layers:
            fc = layers["c_fc"]
            _assign(fc.weight, fc.bias, fold_before(fc.weight, fc.bias, layers.pop("adapter_in")))
        if "adapter_out" in layers:
            proj = layers["c_proj"]
            adapter = layers.pop("adapter_out")
            _assign(proj.weight, proj.bias, fold_after(proj.weight, proj.bias, adapter))
        block.mlp = nn.Sequential(layers)

    assert not adapters_of(merged), "an adapter was left unmerged"
    merged.cfg = merged.cfg.model_copy(update={"num_adapters": 0})
    for p in merged.parameters():
        p.requires_grad = False
    return merged


def _assign(weight: torch.Tensor, bias: torch.Tensor, new: tuple[torch.Tensor, torch.Tensor]):
    weight.copy_(new[0])
    bias.copy_(new[1])
