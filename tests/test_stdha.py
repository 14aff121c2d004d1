import math
from collections import OrderedDict
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from model.adapters import adapters_of, add_adapters
from model.stdha import STDHAttention, shift_runs, source_frames


def reference_attention(q, k, v, offsets, num_frames):
    """Eq. 7-9 written out on projected q, k, v (N, L, D): a loop over clips, frames, heads."""
    n, length, dim = q.shape
    hd = dim // len(offsets)
    out = torch.empty_like(q)
    for b in range(n // num_frames):
        for t in range(num_frames):
            i = b * num_frames + t
            for h, dt in enumerate(offsets):
                s = t + dt if 0 <= t + dt < num_frames else t  # edges read their own frame
                j = b * num_frames + s
                cols = slice(h * hd, (h + 1) * hd)
                att = (q[i, :, cols] @ k[j, :, cols].T / math.sqrt(hd)).softmax(-1)
                out[i, :, cols] = att @ v[j, :, cols]
    return out


def reference_stdha(x, attn: STDHAttention):
    """The whole layer by Eq. 7-9, adapters included (shared or own Q/K/V input adapters)."""
    w, bias = attn.in_proj_weight.chunk(3), attn.in_proj_bias.chunk(3)
    if attn.adapter_q is not None:
        inputs = [attn.adapter_q(x), attn.adapter_k(x), attn.adapter_v(x)]
    else:
        inputs = [attn.adapter_in(x) if attn.adapter_in is not None else x] * 3
    q, k, v = (xi @ wi.T + bi for xi, wi, bi in zip(inputs, w, bias, strict=True))
    out = attn.out_proj(reference_attention(q, k, v, attn.offsets, attn.num_frames))
    return attn.adapter_out(out) if attn.adapter_out is not None else out


# Every kind of layout: one Δt group; several; |Δt| = T - 1 (most frames read their own);
# Δt beyond T (no frame in range: a spatial head); adjacent and non-adjacent heads that share a
# Δt (one slice copy per run); all spatial.
LAYOUTS = [
    [1, -1, 0, 0],
    [2, -2, 1, -3],
    [0, 0, 0, 3],
    [5, -1, 0, -4],
    [1, 1, -1, -1],
    [1, 0, 1, -2],
    [0, 0, 0, 0],
]


def make_attention(offsets, frames=4, adapters=0, seed=0) -> STDHAttention:
    torch.manual_seed(seed)
    attn = STDHAttention(32, 4, frames, offsets)
    with torch.no_grad():
        attn.in_proj_bias.normal_()
        attn.out_proj.bias.normal_()
    if adapters:
        block = SimpleNamespace(attn=attn, mlp=nn.Sequential(OrderedDict(c_fc=nn.Linear(32, 8))))
        add_adapters(block, adapters, ratio=0.25, scale=0.5, dropout=0.0)
        with torch.no_grad():
            for adapter in adapters_of(attn):
                adapter.up.weight.normal_(std=0.2)
    return attn


@pytest.mark.parametrize("adapters", [0, 4, 6])
@pytest.mark.parametrize("offsets", LAYOUTS)
def test_both_paths_match_eq_7_9_forward_and_gradients(offsets, adapters):
    attn = make_attention(offsets, adapters=adapters)
    x = torch.randn(2 * 4, 5, 32)
    expected = reference_stdha(x, attn)
    with torch.inference_mode():  # the in-place shift
        shifted = attn(x)[0]
    gathered = attn(x.requires_grad_(True))[0]  # autograd records: the gather
    torch.testing.assert_close(shifted, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(gathered, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(shifted, gathered, atol=1e-6, rtol=1e-6)

    weights = torch.randn_like(expected)
    params = [p for p in attn.parameters()]
    grads = torch.autograd.grad((gathered * weights).sum(), [x, *params])
    x_ref = x.detach().requires_grad_(True)
    ref_grads = torch.autograd.grad(
        (reference_stdha(x_ref, attn) * weights).sum(), [x_ref, *params]
    )
    for got, want in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_inference_shifts_in_place_and_training_gathers(monkeypatch):
    """Which path runs: the copy-free shift whenever nothing is differentiated (inference,
    frozen weights under grad mode, e.g. a linear probe's backbone); the gather when autograd
    records through the projection."""
    attn = make_attention([1, -1, 0, 0])
    x = torch.randn(4, 5, 32)
    ran = []
    for name in ("_attend_shifted", "_attend_gathered"):
        original = getattr(STDHAttention, name)

        def spy(self, qkv, name=name, original=original):
            ran.append(name)
            return original(self, qkv)

        monkeypatch.setattr(STDHAttention, name, spy)
    with torch.inference_mode():
        attn(x)
    with torch.no_grad():
        attn(x)
    attn.requires_grad_(False)
    attn(x)  # grad mode on, nothing requires grad
    assert ran == ["_attend_shifted"] * 3
    attn(x.requires_grad_(True))
    attn.requires_grad_(True)
    attn(x.detach())
    assert ran[3:] == ["_attend_gathered"] * 2


def test_single_frame_clips_are_spatial():
    attn = make_attention([1, -1, 0, 0], frames=1)
    x = torch.randn(3, 5, 32)
    with torch.inference_mode():
        torch.testing.assert_close(attn(x)[0], reference_stdha(x, attn), atol=1e-5, rtol=1e-5)


def test_shift_runs_group_adjacent_heads_and_skip_what_cannot_move():
    assert shift_runs([1, 1, -1, 0, 1], 8) == [(0, 2, 1), (2, 3, -1), (4, 5, 1)]
    assert shift_runs([0, 8, -9, 7], 8) == [(3, 4, 7)]


def test_zero_offsets_equal_multihead_attention():
    torch.manual_seed(1)
    mha = nn.MultiheadAttention(32, 4, batch_first=True).eval()
    attn = STDHAttention.from_multihead(mha, 4, [0, 0, 0, 0]).eval()
    x = torch.randn(8, 5, 32)
    with torch.inference_mode():  # nn.MultiheadAttention's fused fast path, the library's own
        expected = mha(x, x, x, need_weights=False)[0]
        got = attn(x, x, x)[0]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_source_frames_edges_read_own_frame():
    src = source_frames([1, -1, 0], 3)
    assert src.tolist() == [[1, 0, 0], [2, 0, 1], [2, 1, 2]]


def test_state_dict_keys_match_multihead_attention():
    mha = nn.MultiheadAttention(32, 4, batch_first=True)
    attn = STDHAttention.from_multihead(mha, 2, [1, 0, 0, 0])
    assert set(attn.state_dict()) == set(mha.state_dict())


def test_an_attention_other_than_multihead_is_refused_by_name():
    """open_clip's own attention module (a later major version) is not silently half-read."""

    class Attention(nn.Module):
        pass

    with pytest.raises(TypeError, match="a Attention: an open_clip version"):
        STDHAttention.from_multihead(Attention(), 2, [1, 0, 0, 0])


def test_rejects_partial_clips_and_masks():
    attn = STDHAttention(32, 4, 4, [1, 0, 0, 0])
    with pytest.raises(ValueError, match="4-frame clips"):
        attn(torch.randn(6, 5, 32))
    with pytest.raises(ValueError, match="masks"):
        attn(torch.randn(4, 5, 32), attn_mask=torch.zeros(5, 5))


def test_gradients_flow_through_relocated_heads():
    attn = STDHAttention(32, 4, 2, [1, 0, 0, 0])
    x = torch.randn(2, 3, 32, requires_grad=True)
    attn(x)[0][0].sum().backward()  # frame 0's head 0 reads frame 1
    assert x.grad[1].abs().sum() > 0
