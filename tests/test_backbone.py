import open_clip
import pytest
import torch
from safetensors.torch import save_file

from model import build_model
from model.backbone import BackboneError, create_visual
from tests.helpers import TINY


@pytest.fixture
def clip_model():
    torch.manual_seed(3)
    return open_clip.create_model(TINY, force_image_size=32)


def _assert_same_visual(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert set(sa) == set(sb)
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], atol=0, rtol=0)


def test_whole_open_clip_checkpoint(clip_model, tmp_path):
    path = tmp_path / "clip.pt"
    torch.save({"state_dict": clip_model.state_dict()}, path)
    _assert_same_visual(create_visual(TINY, 32, str(path)), clip_model.visual)


def test_visual_only_safetensors(clip_model, tmp_path):
    path = tmp_path / "visual.safetensors"
    save_file({k: v.contiguous() for k, v in clip_model.visual.state_dict().items()}, path)
    _assert_same_visual(create_visual(TINY, 32, str(path)), clip_model.visual)


def test_position_grid_is_interpolated_to_the_configured_size(clip_model, tmp_path):
    path = tmp_path / "clip.safetensors"
    save_file({k: v.contiguous() for k, v in clip_model.state_dict().items()}, path)
    visual = create_visual(TINY, 48, str(path))  # 4x4 grid of patches -> 6x6
    assert visual.positional_embedding.shape == (37, 64)
    torch.testing.assert_close(visual.conv1.weight, clip_model.visual.conv1.weight)


def test_pretrained_reaches_build_model(clip_model, tmp_path, tiny_cfg):
    path = tmp_path / "clip.pt"
    torch.save(clip_model.state_dict(), path)
    model = build_model(tiny_cfg.model_copy(update={"pretrained": str(path)}))
    torch.testing.assert_close(model.backbone.conv1.weight, clip_model.visual.conv1.weight)


def test_wrong_architecture_checkpoint(tmp_path):
    other = open_clip.create_model("zeroi2v-ViT-S-16")
    path = tmp_path / "s16.pt"
    torch.save(other.state_dict(), path)
    with pytest.raises(BackboneError, match="does not match the visual tower"):
        create_visual(TINY, 32, str(path))


def test_unreadable_checkpoint(tmp_path):
    path = tmp_path / "broken.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(BackboneError, match="cannot read pretrained checkpoint"):
        create_visual(TINY, 32, str(path))


def test_missing_path():
    with pytest.raises(BackboneError, match="does not exist"):
        create_visual(TINY, 32, "/nowhere/clip.pt")


def test_tag_not_in_cache_never_downloads(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(BackboneError, match="not in the local cache"):
        create_visual("ViT-B-16", 224, "laion2b_s34b_b88k", cache_dir=str(tmp_path))


def test_unknown_tag_and_model():
    with pytest.raises(BackboneError, match="neither a file nor a pretrained tag"):
        create_visual("ViT-B-16", 224, "no-such-tag")
    with pytest.raises(BackboneError, match="unknown open_clip model"):
        create_visual("ViT-Q-99", 224)


def test_non_vit_tower_rejected():
    with pytest.raises(BackboneError, match="not an open_clip VisionTransformer"):
        create_visual("RN50", 224)
