"""Linear adapters: x + s * U(D(x)), no activation, so they fold into neighbouring linears.

Placement per block (METHOD.md, "full adaptation"): before the attention input projection (one
adapter shared by Q, K, V, or one each with six adapters), after the attention output
projection, before the MLP's c_fc and after its c_proj.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from model.stdha import STDHAttention


class LinearAdapter(nn.Module):
    def __init__(self, dim: int, hidden: int, scale: float = 1.0, dropout: float = 0.0):
        super().__init__()
        self.down = nn.Linear(dim, hidden)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.up = nn.Linear(hidden, dim)
        self.scale = scale
        # U = 0: every adapter starts as the identity, so training starts from the image model.
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.scale * self.up(self.dropout(self.down(x)))

    def affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The adapter as x -> M x + c (eval mode), computed in float64 for an exact fold."""
        wd, bd = self.down.weight.double(), self.down.bias.double()
        wu, bu = self.up.weight.double(), self.up.bias.double()
        eye = torch.eye(wd.shape[1], dtype=torch.float64, device=wd.device)
        return eye + self.scale * wu @ wd, self.scale * (wu @ bd + bu)

    def extra_repr(self) -> str:
        return f"scale={self.scale}"


def add_adapters(
    block: nn.Module, num_adapters: int, ratio: float, scale: float, dropout: float
) -> None:
    """Insert adapters into an open_clip ResidualAttentionBlock whose attn is STDHAttention.

    The frozen weights keep their state-dict keys; adapters appear beside them
    (`attn.adapter_*`, `mlp.adapter_in`, `mlp.adapter_out`).
    """
    if num_adapters not in (4, 6):
        raise ValueError(f"num_adapters must be 0, 4 or 6, not {num_adapters}")
    attn: STDHAttention = block.attn
    dim = attn.out_proj.in_features
    hidden = max(1, round(ratio * dim))

    def new() -> LinearAdapter:
        return LinearAdapter(dim, hidden, scale, dropout).to(attn.in_proj_weight.device)

    if num_adapters == 6:
        attn.adapter_q, attn.adapter_k, attn.adapter_v = new(), new(), new()
    else:
        attn.adapter_in = new()
    attn.adapter_out = new()
    mlp = block.mlp
    block.mlp = nn.Sequential(
        OrderedDict([("adapter_in", new()), *mlp.named_children(), ("adapter_out", new())])
    )


def adapters_of(module: nn.Module) -> list[LinearAdapter]:
    return [m for m in module.modules() if isinstance(m, LinearAdapter)]
