"""The arrow-of-time dataset cut from real footage (training/synthetic/arrow_of_time.py)."""

import itertools
import re

import numpy as np
import pytest

from training.formats.annotations import read_video_list
from training.synthetic.arrow_of_time import (
    CLASS_NAMES,
    clip_starts,
    motion_windows,
    write_arrow_dataset,
)
from video.decode import VideoReader
from video.packaged import packaged_clip


def test_clip_starts_stay_inside_their_region():
    assert clip_starts(0, 20, span=8, step=4) == [0, 4, 8, 12]
    assert clip_starts(20, 27, span=8, step=4) == []


@pytest.fixture(scope="module")
def arrow(tmp_path_factory):
    out = tmp_path_factory.mktemp("arrow")
    summary = write_arrow_dataset({"carphone": packaged_clip("carphone_pristine.mp4")}, out)
    return out, summary


def test_splits_are_balanced_and_separated_in_time(arrow):
    out, summary = arrow
    video = summary["videos"]["carphone"]
    stride, span = video["stride"], 8 * video["stride"]
    assert stride == 4  # 29.97 fps sampled at about 8 fps
    boundary = int(120 * 0.7)
    for split in ("train", "test"):
        ann = read_video_list(out / f"{split}.txt", out, out / "classes.txt")
        assert ann.class_names == CLASS_NAMES
        labels = [s.label for s in ann.samples]
        assert labels.count(0) == labels.count(1) == video[split] > 0
        for sample in ann.samples:
            start = int(re.search(r"_(\d{5})_", sample.path.name).group(1))
            end = start + span  # exclusive, in source frames
            assert (end <= boundary) if split == "train" else (start >= boundary)


def test_a_backward_clip_holds_the_forward_frames_reversed_bit_for_bit(arrow):
    out, _ = arrow
    forward = sorted((out / "clips" / "test").glob("*_forward.mp4"))
    assert forward
    for path in forward:
        backward = path.with_name(path.name.replace("_forward", "_backward"))
        with VideoReader(path) as a, VideoReader(backward) as b:
            assert a.info.num_frames == b.info.num_frames == 8
            fwd, bwd = a.read(range(8)), b.read(range(8))
        assert fwd.shape[-2:] == (128, 156)  # short side 128, even width
        assert fwd.equal(bwd.flip(0))
        assert not fwd.equal(bwd)  # real motion: the order is visible


def test_videos_too_short_for_both_splits_are_refused(tmp_path):
    with pytest.raises(ValueError, match="too short"):
        write_arrow_dataset(
            {"carphone": packaged_clip("carphone_pristine.mp4")}, tmp_path, num_frames=64
        )


def moving_square(frames=8, size=96, side=16, y=60, x0=10, step=4):
    """(T, size, size, 3) uint8: a bright square moving right on a black background."""
    clip = np.zeros((frames, size, size, 3), np.uint8)
    for t in range(frames):
        clip[t, y : y + side, x0 + step * t : x0 + step * t + side] = 255
    return clip


def test_motion_windows_go_where_the_clip_moves_and_ignore_its_direction():
    clip = moving_square()
    windows = motion_windows(clip, crop=48, count=2, min_motion=1.0)
    assert windows == motion_windows(clip[::-1], crop=48, count=2, min_motion=1.0)
    top, left = windows[0]
    # The square's whole path (rows 60-75, columns 10-53) lies inside the strongest window.
    assert top <= 60 and top + 48 >= 76 and left <= 10 and left + 48 >= 54
    for (y1, x1), (y2, x2) in itertools.combinations(windows, 2):
        assert max(abs(y1 - y2), abs(x1 - x2)) >= 24  # overlap at most half a side
    assert motion_windows(np.repeat(clip[:1], 8, axis=0), 48, 2, min_motion=1.0) == []


def test_motion_crops_are_windows_of_the_resized_frames(tmp_path):
    out = tmp_path / "arrow"
    summary = write_arrow_dataset(
        {"carphone": packaged_clip("carphone_pristine.mp4")},
        out,
        size=128,
        crop=64,
        train_fraction=0.5,
        crops_per_clip=2,
        min_motion=0.5,
    )
    assert summary["crop"] == 64 and summary["videos"]["carphone"]["train"] > 0
    for path in sorted((out / "clips" / "train").glob("*_forward.mp4"))[:4]:
        with VideoReader(path) as reader:
            assert (reader.info.height, reader.info.width) == (64, 64)
    with pytest.raises(ValueError, match="crop"):
        write_arrow_dataset({"carphone": packaged_clip("carphone_pristine.mp4")}, out, crop=200)
