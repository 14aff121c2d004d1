"""The AVA detection model: RoIAlign, the actor localiser, the detector, merging and saving."""

import pytest
import torch
import torch.nn.functional as F

from model import ZeroI2VConfig, build_model, load_merged, merge_adapters, save_merged
from model.detection import (
    ActorLocaliser,
    DetectionHead,
    detect_actors,
    localiser_targets,
    roi_features,
)
from tests.helpers import randomize_adapters, tiny_model_config


def detect_cfg(**kw) -> ZeroI2VConfig:
    base = dict(num_classes=5, temporal_offsets=[1, -1, 0, 0], task="detect", roi_size=3)
    return tiny_model_config(**{**base, **kw})


def crop_and_resize(fmap: torch.Tensor, box: list[float], size: int) -> torch.Tensor:
    """Direct reference: bilinear samples at the centres of a size x size grid of bins inside
    the box (pixel-continuous coordinates, cell i covers [i, i+1)), via grid_sample."""
    d, h, w = fmap.shape
    x1, y1, x2, y2 = box[0] * w, box[1] * h, box[2] * w, box[3] * h
    xs = x1 + (torch.arange(size) + 0.5) * (x2 - x1) / size
    ys = y1 + (torch.arange(size) + 0.5) * (y2 - y1) / size
    gy, gx = torch.meshgrid(2 * ys / h - 1, 2 * xs / w - 1, indexing="ij")
    grid = torch.stack([gx, gy], -1)[None]
    return F.grid_sample(fmap[None], grid, mode="bilinear", align_corners=False)[0]


def test_roi_align_matches_direct_crop_and_resize():
    g = torch.Generator().manual_seed(0)
    fmap = torch.randn(1, 3, 8, 8, generator=g)
    box = [0.2, 0.15, 0.7, 0.8]
    # RoIAlign with 2x2 samples per bin averages four bilinear samples; the reference with
    # twice the resolution, average-pooled 2x2, is exactly that.
    ours = roi_features(fmap, [torch.tensor([box])], 4)[0]
    ref = F.avg_pool2d(crop_and_resize(fmap[0], box, 8)[None], 2)[0]
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_roi_align_of_whole_cells_is_centred_on_those_cells():
    """On a linear map, bins of whole cells average to the cells' own values: no half-cell shift
    (aligned=True). Away from the border, where the sampling clamps."""
    fmap = torch.arange(64.0).view(1, 1, 8, 8)
    out = roi_features(fmap, [torch.tensor([[0.25, 0.375, 0.75, 0.875]])], 4)[0, 0]
    torch.testing.assert_close(out, fmap[0, 0, 3:7, 2:6])


def test_roi_boxes_go_to_their_own_clip():
    fmap = torch.stack([torch.zeros(1, 4, 4), torch.ones(1, 4, 4)])
    box = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    out = roi_features(fmap, [box, box.repeat(2, 1)], 2)
    assert out.shape == (3, 1, 2, 2)
    assert out[0].eq(0).all() and out[1:].eq(1).all()


def test_localiser_targets_place_the_centre_cell():
    heat, cells, offsets, sizes = localiser_targets([torch.tensor([[0.1, 0.2, 0.5, 0.6]])], (8, 8))
    assert cells == [(0, 3, 2)]  # centre (0.3, 0.4) * 8 = (2.4, 3.2): column 2, row 3
    assert heat[0, 3, 2] == 1 and heat[0].gt(0.99).sum() == 1
    torch.testing.assert_close(offsets, torch.tensor([[0.4, 0.2]]))
    torch.testing.assert_close(sizes, torch.tensor([[0.4, 0.4]]))


def test_localiser_learns_and_decodes_boxes():
    """Fit the localiser on one map whose features mark two actors; decode gives them back.
    Per-cell noise stands in for a ViT's position-dependent features: without it, every cell
    inside an actor would look the same to a 3x3 convolution."""
    torch.manual_seed(0)
    fmap = torch.randn(1, 8, 8, 8) * 0.5
    truth = torch.tensor([[0.05, 0.1, 0.45, 0.6], [0.55, 0.4, 0.95, 0.9]])
    for x1, y1, x2, y2 in (truth * 8).tolist():
        fmap[0, :, round(y1) : round(y2), round(x1) : round(x2)] += torch.randn(8, 1, 1)
    loc = ActorLocaliser(8, hidden=32)
    opt = torch.optim.Adam(loc.parameters(), lr=1e-2)
    for _ in range(300):
        opt.zero_grad()
        loss = loc.loss(loc(fmap), [truth])
        loss.backward()
        opt.step()
    (boxes, scores), = loc.decode(loc(fmap), threshold=0.3, max_actors=5)  # fmt: skip
    assert len(boxes) == 2, scores
    from torchvision.ops import box_iou

    assert box_iou(boxes, truth).max(0).values.min() > 0.7


def test_detector_forward_shapes_and_detect_with_and_without_boxes():
    torch.manual_seed(0)
    model = build_model(detect_cfg()).eval()
    assert isinstance(model.head, DetectionHead)
    x = torch.randn(2, 3, 4, 32, 32)
    boxes = [torch.tensor([[0.1, 0.1, 0.6, 0.9]]), torch.tensor([[0, 0, 1, 1.0], [0.5, 0, 1, 1]])]
    logits, maps = model(x, boxes)
    assert logits.shape == (3, 5) and maps.shape == (2, 5, 4, 4)
    given = detect_actors(model, x, boxes=[boxes[0], None], box_scores=[torch.tensor([0.8]), None])
    assert given[0].boxes.shape == (1, 4) and given[0].box_scores.tolist() == [pytest.approx(0.8)]
    torch.testing.assert_close(given[0].scores, 0.8 * given[0].action_probs)
    # The untrained localiser's prior is 0.1 everywhere: threshold 0.05 finds peaks, 0.5 none.
    assert len(detect_actors(model, x, threshold=0.05)[1].boxes) > 0
    assert len(detect_actors(model, x, threshold=0.5)[1].boxes) == 0


def test_detector_uses_time_only_through_temporal_heads():
    """Reversing the frames changes an actor's actions only when some head has Δt != 0."""
    torch.manual_seed(0)
    x = torch.randn(1, 3, 4, 32, 32)
    boxes = [torch.tensor([[0.1, 0.1, 0.9, 0.9]])]
    for offsets, same in (([0, 0, 0, 0], True), ([1, -1, 0, 0], False)):
        model = build_model(detect_cfg(temporal_offsets=offsets)).eval()
        randomize_adapters(model)
        torch.nn.init.normal_(model.head.actions.fc.weight, std=1.0)
        a, _ = model(x, boxes)
        b, _ = model(x.flip(2), boxes)
        assert torch.allclose(a, b, atol=1e-5) == same


def test_merged_detector_matches_and_round_trips(tmp_path):
    torch.manual_seed(0)
    model = build_model(detect_cfg()).eval()
    randomize_adapters(model)
    merged = merge_adapters(model)
    x = torch.randn(2, 3, 4, 32, 32)
    boxes = [torch.tensor([[0.1, 0.1, 0.6, 0.9]]), torch.tensor([[0.2, 0.3, 0.9, 1.0]])]
    with torch.no_grad():
        ref, ref_maps = model(x, boxes)
        out, out_maps = merged(x, boxes)
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out_maps, ref_maps, atol=1e-4, rtol=1e-4)
    path = save_merged(merged, tmp_path / "det.safetensors", [f"a{i}" for i in range(5)])
    loaded = load_merged(path)
    assert isinstance(loaded.head, DetectionHead)
    with torch.no_grad():
        again, _ = loaded(x, boxes)
    torch.testing.assert_close(again, out)
    # Zero new backbone parameters: the detector's backbone is the image tower's.
    image = build_model(detect_cfg(task="classify", num_adapters=0))
    assert sum(p.numel() for p in loaded.backbone.parameters()) == sum(
        p.numel() for p in image.backbone.parameters()
    )
