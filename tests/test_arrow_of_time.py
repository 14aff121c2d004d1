"""The arrow-of-time dataset cut from real footage (training/arrow_of_time.py)."""

import re

import pytest

from training.annotations import read_video_list
from training.arrow_of_time import CLASS_NAMES, clip_starts, write_arrow_dataset
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
