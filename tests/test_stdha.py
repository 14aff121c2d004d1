import math

import pytest
import torch
from torch import nn

from model.stdha import STDHAttention, source_frames


def reference_stdha(x, mha: nn.MultiheadAttention, offsets, num_frames):
    """Eq. 7-9 written out: a loop over clips, frames and heads."""
    n, length, dim = x.shape
    heads = mha.num_heads
    hd = dim // heads
    q, k, v = (x @ mha.in_proj_weight.T + mha.in_proj_bias).split(dim, dim=-1)
    out = torch.empty_like(x)
    for b in range(n // num_frames):
        for t in range(num_frames):
            i = b * num_frames + t
            for h, dt in enumerate(offsets):
                s = t + dt if 0 <= t + dt < num_frames else t  # edges read their own frame
                j = b * num_frames + s
                cols = slice(h * hd, (h + 1) * hd)
                att = (q[i, :, cols] @ k[j, :, cols].T / math.sqrt(hd)).softmax(-1)
                out[i, :, cols] = att @ v[j, :, cols]
    return mha.out_proj(out)


@pytest.mark.parametrize("offsets", [[1, -1, 0, 0], [2, -2, 1, -3], [0, 0, 0, 3]])
def test_stdha_matches_loop_reference(offsets):
    torch.manual_seed(0)
    frames = 4
    mha = nn.MultiheadAttention(32, 4, batch_first=True)
    nn.init.normal_(mha.in_proj_bias)
    attn = STDHAttention.from_multihead(mha, frames, offsets)
    x = torch.randn(2 * frames, 5, 32)
    got, _ = attn(x, x, x, need_weights=False)
    torch.testing.assert_close(got, reference_stdha(x, mha, offsets, frames), atol=1e-5, rtol=1e-5)


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
