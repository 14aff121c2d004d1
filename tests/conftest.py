import os

# What `zeroi2v serve` does before Ray is imported (service/server.py start): Ray's own servers
# on loopback. The test modules import Ray when they are collected, before any fixture runs.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

from pathlib import Path

import pytest

from model import ZeroI2VConfig
from tests.helpers import tiny_config, tiny_detect_config, tiny_model_config
from training.synthetic.shapes import write_synthetic_dataset


@pytest.fixture
def tiny_cfg() -> ZeroI2VConfig:
    return tiny_model_config()


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory) -> Path:
    """A tiny synthetic dataset of real MP4 files: 8 classes x 4 videos, 8 frames of 32 px."""
    out = tmp_path_factory.mktemp("synth")
    write_synthetic_dataset(out, num_videos_per_class=4, num_frames=8, size=32, seed=3)
    return out


@pytest.fixture(scope="session")
def trained_run(synth_dir, tmp_path_factory) -> Path:
    """A finished two-epoch training run on the tiny dataset (its out_dir holds last.pt)."""
    from training.config import load_config
    from training.train import train

    out = tmp_path_factory.mktemp("trained") / "run"
    train(load_config(tiny_config(synth_dir, out)))
    return out


@pytest.fixture(scope="session")
def synth_ava_dir(tmp_path_factory) -> Path:
    """A tiny synthetic AVA set: 4 train + 2 val videos of 3 s at 8 fps, 64 px."""
    from training.synthetic.ava import write_synthetic_ava

    out = tmp_path_factory.mktemp("synth_ava")
    write_synthetic_ava(
        out, num_train_videos=4, num_val_videos=2, seconds=3, size=64, seed=1, exclude_fraction=0.2
    )
    return out


@pytest.fixture(scope="session")
def trained_detector(synth_ava_dir, tmp_path_factory) -> Path:
    """A finished two-epoch detection run of the tiny model (its out_dir holds last.pt)."""
    from training.config import load_config
    from training.train import train

    out = tmp_path_factory.mktemp("detector") / "run"
    train(load_config(tiny_detect_config(synth_ava_dir, out)))
    return out


@pytest.fixture(scope="session")
def merged_model(trained_run, tmp_path_factory) -> Path:
    """The tiny trained classifier, merged (what the service serves)."""
    from training.export import export_merged

    path, _ = export_merged(
        trained_run / "last.pt", tmp_path_factory.mktemp("m") / "tiny.safetensors"
    )
    return path


@pytest.fixture(scope="session")
def merged_detector(trained_detector, tmp_path_factory) -> Path:
    from training.export import export_merged

    path, _ = export_merged(
        trained_detector / "last.pt", tmp_path_factory.mktemp("d") / "detector.safetensors"
    )
    return path
