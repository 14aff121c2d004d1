"""Video datasets for training and multi-view evaluation, with resumable, sharded sampling.

Reproducibility: the sampler yields (index, seed) pairs, where seed depends only on the run seed,
the epoch and the position in the epoch. Each sample draws its clip position and augmentation
from that seed, so the data stream does not depend on the number of loader workers or on
whether the run was interrupted and resumed.

Broken videos: a sample whose file fails to decode comes back as a `BrokenVideo` record; the
collate function drops it from the batch and the training loop counts it, warns with the file
name, and stops the run when too many are broken.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from training.augment import ClipAugment
from training.config import DataConfig, ExperimentConfig
from training.formats.annotations import (
    Annotations,
    read_hmdb51,
    read_kinetics_csv,
    read_ssv2,
    read_ucf101,
    read_video_list,
)
from video.decode import DecodeLimits, VideoError, VideoReader
from video.views import ViewSpec, make_views

# One decoder thread per reader: the parallelism comes from the DataLoader workers.
DECODE_LIMITS = DecodeLimits(threads=1)


@dataclass(frozen=True)
class BrokenVideo:
    path: str
    error: str


def load_annotations(cfg: ExperimentConfig, split: str, class_names=None) -> Annotations:
    """The `train`, `val` or `test` split of the configured dataset."""
    d: DataConfig = cfg.data
    if split == "test" and d.test is None and d.format != "hmdb51":
        raise ValueError("this config names no test split (data.test)")
    root = cfg.path(d.root)
    if d.format == "video_list":
        names = cfg.path(d.class_names) if d.class_names else None
        return read_video_list(cfg.path(getattr(d, split)), root, names)
    if d.format == "kinetics":
        return read_kinetics_csv(cfg.path(getattr(d, split)), root, class_names=class_names)
    if d.format == "ssv2":
        return read_ssv2(cfg.path(d.labels), cfg.path(getattr(d, split)), root)
    if d.format == "ucf101":
        return read_ucf101(cfg.path(getattr(d, split)), root, cfg.path(d.class_names))
    subset = "train" if split == "train" else "test"
    return read_hmdb51(cfg.path(d.splits_dir), root, split=d.split, subset=subset)


class VideoClips(Dataset):
    """Items are (frames, label): frames (3, T, S, S) in training, (V, 3, T, S, S) in testing."""

    def __init__(
        self,
        annotations: Annotations,
        spec: ViewSpec,
        train: bool,
        augment: ClipAugment | None = None,
    ):
        if train and augment is None:
            raise ValueError("a training dataset needs an augmentation")
        self.samples = annotations.samples
        self.spec = spec
        self.train = train
        self.augment = augment

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, item: tuple[int, int] | int):
        index, seed = item if isinstance(item, tuple) else (item, item)
        sample = self.samples[index]
        # fork_rng: with num_workers=0 this runs in the training process, whose RNG (dropout)
        # must not be disturbed by data loading.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            rng = random.Random(seed)
            try:
                with VideoReader(sample.path, DECODE_LIMITS) as reader:
                    plan = self.spec.sampling.plan(reader.info.num_frames, self.train, rng)
                    frames = reader.read([i for clip in plan for i in clip])
            except VideoError as e:
                return BrokenVideo(str(sample.path), str(e))
            per_clip = self.spec.sampling.num_frames
            clips = list(frames.split(per_clip))
            if self.train:
                return self.augment(clips[0], sample.label)
            return make_views(clips, self.spec), sample.label


def collate(batch: list) -> tuple[torch.Tensor | None, torch.Tensor | None, list[BrokenVideo]]:
    """Stack the decodable samples; return the broken ones beside them."""
    broken = [b for b in batch if isinstance(b, BrokenVideo)]
    good = [b for b in batch if not isinstance(b, BrokenVideo)]
    if not good:
        return None, None, broken
    frames = torch.stack([g[0] for g in good])
    labels = torch.tensor([g[1] for g in good])
    return frames, labels, broken


class ShardedSampler(Sampler):
    """An epoch's permutation, split across ranks, starting at a given batch position.

    Yields (index, seed) pairs. Like DistributedSampler it pads the permutation so every rank
    gets the same number of samples (in training, a rank that ran out early would deadlock DDP).
    In evaluation (shuffle=False, pad=False) every sample is seen exactly once.
    """

    def __init__(
        self,
        size: int,
        rank: int = 0,
        world: int = 1,
        shuffle: bool = True,
        pad: bool = True,
        seed: int = 0,
    ):
        self.size, self.rank, self.world = size, rank, world
        self.shuffle, self.pad, self.seed = shuffle, pad, seed
        self.epoch = 0
        self.start = 0  # samples of this rank's shard already consumed (resume)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def _shard(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.size, generator=g).tolist()
        else:
            order = list(range(self.size))
        if self.pad:
            total = math.ceil(self.size / self.world) * self.world
            order += order[: total - len(order)]
        return order[self.rank :: self.world]

    def __iter__(self):
        shard = self._shard()
        for position in range(self.start, len(shard)):
            seed = (self.seed * 1_000_003 + self.epoch) * 1_000_003 + position * self.world
            yield shard[position], seed + self.rank

    def __len__(self) -> int:
        return len(self._shard()) - self.start


def test_loader(
    annotations: Annotations, spec: ViewSpec, num_workers: int, videos_per_batch: int = 8
) -> DataLoader:
    """Every video once, in file order, as collate()'s (views, labels, broken) triples."""
    data = VideoClips(annotations, spec, train=False)
    return DataLoader(
        data,
        batch_size=videos_per_batch,
        sampler=ShardedSampler(len(data), shuffle=False, pad=False),
        num_workers=num_workers,
        collate_fn=collate,
    )


def describe(annotations: Annotations) -> str:
    counts = [0] * len(annotations.class_names)
    for s in annotations.samples:
        counts[s.label] += 1
    text = f"{len(annotations.samples)} videos, {len(counts)} classes (min {min(counts)}/class)"
    if annotations.missing:
        text += (
            f", {len(annotations.missing)} listed videos not found (e.g. {annotations.missing[0]})"
        )
    return text
