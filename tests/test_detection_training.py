"""Detection end to end on a tiny synthetic AVA set: data, training, eval, export, CLI."""

import json
import random

import pytest
import torch
from typer.testing import CliRunner

from cli import app
from model import load_merged
from model.detection import DetectionHead
from training import checkpoint as ckpt_io
from training.config import ConfigError, load_config
from training.detection import AvaKeyFrames, jitter_boxes, load_ava
from training.export import export_merged
from training.formats.ava import read_detections
from video.sampling import keyframe_clip


def test_keyframe_clip_centres_and_clamps():
    assert keyframe_clip(8, 40, 8, 1) == [4, 5, 6, 7, 8, 9, 10, 11]
    assert keyframe_clip(8, 40, 4, 2) == [4, 6, 8, 10]
    assert keyframe_clip(1, 10, 4, 2) == [0, 0, 1, 3]  # before the start: the first frame
    assert keyframe_clip(9, 10, 4, 2) == [5, 7, 9, 9]
    with pytest.raises(ValueError, match="outside"):
        keyframe_clip(10, 10, 4, 2)


def test_jitter_keeps_valid_boxes_near_the_truth():
    boxes = torch.tensor([[0.1, 0.2, 0.5, 0.9], [0.0, 0.0, 1.0, 1.0]])
    moved = jitter_boxes(boxes, 0.1, random.Random(0))
    assert not torch.equal(moved, boxes)
    assert (moved[:, 2] > moved[:, 0]).all() and (moved[:, 3] > moved[:, 1]).all()
    assert moved.min() >= 0 and moved.max() <= 1
    assert (moved - boxes).abs().max() <= 0.1 * 1.0 + 1e-6


def test_ava_split_and_samples(synth_ava_dir, tmp_path):
    cfg = load_config(tiny_config_path(synth_ava_dir, tmp_path))
    train, val = load_ava(cfg, "train"), load_ava(cfg, "val")
    assert train.class_names[0] == "move_left" and len(train.action_ids) == 8
    assert len(train.keys) == 4 * 2  # 4 videos, key frames at 1 s and 2 s
    assert val.exclusions and not set(val.keys) & val.exclusions
    data = AvaKeyFrames(val, cfg.view_spec(), train=False)
    clip, key, boxes, actions, proposals = data[0]
    assert clip.shape == (3, 4, 32, 32)
    assert boxes.shape[0] == actions.shape[0] == len(val.actors[key])
    assert actions.sum(1).ge(1).all()  # every actor does at least its motion action
    assert proposals is not None and proposals[0].shape[1] == 4


def tiny_config_path(ava_dir, tmp_path):
    from tests.helpers import tiny_detect_config

    return tiny_detect_config(ava_dir, tmp_path / "run")


def test_a_long_video_is_refused_before_decoding(synth_ava_dir):
    from video.decode import VideoReader
    from video.views import TimestampError, ViewSpec, load_keyframe_clips

    video = next((synth_ava_dir / "videos").glob("*.mp4"))
    spec = ViewSpec(image_size=32)
    with pytest.raises(TimestampError, match="at most 1"):
        load_keyframe_clips(video, spec, max_keyframes=1)
    clips, times, info = load_keyframe_clips(video, spec)
    assert times == [1.0, 2.0] and clips.shape == (2, 3, 8, 32, 32)
    with VideoReader(video) as reader:
        assert info.num_frames == reader.info.num_frames == 24


def test_task_and_format_must_agree(synth_ava_dir, tmp_path):
    path = tiny_config_path(synth_ava_dir, tmp_path)
    with pytest.raises(ConfigError, match="task"):
        load_config(path, ["model.task=classify"])


def test_a_missing_video_is_reported_not_fatal(synth_ava_dir, tmp_path):
    cfg = load_config(tiny_config_path(synth_ava_dir, tmp_path), [f"data.root={tmp_path}"])
    with pytest.raises(ValueError, match="no usable key frames"):
        load_ava(cfg, "train")


def test_a_run_whose_final_evaluation_finds_no_actor_still_finishes(synth_ava_dir, tmp_path):
    """With the localiser's boxes an early model may find no actor at all: the run ends with
    its report (mAP 0), and writes no detections file (only `zeroi2v eval` writes one)."""
    from training.train import train

    overrides = ["data.detect_boxes=localiser", "data.detect_threshold=1.0"]
    cfg = load_config(tiny_config_path(synth_ava_dir, tmp_path), overrides)
    out = train(cfg)
    assert out["key_frames"] > 0 and out["box_source"] == "localiser"
    run = cfg.path(cfg.train.out_dir)
    assert (run / "eval.json").exists() and not list(run.glob("detections*"))


def test_training_writes_detection_eval_and_merges(trained_detector, tmp_path):
    report = json.loads((trained_detector / "eval.json").read_text())
    assert 0 <= report["mAP"] <= 1 and report["box_source"] == "proposals"
    assert (trained_detector / "eval_ap.png").stat().st_size > 1000
    model, names, _ = ckpt_io.rebuild_model(ckpt_io.load(trained_detector / "last.pt"))
    assert isinstance(model.head, DetectionHead) and names[-1] == "carry"
    path, diff = export_merged(trained_detector / "last.pt", tmp_path / "det.safetensors")
    assert diff < 1e-4
    assert isinstance(load_merged(path).head, DetectionHead)


def test_cli_eval_and_predict_for_a_detector(trained_detector, synth_ava_dir, tmp_path):
    merged, _ = export_merged(trained_detector / "last.pt", tmp_path / "det.safetensors")
    config = tiny_config_path(synth_ava_dir, tmp_path)
    runner = CliRunner()
    for boxes in ("proposals", "localiser", "groundtruth"):
        out = tmp_path / boxes
        r = runner.invoke(
            app,
            ["eval", str(config), "--checkpoint", str(merged), "--out", str(out),
             "--set", f"data.detect_boxes={boxes}", "--set", "data.detect_threshold=0.05"],
        )  # fmt: skip
        assert r.exit_code == 0, r.output
        last = r.output.strip().splitlines()[-1]
        summary = json.loads(last[last.index('{"key_frames"') :])  # after tqdm's stderr line
        assert summary["boxes"] == boxes and 0 <= summary["mAP"] <= 1
        detections = read_detections(out / "detections_val.csv")
        assert detections and all(len(d) % 8 == 0 for d in detections.values())
    # Ground-truth boxes are found by definition.
    assert summary["box_recall"] == 1.0
    video = next((synth_ava_dir / "videos").glob("synth_val_*.mp4"))
    r = runner.invoke(app, ["predict", str(video), "--model", str(merged), "--top-k", "2"])
    assert r.exit_code == 0, r.output
    assert r.output.startswith("1.0 s:") and "2.0 s:" in r.output


def test_cli_eval_refuses_a_classifier_for_detection(merged_model_path, synth_ava_dir, tmp_path):
    config = tiny_config_path(synth_ava_dir, tmp_path)
    r = CliRunner().invoke(app, ["eval", str(config), "--checkpoint", str(merged_model_path)])
    assert r.exit_code == 2 and "classify model" in r.output


@pytest.fixture
def merged_model_path(trained_run, tmp_path):
    path, _ = export_merged(trained_run / "last.pt", tmp_path / "cls.safetensors")
    return path
