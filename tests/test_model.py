import copy

import open_clip
import pytest
import torch

from model import ZeroI2VConfig, build_model, merge_adapters, paper_preset
from model.adapters import LinearAdapter, adapters_of
from model.flops import count_macs, model_macs
from model.image_baseline import PlainImageModel
from tests.helpers import TINY, randomize_adapters


def test_zero_offsets_no_adapters_equal_open_clip_per_frame(tiny_cfg):
    cfg = tiny_cfg.model_copy(update={"temporal_offsets": None, "num_adapters": 0})
    model = build_model(cfg).eval()
    reference = open_clip.create_model(TINY, force_image_size=32).visual.eval()
    reference.load_state_dict(model.backbone.state_dict(), strict=True)
    x = torch.randn(2, 3, 4, 32, 32)
    with torch.inference_mode():
        features = model.forward_features(x)  # (B, T, width)
        expected = reference(x.transpose(1, 2).reshape(8, 3, 32, 32))  # pooled @ proj
    got = features.reshape(8, -1) @ model.backbone.proj
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_forward_shapes_and_frame_count_check(tiny_cfg):
    model = build_model(tiny_cfg)
    assert model(torch.randn(3, 3, 4, 32, 32)).shape == (3, 7)
    with pytest.raises(ValueError, match="4 frames"):
        model(torch.randn(1, 3, 5, 32, 32))
    with pytest.raises(ValueError, match=r"\(B, 3, T, H, W\)"):
        model(torch.randn(4, 3, 32, 32))


def test_temporal_heads_change_output_only_when_frames_differ(tiny_cfg):
    model = build_model(tiny_cfg).eval()
    image_model = build_model(tiny_cfg.model_copy(update={"temporal_offsets": None})).eval()
    image_model.load_state_dict(model.state_dict())
    still = torch.randn(1, 3, 1, 32, 32).expand(2, 3, 4, 32, 32)  # identical frames
    moving = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(still), image_model(still), atol=1e-5, rtol=1e-5)
        assert (model(moving) - image_model(moving)).abs().max() > 1e-3


def test_backbone_frozen_adapters_and_head_train(tiny_cfg):
    model = build_model(tiny_cfg)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("adapter" in n or n.startswith("head.") for n in trainable)
    assert len(adapters_of(model)) == 4 * 2  # 4 per block, 2 blocks


def test_adapter_placement_four_and_six(tiny_cfg):
    four = build_model(tiny_cfg).backbone.transformer.resblocks[0]
    assert isinstance(four.attn.adapter_in, LinearAdapter) and four.attn.adapter_q is None
    assert list(dict(four.mlp.named_children())) == [
        "adapter_in",
        "c_fc",
        "gelu",
        "c_proj",
        "adapter_out",
    ]
    six = build_model(tiny_cfg.model_copy(update={"num_adapters": 6})).backbone
    attn = six.transformer.resblocks[0].attn
    assert attn.adapter_in is None
    assert all(
        isinstance(a, LinearAdapter) for a in (attn.adapter_q, attn.adapter_k, attn.adapter_v)
    )
    assert len(adapters_of(six)) == 6 * 2


def test_adapters_start_as_identity(tiny_cfg):
    model = build_model(tiny_cfg).eval()
    plain = build_model(tiny_cfg.model_copy(update={"num_adapters": 0})).eval()
    plain.load_state_dict(model.state_dict(), strict=False)
    x = torch.randn(1, 3, 4, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), plain(x))


def test_trainable_sets(tiny_cfg):
    model = build_model(tiny_cfg)
    head = 64 * 7 + 7
    adapter = 2 * 64 * 16 + 16 + 64
    assert model.count_parameters(trainable_only=True) == 8 * adapter + head
    model.select_trainable("linear_probe")
    assert model.count_parameters(trainable_only=True) == head
    model.select_trainable("full")
    assert model.count_parameters(trainable_only=True) == model.count_parameters()
    model.select_trainable("temporal_heads")
    temporal = 3  # offsets [1, -1, 2, 0]: three temporal heads of 16 channels, in 2 blocks
    per_block = temporal * 16 * (3 * 64 + 3) + 64 * temporal * 16
    assert model.count_parameters(trainable_only=True) == 2 * per_block + head


def test_temporal_heads_mode_masks_spatial_gradients(tiny_cfg):
    model = build_model(tiny_cfg.model_copy(update={"trainable": "temporal_heads"}))
    model(torch.randn(1, 3, 4, 32, 32)).sum().backward()
    attn = model.attention_layers[0]
    grad = attn.in_proj_weight.grad.view(3, 4, 16, 64)  # (q|k|v, head, channel, in)
    assert grad[:, :3].abs().sum() > 0 and grad[:, 3].abs().sum() == 0  # head 3 is spatial
    out_grad = attn.out_proj.weight.grad.view(64, 4, 16)
    assert out_grad[:, 3].abs().sum() == 0
    assert any(p is attn.out_proj.weight for p in model.masked_parameters())


@pytest.mark.parametrize("backbone, expected_m", [("ViT-B-16", 14.2), ("ViT-L-14", 50.5)])
def test_paper_trainable_parameter_counts(backbone, expected_m):
    cfg = paper_preset("k400", backbone, 8)
    with torch.device("meta"):  # shapes only: counts without allocating ViT-L
        model = build_model(cfg)
    adapters = sum(p.numel() for a in adapters_of(model) for p in a.parameters())
    assert adapters / 1e6 == pytest.approx(expected_m, abs=0.05)  # paper Table 8: 14 M (ViT-B)
    head = model.head.fc.weight.numel() + model.head.fc.bias.numel()
    assert model.count_parameters(trainable_only=True) == adapters + head


def test_merged_params_equal_open_clip_visual_plus_head(tiny_cfg):
    merged = merge_adapters(build_model(tiny_cfg))
    visual = open_clip.create_model(TINY, force_image_size=32).visual
    head = sum(p.numel() for p in merged.head.parameters())
    assert merged.count_parameters() == sum(p.numel() for p in visual.parameters()) + head
    assert set(merged.backbone.state_dict()) == set(visual.state_dict())


def test_merged_flops_equal_plain_open_clip(tiny_cfg):
    merged = merge_adapters(build_model(tiny_cfg))
    unmerged_macs = model_macs(build_model(tiny_cfg).eval(), (3, 4, 32, 32))
    x = torch.randn(1, 3, 4, 32, 32)
    plain = PlainImageModel(merged).eval()
    with torch.inference_mode():  # plain runs open_clip's fused MHA fast path here
        plain_macs = count_macs(lambda: plain(x))
    assert model_macs(merged, (3, 4, 32, 32)) == plain_macs
    assert unmerged_macs > plain_macs  # the adapters cost until they are merged


def test_vit_b16_flops_match_paper():
    cfg = paper_preset("k400", "ViT-B-16", 8)
    with torch.device("meta"):
        model = merge_adapters(build_model(cfg))
    gmacs_per_video = model_macs(model, (3, 8, 224, 224)) * 3 / 1e9  # 8 frames x 3 views
    assert gmacs_per_video == pytest.approx(422, abs=1.0)


def test_real_vit_b16_shapes_and_merge():
    """The one real-shape check: ViT-B/16, 8 frames, K400 layout, random adapters."""
    torch.manual_seed(0)
    model = build_model(paper_preset("k400", "ViT-B-16", 8)).eval()
    randomize_adapters(model, std=0.02)
    merged = merge_adapters(model)
    x = torch.randn(1, 3, 8, 224, 224)
    with torch.inference_mode():
        logits, merged_logits = model(x), merged(x)
    assert logits.shape == (1, 400)
    scale = logits.abs().max()
    assert (logits - merged_logits).abs().max() <= 1e-4 * scale
    assert not adapters_of(merged) and adapters_of(model)  # input model untouched


def test_deepcopy_keeps_behaviour(tiny_cfg):
    model = build_model(tiny_cfg).eval()
    x = torch.randn(1, 3, 4, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(copy.deepcopy(model)(x), model(x))


def test_temporal_embedding_is_optional_and_trainable(tiny_cfg):
    assert build_model(tiny_cfg).temporal_embedding is None
    model = build_model(tiny_cfg.model_copy(update={"temporal_embedding": True}))
    assert model.temporal_embedding.shape == (4, 64) and model.temporal_embedding.requires_grad
    assert model(torch.randn(1, 3, 4, 32, 32)).shape == (1, 7)


def test_config_passes_validation_errors():
    with pytest.raises(ValueError, match="outside a clip"):
        ZeroI2VConfig(backbone=TINY, num_frames=2, temporal_offsets=[2, 0, 0, 0])
