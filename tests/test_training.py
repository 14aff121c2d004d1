"""The training loop, its data path, resume, DDP and evaluation, on a tiny synthetic dataset."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import tiny_config
from training.augment import ClipAugment, flip_label_map
from training.checkpoint import load as load_checkpoint
from training.config import AugmentConfig, ConfigError, load_config
from training.data import ShardedSampler
from training.evaluate import EvalResult
from training.train import TrainingError, lr_factor, train

ROOT = Path(__file__).resolve().parent.parent


def test_config_overrides_and_errors(synth_dir, tmp_path):
    path = tiny_config(synth_dir, tmp_path / "run")
    cfg = load_config(path, ["train.lr=0.5", "model.num_frames=2", "data.test_crops=3"])
    assert cfg.train.lr == 0.5 and cfg.model.num_frames == 2 and cfg.data.test_crops == 3
    with pytest.raises(ConfigError, match=r"train\.lrr"):
        load_config(path, ["train.lrr=1"])
    with pytest.raises(ConfigError, match="not key=value"):
        load_config(path, ["train.lr"])
    with pytest.raises(ConfigError, match="test_crops"):
        load_config(path, ["data.test_crops=2"])
    with pytest.raises(ConfigError, match="needs data.labels"):
        load_config(path, ["data.format=ssv2"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [1, 2")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")


def test_paper_configs_match_the_presets():
    from model import paper_preset

    configs = sorted((ROOT / "training" / "configs").glob("*_vit*_*f.yaml"))
    assert len(configs) >= 14
    for path in configs:
        cfg = load_config(path)
        dataset, backbone, frames = path.stem.split("_")
        name = {"vitb16": "ViT-B-16", "vitl14": "ViT-L-14"}[backbone]
        preset = paper_preset(dataset, name, int(frames[:-1]))
        for field in ("temporal_offsets", "num_adapters", "adapter_ratio", "adapter_scale"):
            assert getattr(cfg.model, field) == getattr(preset, field), (path.name, field)
        assert cfg.model.num_frames == preset.num_frames


def test_lr_schedule_warmup_then_cosine():
    f = [lr_factor(s, total=100, warmup=10, start=0.1, floor=0.0) for s in range(101)]
    assert f[0] == pytest.approx(0.1) and f[10] == pytest.approx(1.0)
    assert all(a < b for a, b in zip(f[:10], f[1:11], strict=True))
    assert all(a >= b for a, b in zip(f[10:-1], f[11:], strict=True))
    assert f[55] == pytest.approx(0.5) and f[100] == pytest.approx(0.0)


def test_sampler_shards_cover_the_data_and_resume_mid_epoch():
    shards = [ShardedSampler(10, rank=r, world=3, seed=1) for r in range(3)]
    for s in shards:
        s.set_epoch(2)
    items = [list(s) for s in shards]
    assert {i for part in items for i, _ in part} == set(range(10))
    assert all(len(part) == 4 for part in items)  # padded to equal length
    seeds = [seed for part in items for _, seed in part]
    assert len(set(seeds)) == len(seeds)
    resumed = ShardedSampler(10, rank=1, world=3, seed=1)
    resumed.set_epoch(2, start=2)
    assert list(resumed) == items[1][2:]
    other_epoch = ShardedSampler(10, rank=1, world=3, seed=1)
    other_epoch.set_epoch(3)
    assert list(other_epoch) != items[1]
    full = ShardedSampler(7, shuffle=False, pad=False)
    assert [i for i, _ in full] == list(range(7))


def test_augmentation_is_the_same_for_every_frame():
    torch.manual_seed(0)
    frame = torch.randint(0, 256, (1, 3, 40, 48), dtype=torch.uint8)
    clip = frame.repeat(6, 1, 1, 1)  # identical frames must stay identical
    names = ["left", "right", "other"]
    aug = ClipAugment(
        AugmentConfig(flip=1.0, flip_label_pairs=[("left", "right")], random_erasing=1.0),
        image_size=32,
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
        class_names=names,
    )
    for label, expected in ((0, 1), (1, 0), (2, 2)):
        out, new_label = aug(clip, label)
        assert out.shape == (3, 6, 32, 32) and out.dtype == torch.float32
        assert new_label == expected
        assert torch.equal(out[:, :1].expand_as(out), out)
    with pytest.raises(ValueError, match="unknown classes"):
        flip_label_map([("left", "up")], names)


def test_eval_result_metrics():
    confusion = torch.tensor([[3, 1, 0], [0, 2, 2], [0, 0, 0]])
    r = EvalResult(["a", "b", "c"], confusion, top5_correct=8)
    assert r.count == 8 and r.top1 == pytest.approx(5 / 8) and r.top5 == 1.0
    summary = r.summary()
    assert summary["per_class_accuracy"] == {"a": 0.75, "b": 0.5, "c": None}
    assert summary["mean_class_accuracy"] == pytest.approx(0.625)


def test_train_evaluate_and_report(synth_dir, tmp_path):
    out = tmp_path / "run"
    summary = train(load_config(tiny_config(synth_dir, out)))
    assert summary["videos"] == len((synth_dir / "val.txt").read_text().split("\n")) - 1
    assert 0.0 <= summary["top1"] <= 1.0
    assert (out / "last.pt").exists() and (out / "eval_confusion.png").stat().st_size > 1000
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    steps = [r for r in log if "step" in r and "loss" in r]
    assert steps and all(math.isfinite(r["loss"]) and r["clips_per_s"] > 0 for r in steps)
    assert sum("eval" in r for r in log) == 2  # one per epoch
    ckpt = load_checkpoint(out / "last.pt")
    assert ckpt["epoch"] == 2 and ckpt["position"] == 0
    assert ckpt["preprocess"]["temporal_clips"] == 2


def test_resume_equals_uninterrupted(synth_dir, tmp_path):
    cfg = load_config(tiny_config(synth_dir, tmp_path / "straight"))
    train(cfg)
    interrupted = load_config(
        tiny_config(synth_dir, tmp_path / "resumed", checkpoint_every_steps=1)
    )
    train(interrupted, stop_after_steps=3)  # mid-epoch 1: 4 steps per epoch
    assert load_checkpoint(tmp_path / "resumed" / "last.pt")["step"] == 3
    train(interrupted, resume=True)
    a = load_checkpoint(tmp_path / "straight" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "resumed" / "last.pt")["model"]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_broken_videos_are_skipped_then_fail_the_run(synth_dir, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    lines = (synth_dir / "train.txt").read_text().splitlines()
    (data / "bad.mp4").write_bytes(b"not a video at all")
    (data / "train.txt").write_text(
        "\n".join([f"{synth_dir / ln.rsplit(' ', 1)[0]} {ln.rsplit(' ', 1)[1]}"
                   for ln in lines] + [f"{data / 'bad.mp4'} 0"]) + "\n"
    )  # fmt: skip
    path = tiny_config(synth_dir, tmp_path / "run", epochs=1)
    overrides = [f"data.train={data / 'train.txt'}", "data.root=/", "train.eval_every_epochs=0"]
    with pytest.warns(UserWarning, match="bad.mp4"):
        train(load_config(path, [*overrides, "data.max_broken_fraction=0.1"]))
    with pytest.raises(TrainingError, match="unreadable"):
        train(load_config(path, [*overrides, "data.max_broken_fraction=0.0"]))


def test_class_count_mismatch_is_an_error(synth_dir, tmp_path):
    path = tiny_config(synth_dir, tmp_path / "run")
    with pytest.raises(TrainingError, match="num_classes"):
        train(load_config(path, ["model.num_classes=3"]))


def test_ddp_with_two_gloo_processes(synth_dir, tmp_path):
    path = tiny_config(synth_dir, tmp_path / "ddp", epochs=1)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--standalone", "-m", "training.train", str(path)]  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    ckpt = load_checkpoint(tmp_path / "ddp" / "last.pt")
    assert ckpt["step"] == 4  # 16 videos / global batch 4 (2 processes x 2 clips each)
    assert len(ckpt["rng"]) == 2
    report = json.loads((tmp_path / "ddp" / "eval.json").read_text())
    assert report["videos"] == len((synth_dir / "val.txt").read_text().splitlines())
