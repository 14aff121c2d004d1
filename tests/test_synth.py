import collections
from pathlib import Path

import av
import numpy as np
import pytest

from training.formats.annotations import read_class_names, read_video_list
from training.synthetic.shapes import (
    CLASS_PAIRS,
    CLASSES,
    _track,
    draw_background,
    synth_frames,
    write_mp4,
    write_synthetic_dataset,
)

TINY = dict(num_videos_per_class=4, split_fractions=(2, 1, 1), num_frames=6, size=32, seed=3)


def decode(path: Path) -> tuple[np.ndarray, str]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        return np.stack(frames), stream.codec_context.name


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    return out, write_synthetic_dataset(out, **TINY)


def test_writes_decodable_h264_videos(dataset):
    out, summary = dataset
    videos = sorted((out / "videos").rglob("*.mp4"))
    assert len(videos) == 8 * 4
    for path in videos:
        frames, codec = decode(path)
        assert codec == "h264"
        assert frames.shape == (6, 32, 32, 3)
    assert summary["counts"] == {"train": 16, "val": 8, "test": 8}


def test_decoded_video_matches_rendering(dataset):
    out, _ = dataset
    frames, _ = decode(out / "videos/rotating_clockwise/rotating_clockwise_0001.mp4")
    rng = np.random.default_rng([TINY["seed"], CLASSES.index("rotating_clockwise"), 1])
    rendered = synth_frames("rotating_clockwise", rng, num_frames=6, size=32)
    # Lossy (crf 18, 4:2:0 chroma), but the same picture in the same order.
    assert np.abs(frames.astype(int) - rendered).mean() < 8


def test_lists_parse_and_classes_are_balanced(dataset):
    out, summary = dataset
    assert read_class_names(out / "classes.txt") == list(CLASSES) == summary["class_names"]
    for split, per_class in (("train", 2), ("val", 1), ("test", 1)):
        ann = read_video_list(out / f"{split}.txt", out, out / "classes.txt")
        assert all(s.path.is_file() for s in ann.samples)
        assert collections.Counter(s.label for s in ann.samples) == dict.fromkeys(
            range(8), per_class
        )
        assert all(CLASSES[s.label] == s.path.parent.name for s in ann.samples)


def test_same_seed_same_dataset_and_subsets_agree(dataset, tmp_path):
    out, _ = dataset
    # A subset of classes in another order: each class's clips depend only on (seed, class, i).
    classes = ["shrinking", "moving_up"]
    again = write_synthetic_dataset(tmp_path, **{**TINY, "classes": classes})
    assert again["class_names"] == classes
    for name in classes:
        for i in range(4):
            rel = f"videos/{name}/{name}_{i:04d}.mp4"
            # libx264's output is reproducible only with mbtree off (see write_mp4).
            assert (tmp_path / rel).read_bytes() == (out / rel).read_bytes()
            np.testing.assert_array_equal(decode(tmp_path / rel)[0], decode(out / rel)[0])
    write_synthetic_dataset(tmp_path / "again", **TINY)
    for name in ("train.txt", "val.txt", "test.txt", "classes.txt"):
        assert (tmp_path / "again" / name).read_bytes() == (out / name).read_bytes()


def test_encoding_is_reproducible_and_seekable(tmp_path):
    """Full-size clips encoded twice, in opposite orders. With libx264's mbtree on, this finds
    differing bytes: its output then depends on what the process encoded before."""
    clips = [synth_frames(c, np.random.default_rng([0, k])) for k, c in enumerate(CLASSES)]
    first, second = [], []
    for runs, order in ((first, range(8)), (second, reversed(range(8)))):
        for i in order:
            path = tmp_path / f"{len(runs)}.mp4"
            write_mp4(path, clips[i])
            runs.append((i, path.read_bytes()))
    assert sorted(first) == sorted(second)
    with av.open(str(path)) as container:
        keyframes = [frame.key_frame for frame in container.decode(video=0)]  # display order
    assert [i for i, key in enumerate(keyframes) if key] == [0, 8]


def test_different_seeds_differ():
    a = synth_frames("growing", np.random.default_rng(1), 6, 32)
    b = synth_frames("growing", np.random.default_rng(2), 6, 32)
    assert not np.array_equal(a, b)


@pytest.mark.parametrize(("forward", "backward"), CLASS_PAIRS)
def test_partner_is_the_forward_clip_reversed(forward, backward):
    for seed in range(3):
        clip = synth_frames(forward, np.random.default_rng(seed), 8, 32)
        partner = synth_frames(backward, np.random.default_rng(seed), 8, 32)
        np.testing.assert_array_equal(partner, clip[::-1])
        # The object does change over time, so order carries information.
        assert not np.array_equal(clip[0], clip[-1])


def _centres(polygons) -> np.ndarray:
    return np.array([np.mean(p, axis=0) for p in polygons])


def _area(polygon) -> float:
    x, y = np.asarray(polygon).T
    return 0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1)))


@pytest.mark.parametrize("seed", range(5))
def test_forward_classes_move_as_named(seed):
    """x grows to the right, y grows downwards, an increasing angle turns clockwise on screen."""

    def track(kind):
        return _track(kind, np.random.default_rng(seed), 16, 64)

    right, down = _centres(track("moving_right")), _centres(track("moving_down"))
    assert np.all(np.diff(right[:, 0]) > 1) and np.ptp(right[:, 1]) < 1e-9
    assert np.all(np.diff(down[:, 1]) > 1) and np.ptp(down[:, 0]) < 1e-9

    # A rigid turn rotates every edge by the same angle, wherever the centre is.
    edges = np.array([np.subtract(p[1], p[0]) for p in track("rotating_clockwise")])
    steps = np.diff(np.degrees(np.unwrap(np.arctan2(edges[:, 1], edges[:, 0]))))
    assert np.all((steps >= 15) & (steps <= 30))

    areas = [_area(p) for p in track("growing")]
    assert np.all(np.diff(areas) > 0) and areas[-1] / areas[0] == pytest.approx(16)


def test_background_is_cluttered():
    for seed in range(5):
        background = np.asarray(draw_background(np.random.default_rng(seed), 64)).reshape(-1, 3)
        assert background.std(axis=0).mean() > 8
        assert len(np.unique(background, axis=0)) > 50


def test_clutter_knob_changes_only_the_background():
    flat = np.asarray(draw_background(np.random.default_rng(0), 64, clutter=0.0)).reshape(-1, 3)
    assert len(np.unique(flat, axis=0)) == 1
    plain = synth_frames("moving_right", np.random.default_rng(0), 8, 64, clutter=0.0)
    busy = synth_frames("moving_right", np.random.default_rng(0), 8, 64, clutter=1.0)

    # Same draws, so the same object on the same path: pixels that change over time agree.
    def changing(clip):
        return np.any(clip != clip[:1], axis=(0, 3))

    assert np.mean(changing(plain) == changing(busy)) > 0.95


def test_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="classes must be"):
        write_synthetic_dataset(tmp_path, classes=["moving_sideways"])
    with pytest.raises(ValueError, match="leave a split empty"):
        write_synthetic_dataset(tmp_path, num_videos_per_class=2)
    with pytest.raises(ValueError, match="clutter"):
        synth_frames("growing", np.random.default_rng(0), 4, 32, clutter=2)
    with pytest.raises(ValueError, match="even"):
        synth_frames("growing", np.random.default_rng(0), 4, 33)
