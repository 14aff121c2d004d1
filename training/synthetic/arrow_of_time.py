"""The arrow of time on real footage: clips of real videos, shown forward or time-reversed.

Label 0 = forward, 1 = backward. Only temporal modelling can solve it: a clip and its reversal
hold the same frames, so a model that pools frames without order (the image model) gives both
the same scores and is right on exactly half of them.

Each video is split by time: clips from the first `train_fraction` of its frames go to train,
clips from the rest to test, with no frame shared. Frames are sampled at about `target_fps`
(stride = round(fps / target_fps), at least 1), so a clip of `num_frames` spans about the same
time in every video. Every clip is written twice, forward and reversed, so both splits are
exactly balanced. Clips are intra-only H.264 (every frame a keyframe): the codec treats each
frame alone, so the reversed file holds the very same frames, with no compression trace of the
order it was encoded in.

With `crop`, a clip is a `crop` x `crop` window of the resized frames, placed where the clip
moves most: up to `crops_per_clip` windows per time span, not overlapping by more than half,
each with a mean absolute frame difference of at least `min_motion` grey levels. Static windows
carry no arrow of time, and a whole frame shrunk to a CPU-sized input leaves a walking person a
few pixels tall. Motion energy (the sum of |frame t+1 - frame t|) is the same for a clip and its
reversal, so where the windows go says nothing about the label.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from training.formats.annotations import Annotations, Sample, write_video_list
from training.synthetic.shapes import write_mp4
from video.decode import VideoReader
from video.views import resize_short_side

CLASS_NAMES = ["forward", "backward"]
SPLITS = ("train", "test")


def clip_starts(first: int, end: int, span: int, step: int) -> list[int]:
    """Start frames of clips of `span` frames inside [first, end), every `step` frames."""
    return list(range(first, end - span + 1, step))


def motion_windows(
    clip: np.ndarray, crop: int, count: int, min_motion: float
) -> list[tuple[int, int]]:
    """(top, left) of up to `count` `crop`-sized windows of (T, H, W, 3) uint8 frames where they
    move most, strongest first; windows overlap by at most half a side."""
    grey = clip.astype(np.float32).mean(axis=-1)
    energy = np.abs(np.diff(grey, axis=0)).mean(axis=0)  # (H, W), symmetric in time
    # Box sums over every window position via an integral image.
    integral = np.pad(energy.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    box = (
        integral[crop:, crop:]
        - integral[:-crop, crop:]
        - integral[crop:, :-crop]
        + integral[:-crop, :-crop]
    ) / (crop * crop)
    stride = max(1, crop // 8)
    candidates = [
        (box[y, x], y, x)
        for y in range(0, box.shape[0], stride)
        for x in range(0, box.shape[1], stride)
        if box[y, x] >= min_motion
    ]
    chosen: list[tuple[int, int]] = []
    for _, y, x in sorted(candidates, reverse=True):
        if len(chosen) == count:
            break
        if all(max(abs(y - cy), abs(x - cx)) >= crop // 2 for cy, cx in chosen):
            chosen.append((y, x))
    return chosen


def read_resized(path: Path, size: int, chunk: int = 32) -> tuple[np.ndarray, float]:
    """All frames of a video, short side resized to `size`, as (N, H, W, 3) uint8; and its fps.
    Decoded in chunks so a long 1080p video never sits in memory at full size."""
    with VideoReader(path) as reader:
        n, fps = reader.info.num_frames, reader.info.fps
        parts = [
            resize_short_side(reader.read(list(range(i, min(i + chunk, n)))), size)
            for i in range(0, n, chunk)
        ]
    frames = np.concatenate([p.permute(0, 2, 3, 1).numpy() for p in parts])
    h, w = frames.shape[1] // 2 * 2, frames.shape[2] // 2 * 2  # even sizes for yuv420p
    return frames[:, :h, :w], fps


def write_arrow_dataset(
    videos: Mapping[str, str | os.PathLike],
    out_dir: str | os.PathLike,
    num_frames: int = 8,
    target_fps: float = 8.0,
    size: int = 128,
    train_fraction: float = 0.7,
    train_step: int = 2,
    test_step: int = 4,
    crop: int | None = None,
    crops_per_clip: int = 2,
    min_motion: float = 2.0,
) -> dict:
    """Write clips/<split>/<video>_<start>_{forward,backward}.mp4, train/test.txt, classes.txt.

    `train_step` / `test_step` are the distances between clip starts, in sampled frames (a clip
    is `num_frames` sampled frames), so training clips overlap more than test clips do.
    `size` is the short side the frames are resized to; `crop` (optional) cuts motion windows
    from them (module docstring). Returns a summary with the clip counts per video and split.
    """
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"train_fraction must be between 0 and 1, not {train_fraction}")
    if crop is not None and not 0 < crop <= size:
        raise ValueError(f"crop must be between 1 and size ({size}), not {crop}")
    out = Path(out_dir)
    samples: dict[str, list[Sample]] = {s: [] for s in SPLITS}
    per_video = {}
    for name, path in videos.items():
        frames, fps = read_resized(Path(path), size)
        stride = max(1, round(fps / target_fps))
        span = num_frames * stride
        boundary = int(len(frames) * train_fraction)
        regions = {
            "train": (0, boundary, train_step * stride),
            "test": (boundary, len(frames), test_step * stride),
        }
        stem = Path(name).stem
        per_video[name] = {"fps": round(fps, 3), "stride": stride}
        for split, (first, end, step) in regions.items():
            folder = out / "clips" / split
            folder.mkdir(parents=True, exist_ok=True)
            count = 0
            for start in clip_starts(first, end, span, step):
                clip = frames[start : start + span : stride]
                if crop is None:
                    windows = {f"{start:05d}": clip}
                else:
                    windows = {
                        f"{start:05d}_{y:04d}_{x:04d}": clip[:, y : y + crop, x : x + crop]
                        for y, x in motion_windows(clip, crop, crops_per_clip, min_motion)
                    }
                for key, window in windows.items():
                    for label, ordered in ((0, window), (1, window[::-1])):
                        file = folder / f"{stem}_{key}_{CLASS_NAMES[label]}.mp4"
                        frames_out = np.ascontiguousarray(ordered)
                        write_mp4(file, frames_out, fps=round(target_fps), keyint=1)
                        samples[split].append(Sample(file, label))
                count += len(windows)
            per_video[name][split] = count
    if not samples["train"] or not samples["test"]:
        raise ValueError(f"the videos are too short for {num_frames}-frame clips in both splits")
    lists = {}
    for split in SPLITS:
        lists[split] = out / f"{split}.txt"
        write_video_list(
            Annotations(samples[split], CLASS_NAMES), lists[split], out / "classes.txt", out
        )
    return {
        "root": str(out),
        "lists": {s: str(p) for s, p in lists.items()},
        "classes_file": str(out / "classes.txt"),
        "counts": {s: len(samples[s]) for s in SPLITS},
        "videos": per_video,
        "num_frames": num_frames,
        "target_fps": target_fps,
        "size": size,
        "crop": crop,
    }
