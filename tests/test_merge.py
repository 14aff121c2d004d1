import open_clip
import pytest
import torch

from model import build_model, merge_adapters
from model.adapters import LinearAdapter, adapters_of
from model.merge import fold_after, fold_before
from tests.helpers import TINY, randomize_adapters


@pytest.mark.parametrize("num_adapters", [4, 6])
@pytest.mark.parametrize("scale", [0.5, 1.0])
@pytest.mark.parametrize("offsets", [[1, -1, 2, 0], [[0, 0, 0, 0], [3, -2, 1, -1]]])
def test_merged_equals_unmerged(tiny_cfg, num_adapters, scale, offsets):
    cfg = tiny_cfg.model_copy(
        update={"num_adapters": num_adapters, "adapter_scale": scale, "temporal_offsets": offsets}
    )
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    randomize_adapters(model)
    merged = merge_adapters(model)
    x = torch.randn(3, 3, 4, 32, 32)
    with torch.no_grad():
        logits, merged_logits = model(x), merged(x)
    scale_of_logits = logits.abs().max()
    assert scale_of_logits > 0.1  # a real signal, not a collapsed output
    assert (logits - merged_logits).abs().max() <= 1e-4 * scale_of_logits
    # the adapters really changed the function, so the equality above is not trivial
    plain = build_model(cfg.model_copy(update={"num_adapters": 0})).eval()
    plain.load_state_dict(model.state_dict(), strict=False)
    with torch.no_grad():
        assert (plain(x) - logits).abs().max() > 1e-2 * scale_of_logits


def test_merged_model_is_plain_open_clip_with_stdha(tiny_cfg):
    model = build_model(tiny_cfg)
    randomize_adapters(model)
    merged = merge_adapters(model)
    assert not adapters_of(merged)
    assert not any("adapter" in name for name, _ in merged.named_parameters())
    assert not any(p.requires_grad for p in merged.parameters())
    fresh = open_clip.create_model(TINY, force_image_size=32).visual
    fresh.load_state_dict(merged.backbone.state_dict(), strict=True)  # zero new parameters
    assert adapters_of(model)  # the input is not modified


def test_fold_math_on_a_single_linear():
    torch.manual_seed(0)
    linear = torch.nn.Linear(8, 5)
    a_in, a_out = LinearAdapter(8, 3, scale=0.7), LinearAdapter(5, 2, scale=1.3)
    randomize_adapters(torch.nn.ModuleList([a_in, a_out]))
    x = torch.randn(4, 8)
    with torch.no_grad():
        w, b = fold_before(linear.weight, linear.bias, a_in)
        torch.testing.assert_close(x @ w.T + b, linear(a_in(x)))
        w, b = fold_after(linear.weight, linear.bias, a_out)
        torch.testing.assert_close(x @ w.T + b, a_out(linear(x)))


def test_merge_with_dropout_uses_eval_semantics(tiny_cfg):
    cfg = tiny_cfg.model_copy(update={"adapter_dropout": 0.5})
    model = build_model(cfg)
    randomize_adapters(model)
    model.train()
    merged = merge_adapters(model)
    x = torch.randn(1, 3, 4, 32, 32)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(merged(x), model(x), atol=1e-5, rtol=1e-4)
