"""Shared test helpers (fixtures live in conftest.py)."""

from pathlib import Path

import torch
import yaml

from model import ZeroI2VConfig
from model.adapters import adapters_of

TINY = "zeroi2v-ViT-T-8"  # 2 blocks, width 64, 4 heads, patch 8 (model/open_clip_configs)


def tiny_model_config(**overrides) -> ZeroI2VConfig:
    """The tiny model most tests build: 4 frames of 32 px, Δt {+1, -1, +2, 0}, 7 classes."""
    base = dict(
        backbone=TINY,
        image_size=32,
        num_frames=4,
        num_classes=7,
        temporal_offsets=[1, -1, 2, 0],
        head_dropout=0.0,
    )
    return ZeroI2VConfig(**{**base, **overrides})


def randomize_adapters(model, std: float = 0.2, seed: int = 0) -> None:
    """Non-zero adapter weights: zero-initialised U would make merge tests pass trivially."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for adapter in adapters_of(model):
            for p in adapter.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * std)


def _write_config(doc: dict, out_dir: Path, train: dict) -> Path:
    """Add the tiny two-epoch training section (overridden by `train`), write <out_dir>.yaml."""
    doc["train"] = {
        "epochs": 2,
        "batch_size": 4,
        "lr": 1e-3,
        "warmup_epochs": 0.5,
        "amp": "off",
        "out_dir": str(out_dir),
        **train,
    }
    path = out_dir.parent / f"{out_dir.name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def tiny_config(synth_dir: Path, out_dir: Path, **train) -> Path:
    doc = {
        "model": {
            "backbone": TINY,
            "num_frames": 4,
            "image_size": 32,
            "temporal_offsets": [1, -1, 0, 0],
            "adapter_ratio": 0.25,
            "head_dropout": 0.5,  # dropout draws from the RNG: resume must restore it
        },
        "data": {
            "root": str(synth_dir),
            "train": str(synth_dir / "train.txt"),
            "val": str(synth_dir / "val.txt"),
            "class_names": str(synth_dir / "classes.txt"),
            "frame_interval": 2,
            "test_clips": 2,
            "num_workers": 0,
        },
        "augment": {"randaugment_ops": 2, "randaugment_magnitude": 5, "random_erasing": 0.25},
    }
    return _write_config(doc, out_dir, train)


def tiny_detect_config(ava_dir: Path, out_dir: Path, **train) -> Path:
    """The tiny model as an AVA detector on a synthetic AVA set (training/synthetic/ava.py)."""
    ann = ava_dir / "annotations"
    doc = {
        "model": {
            "backbone": TINY,
            "task": "detect",
            "num_frames": 4,
            "image_size": 32,
            "temporal_offsets": [1, -1, 0, 0],
            "roi_size": 3,
            "head_dropout": 0.0,
        },
        "data": {
            "format": "ava",
            "root": str(ava_dir / "videos"),
            "labels": str(ann / "ava_action_list_v2.2.pbtxt"),
            "train": str(ann / "ava_train_v2.2.csv"),
            "val": str(ann / "ava_val_v2.2.csv"),
            "exclusions": str(ann / "ava_val_excluded_timestamps_v2.2.csv"),
            "proposals": str(ann / "ava_val_proposals.csv"),
            "frame_interval": 2,
            "num_workers": 0,
        },
    }
    return _write_config(doc, out_dir, train)


def listening_sockets() -> list[tuple[str, int, int | None]]:
    """(address, port, pid) of every listening TCP socket on this machine, from /proc: no
    external tool. pid is None where the socket's process is not ours to see."""
    import ipaddress
    import os

    owners: dict[str, int] = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    owners[target[8:-1]] = int(pid)
        except OSError:  # gone, or not ours
            continue
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                local, state, inode = fields[1], fields[3], fields[9]
                if state != "0A":  # LISTEN
                    continue
                hex_ip, hex_port = local.split(":")
                raw = bytes.fromhex(hex_ip)
                # The kernel prints each 32-bit word in host (little-endian) order.
                raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
                ip = ipaddress.ip_address(raw)
                if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
                    ip = ip.ipv4_mapped
                found.append((str(ip), int(hex_port, 16), owners.get(inode)))
    return found
