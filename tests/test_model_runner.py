"""The service's model side without Ray: bf16 weights, compiled batch buckets, chunking."""

import pytest
import torch
import torch._dynamo

from model import build_model, load_merged, merge_adapters, save_merged
from model.precision import inference_dtype
from service.model_runner import ModelRunner, batch_buckets
from service.settings import ServiceSettings
from tests.helpers import randomize_adapters, tiny_model_config


def _save(tmp_path, **kw):
    cfg = tiny_model_config(num_classes=5, **kw)
    torch.manual_seed(0)
    model = build_model(cfg)
    randomize_adapters(model)
    return save_merged(merge_adapters(model), tmp_path / "m.safetensors")


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    return _save(tmp_path_factory.mktemp("cls"))


@pytest.fixture(scope="module")
def detector(tmp_path_factory):
    return _save(tmp_path_factory.mktemp("det"), task="detect", roi_size=3)


def _views(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return list(torch.randn(n, 3, 4, 32, 32, generator=g).unbind(0))


def test_batch_buckets():
    assert batch_buckets(1) == [1]
    assert batch_buckets(16) == [1, 2, 4, 8, 16]
    assert batch_buckets(12) == [1, 2, 4, 8, 12]


def test_inference_dtype():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert inference_dtype("fp32", cuda) == inference_dtype("off", cuda) == torch.float32
    assert inference_dtype("bf16", cpu) == torch.bfloat16
    assert inference_dtype("fp16", cpu) == torch.float16
    with pytest.raises(ValueError, match="unknown precision 'bf17'"):
        inference_dtype("bf17", cpu)


def test_bf16_runner_casts_the_backbone_and_keeps_heads_fp32(classifier):
    exact = ModelRunner(str(classifier), "cpu", "fp32")
    half = ModelRunner(str(classifier), "cpu", "bf16")
    assert {p.dtype for p in half.model.backbone.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in half.model.head.parameters()} == {torch.float32}
    assert half.card()["precision"] == "bfloat16" and exact.card()["precision"] == "float32"
    views = _views(3)
    got, want = torch.stack(half.run(views)), torch.stack(exact.run(views))
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, atol=0.03, rtol=0)
    # fp32 through the runner is the merged model itself, bit for bit.
    with torch.inference_mode():
        direct = load_merged(classifier)(torch.stack(views)).softmax(-1)
    torch.testing.assert_close(want, direct, atol=0, rtol=0)


def test_bf16_detector_gives_fp32_boxes_and_scores(detector):
    exact = ModelRunner(str(detector), "cpu", "fp32")
    half = ModelRunner(str(detector), "cpu", "bf16")
    box = torch.tensor([[0.1, 0.2, 0.7, 0.9]])
    views = _views(2)
    given = [(v, box) for v in views]
    for got, want in zip(half.detect(given), exact.detect(given), strict=True):
        assert {t.dtype for t in (got.boxes, got.box_scores, got.action_probs)} == {torch.float32}
        torch.testing.assert_close(got.action_probs, want.action_probs, atol=0.03, rtol=0)
    # The localiser's own boxes: decoded in fp32 from the bf16 feature map.
    found = half.detect([(v, None) for v in views])
    reference = exact.detect([(v, None) for v in views])
    for got, want in zip(found, reference, strict=True):
        assert got.boxes.dtype == got.box_scores.dtype == torch.float32
        assert len(got.boxes) > 0  # which cells are peaks may differ in bf16; the best may not
        assert abs(float(got.box_scores.max() - want.box_scores.max())) < 0.03


def test_unknown_settings_are_refused(classifier):
    with pytest.raises(ValueError, match="unknown compile mode 'fast'"):
        ModelRunner(str(classifier), "cpu", compile="fast")
    with pytest.raises(ValueError, match="compile"):
        ServiceSettings.from_env(model_path="m", compile="max")
    with pytest.raises(ValueError, match="precision"):
        ServiceSettings.from_env(model_path="m", precision="int8")


def test_eager_runner_chunks_batches_larger_than_the_maximum(classifier):
    runner = ModelRunner(str(classifier), "cpu", "fp32", max_batch_size=2)
    views = _views(5)
    got = torch.stack(runner.run(views))
    with torch.inference_mode():
        want = load_merged(classifier)(torch.stack(views)).softmax(-1)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)


def test_padding_to_a_bucket_changes_no_answer(classifier, detector):
    """What a compiled runner does to a batch of 3 with buckets 1, 2, 4: pad with empty clips
    to 4, run, drop the padding. Checked on the eager model (no compilation needed)."""
    for path in (classifier, detector):
        plain = ModelRunner(str(path), "cpu", "fp32", max_batch_size=4)
        padded = ModelRunner(str(path), "cpu", "fp32", max_batch_size=4)
        padded.buckets = batch_buckets(4)
        assert padded._chunks(3) == [(0, 3, 4)] and plain._chunks(3) == [(0, 3, 3)]
        views = _views(3, seed=5)
        if plain.task == "detect":
            box = torch.tensor([[0.2, 0.2, 0.8, 0.8]])
            items = [(views[0], box), (views[1], None), (views[2], box)]
            got, want = padded.detect(items), plain.detect(items)
            assert len(got) == 3
            for g, w in zip(got, want, strict=True):
                torch.testing.assert_close(g.boxes, w.boxes, atol=1e-6, rtol=1e-6)
                torch.testing.assert_close(g.action_probs, w.action_probs, atol=1e-6, rtol=1e-6)
        else:
            got = torch.stack(padded.run(views))
            torch.testing.assert_close(got, torch.stack(plain.run(views)), atol=1e-6, rtol=1e-6)


def test_compiled_runner_compiles_only_while_warming_up(classifier, detector):
    """Every batch size the batcher can form runs a graph compiled during warm-up (padded up
    to its bucket), with the eager model's answers; after warm-up nothing compiles."""
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    eager = ModelRunner(str(classifier), "cpu", "fp32", max_batch_size=2)
    compiled = ModelRunner(str(classifier), "cpu", "fp32", "default", max_batch_size=2)
    det_eager = ModelRunner(str(detector), "cpu", "fp32", max_batch_size=2)
    det_compiled = ModelRunner(str(detector), "cpu", "fp32", "default", max_batch_size=2)
    compiled.warm_up()
    det_compiled.warm_up()
    assert set(compiled.warm_up_s) == {1, 2} and compiled.card()["compile"] == "default"
    frames = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    assert frames >= 2  # a graph per bucket (the detector's may share them)
    for n in (1, 2, 3):
        views = _views(n, seed=n)
        torch.testing.assert_close(
            torch.stack(compiled.run(views)), torch.stack(eager.run(views)), atol=1e-5, rtol=1e-5
        )
        items = [(v, None) for v in views]
        for got, want in zip(det_compiled.detect(items), det_eager.detect(items), strict=True):
            torch.testing.assert_close(got.boxes, want.boxes, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(got.action_probs, want.action_probs, atol=1e-5, rtol=1e-5)
    probs = compiled.probabilities(torch.stack(_views(3)))
    torch.testing.assert_close(
        probs, eager.probabilities(torch.stack(_views(3))), atol=1e-5, rtol=0
    )
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == frames
