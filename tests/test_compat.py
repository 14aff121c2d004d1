"""Checkpoints written by earlier code load and give the same outputs (tests/data, written by
tests/data/make_reference_outputs.py at the commit it names)."""

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from model import ZeroI2VConfig, build_model, load_merged
from model.detection import detect_actors

DATA = Path(__file__).parent / "data"
# fp32 on CPU; the STDHA paths differ only in where K/V are read from, so the outputs agree to
# float rounding of a different summation order at most.
TOL = dict(atol=2e-6, rtol=2e-6)


@pytest.fixture(scope="module")
def ref() -> dict[str, torch.Tensor]:
    return load_file(DATA / "reference_outputs.safetensors")


def test_merged_classifier_gives_the_old_logits(ref):
    model = load_merged(DATA / "classify_merged.safetensors")
    with torch.inference_mode():
        got = model(ref["input"])
    torch.testing.assert_close(got, ref["classify_merged_logits"], **TOL)


def test_unmerged_training_state_gives_the_old_logits_and_gradients(ref):
    path = DATA / "classify_unmerged_state.safetensors"
    with safe_open(str(path), "pt") as f:
        cfg = ZeroI2VConfig.model_validate_json(f.metadata()["config"])
    model = build_model(cfg).eval()
    model.load_state_dict(load_file(path), strict=True)
    x = ref["input"].clone().requires_grad_(True)
    logits = model(x)
    (logits * torch.linspace(-1, 1, logits.shape[1])).sum().backward()
    torch.testing.assert_close(logits.detach(), ref["classify_unmerged_logits"], **TOL)
    torch.testing.assert_close(x.grad, ref["classify_unmerged_input_grad"], **TOL)


def test_merged_detector_gives_the_old_detections(ref):
    model = load_merged(DATA / "detect_merged.safetensors")
    with safe_open(str(DATA / "reference_outputs.safetensors"), "pt") as f:
        boxes = [torch.tensor(b) for b in json.loads(f.metadata()["boxes"])]
    x = ref["input"]
    found = detect_actors(model, x[:2], boxes) + detect_actors(
        model, x[2:], None, threshold=0.0, max_actors=3
    )
    for i, d in enumerate(found):
        torch.testing.assert_close(d.boxes, ref[f"detect_{i}_boxes"], **TOL)
        torch.testing.assert_close(d.box_scores, ref[f"detect_{i}_box_scores"], **TOL)
        torch.testing.assert_close(d.action_probs, ref[f"detect_{i}_action_probs"], **TOL)
    with torch.inference_mode():
        feature_map = model.encode(x).key_frame_map()
        torch.testing.assert_close(feature_map, ref["detect_feature_map"], **TOL)
