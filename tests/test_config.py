from collections import Counter

import pytest
from pydantic import ValidationError

from model import ZeroI2VConfig, paper_preset

TABLE6 = {
    ("ViT-B-16", 8, "k400"): {1: 1, -1: 1, 0: 10},
    ("ViT-B-16", 16, "k400"): {1: 1, -1: 1, 2: 1, 0: 9},
    ("ViT-B-16", 16, "ssv2"): {1: 1, -1: 1, 2: 1, -2: 1, 0: 8},
    ("ViT-B-16", 32, "k400"): {1: 1, -1: 1, 2: 1, -2: 1, 3: 1, 0: 7},
    ("ViT-L-14", 8, "k400"): {1: 2, -1: 2, 0: 12},
    ("ViT-L-14", 16, "k400"): {1: 2, -1: 2, 2: 1, 0: 11},
    ("ViT-L-14", 16, "ssv2"): {1: 2, -1: 2, 2: 2, -2: 2, 0: 8},
    ("ViT-L-14", 32, "ssv2"): {1: 2, -1: 2, 2: 1, -2: 1, 3: 1, 0: 9},
}


@pytest.mark.parametrize("key", TABLE6)
def test_paper_layouts(key):
    backbone, frames, dataset = key
    cfg = paper_preset(dataset, backbone, frames)
    assert Counter(cfg.temporal_offsets) == TABLE6[key]
    assert cfg.num_frames == frames and cfg.adapter_ratio == 0.25


def test_six_adapters_only_for_vitb_8_frames_ssv2():
    assert paper_preset("ssv2", "ViT-B-16", 8).num_adapters == 6
    assert paper_preset("ssv2", "ViT-B-16", 8).adapter_scale == 1.0
    assert paper_preset("k400", "ViT-B-16", 8).num_adapters == 4
    assert paper_preset("k400", "ViT-B-16", 8).adapter_scale == 0.5
    assert paper_preset("ssv2", "ViT-L-14", 8).num_adapters == 4


def test_preset_errors():
    with pytest.raises(ValueError, match="unknown dataset"):
        paper_preset("imagenet")
    with pytest.raises(ValueError, match="8, 16 or 32"):
        paper_preset("k400", "ViT-B-16", 12)


def test_offsets_per_block():
    cfg = ZeroI2VConfig(temporal_offsets=[[1, 0], [0, -1]], num_frames=4)
    assert cfg.offsets_per_block(2, 2) == [[1, 0], [0, -1]]
    with pytest.raises(ValueError, match="3 blocks"):
        cfg.offsets_per_block(3, 2)
    with pytest.raises(ValueError, match="4 heads"):
        ZeroI2VConfig(temporal_offsets=[1, 0], num_frames=4).offsets_per_block(2, 4)
    assert ZeroI2VConfig().offsets_per_block(2, 3) == [[0, 0, 0], [0, 0, 0]]


@pytest.mark.parametrize(
    "bad",
    [
        {"num_adapters": 5},
        {"num_frames": 0},
        {"temporal_offsets": []},
        {"trainable": "everything"},
        {"unknown_field": 1},
        {"trainable": "temporal_heads"},  # no temporal heads to train
    ],
)
def test_bad_configs_are_rejected(bad):
    with pytest.raises(ValidationError):
        ZeroI2VConfig(**bad)


def test_json_round_trip():
    cfg = paper_preset("ssv2", "ViT-L-14", 16)
    assert ZeroI2VConfig.model_validate_json(cfg.model_dump_json()) == cfg
