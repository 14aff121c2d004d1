from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from cli import app
from training.formats.ava import (
    iou_matrix,
    read_annotations,
    read_exclusions,
    read_label_map,
    read_proposals,
)
from training.synthetic.ava import (
    ACTION_IDS,
    ACTIONS,
    FILES,
    MOTION_PAIRS,
    MOTIONS,
    Person,
    _forward_track,
    _people,
    render_video,
    render_window,
    write_synthetic_ava,
)
from training.synthetic.shapes import ROTATING_SHAPES, draw_background
from video.decode import VideoReader

TINY = dict(num_train_videos=2, num_val_videos=1, seconds=3, size=64, seed=5)
MOTION_IDS = {ACTION_IDS[m] for m in MOTIONS}
CARRY = ACTION_IDS["carry"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth_ava")
    return out, write_synthetic_ava(out, **TINY)


def _video_ids(split: str, count: int) -> list[str]:
    return [f"synth_{split}_{i:04d}" for i in range(count)]


def test_writes_the_ava_layout_and_it_reads_back(dataset):
    out, summary = dataset
    assert {p for p in (out / "annotations").iterdir()} == {out / rel for rel in FILES.values()}
    assert summary["files"] == {name: str(out / rel) for name, rel in FILES.items()}
    assert read_label_map(out / FILES["label_map"]) == dict(enumerate(ACTIONS, start=1))
    assert list(ACTIONS[:7]) == list(MOTIONS) and ACTIONS[7] == "carry"

    for split, count in (("train", 2), ("val", 1)):
        annotations = read_annotations(out / FILES[split], read_label_map(out / FILES["label_map"]))
        keys = {(v, t) for v in _video_ids(split, count) for t in (1, 2)}
        assert set(annotations) == keys
        for video_id in _video_ids(split, count):
            people = {len(annotations[(video_id, t)]) for t in (1, 2)}
            assert len(people) == 1 and people <= {2, 3}  # the same actors at every key frame
        for actors in annotations.values():
            assert sorted(a.person_id for a in actors) == list(range(len(actors)))
            for actor in actors:
                assert len(MOTION_IDS & set(actor.actions)) == 1
                assert set(actor.actions) <= MOTION_IDS | {CARRY}
                x1, y1, x2, y2 = actor.box
                assert 0 <= x1 < x2 <= 1 and 0 <= y1 < y2 <= 1
                # An actor is 15-22% of the frame side in radius, a box about twice that.
                assert 0.1 < x2 - x1 < 0.7 and 0.1 < y2 - y1 < 0.7
        counts = summary["counts"][split]
        assert counts["videos"] == count and counts["key_frames"] == 2 * count
        assert counts["actors"] == sum(len(a) for a in annotations.values())

    for path in sorted((out / "videos").glob("*.mp4")):
        with VideoReader(path) as reader:
            assert reader.info.num_frames == 3 * 8
            assert (reader.info.width, reader.info.height) == (64, 64)
            assert reader.read([0, 23]).shape == (2, 3, 64, 64)
    assert len(list((out / "videos").glob("*.mp4"))) == 3


def test_video_matches_its_rendering(dataset):
    """The MP4 of video i of a split is the rendering seeded by (seed, split, i), in order."""
    out, _ = dataset
    rendered = render_video(np.random.default_rng([5, 1, 0]), 3, 8, 64, 8, 0.25)
    with VideoReader(out / "videos/synth_val_0000.mp4") as reader:
        decoded = reader.read(range(24)).permute(0, 2, 3, 1).numpy()
    assert np.abs(decoded.astype(int) - rendered.frames).mean() < 8  # lossy, but the same
    annotations = read_annotations(out / FILES["val"])
    for t, actors in rendered.actors.items():
        written = annotations[("synth_val_0000", t)]
        assert [a.actions for a in written] == [a.actions for a in actors]
        np.testing.assert_allclose([a.box for a in written], [a.box for a in actors], atol=6e-4)


def test_windows_lie_inside_the_video_and_do_not_overlap():
    # fps 10 with 8-frame windows: gaps between windows are filled with held frames.
    video = render_video(np.random.default_rng(0), 4, 10, 64, 8, 0.25)
    assert video.frames.shape == (40, 64, 64, 3) and sorted(video.actors) == [1, 2, 3]
    # Windows are frames 6-13, 16-23, 26-33; the rest repeat the last frame shown.
    for held, source in ((0, 6), (5, 6), (14, 13), (15, 13), (34, 33), (39, 33)):
        np.testing.assert_array_equal(video.frames[held], video.frames[source])
    # A new draw per window: the picture changes from one window to the next.
    assert not np.array_equal(video.frames[13], video.frames[16])


def _pixels_inside(mask: np.ndarray, box, size: int, slack_px: float) -> bool:
    """Every True pixel of mask lies in the normalised box grown by slack_px pixels."""
    ys, xs = np.nonzero(mask)
    x1, y1, x2, y2 = np.asarray(box) * size
    return bool(
        np.all(xs >= x1 - slack_px)
        and np.all(xs + 1 <= x2 + slack_px)
        and np.all(ys >= y1 - slack_px)
        and np.all(ys + 1 <= y2 + slack_px)
    )


@pytest.mark.parametrize("seed", range(4))
def test_boxes_hold_their_actor(seed):
    """With a flat background, each actor's fill colour lies in its own box, at every frame."""
    rng = np.random.default_rng(seed)
    people = _people(rng, 96)
    background = draw_background(rng, 96, clutter=0.0)
    motions = [MOTIONS[(seed + i) % len(MOTIONS)] for i in range(len(people))]
    frames, boxes = render_window(background, people, motions, [True] * len(people), rng, 8)
    for t in range(8):
        for i, person in enumerate(people):
            mask = np.all(frames[t] == person.fill, axis=2)
            assert mask.sum() > 20
            assert _pixels_inside(mask, boxes[t, i], 96, slack_px=1)
            for j in range(len(people)):
                if j != i:
                    assert not _pixels_inside(mask, boxes[t, j], 96, slack_px=1)


PAINT = [(250, 40, 40), (0, 0, 0), (255, 255, 255)]  # fill, carried square, outlines


@pytest.mark.parametrize("carry", [False, True])
def test_box_is_tight(carry):
    """One actor with a white outline on a flat background: the box is the bounding box of all
    it paints (fill, outline, carried square), to within about half a pixel."""
    shape = ROTATING_SHAPES["L"]
    person = Person(shape, 0.2 * 96, PAINT[0], PAINT[2])
    for seed in range(4):
        rng = np.random.default_rng(seed)
        background = draw_background(rng, 96, clutter=0.0)
        frames, boxes = render_window(background, [person], ["approach"], [carry], rng, 8)
        for t in (0, 4, 7):
            # A flat, muted background has neither pure black nor pure white pixels.
            painted = np.any([np.all(frames[t] == c, axis=2) for c in PAINT], axis=0)
            ys, xs = np.nonzero(painted)
            found = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]) / 96
            assert np.abs(found - boxes[t, 0]).max() * 96 <= 0.6
        black = np.all(frames[4] == 0, axis=2).sum()
        assert (black > 10) == carry


@pytest.mark.parametrize(("forward", "backward"), MOTION_PAIRS)
def test_backward_window_is_forward_window_reversed(forward, backward):
    for seed in range(3):
        setup = np.random.default_rng([seed, 0])
        people = _people(setup, 64)
        background = draw_background(setup, 64, clutter=1.0)
        n = len(people)
        # Any actors doing the pair's forward action (or standing) do the backward one instead.
        chosen = np.random.default_rng([seed, 1])
        forwards = [forward if chosen.uniform() < 0.7 else "stand" for _ in range(n)]
        forwards[0] = forward
        backwards = [backward if m == forward else m for m in forwards]
        carries = [bool(chosen.uniform() < 0.5) for _ in range(n)]
        f_frames, f_boxes = render_window(
            background, people, forwards, carries, np.random.default_rng(seed), 8
        )
        b_frames, b_boxes = render_window(
            background, people, backwards, carries, np.random.default_rng(seed), 8
        )
        np.testing.assert_array_equal(b_frames, f_frames[::-1])
        np.testing.assert_array_equal(b_boxes, f_boxes[::-1])
        # The actor does change over time, so the order carries information.
        assert not np.array_equal(f_frames[0], f_frames[-1])


@pytest.mark.parametrize("seed", range(5))
def test_forward_motions_move_as_named(seed):
    """x grows to the right, an increasing angle turns clockwise on screen (y down)."""
    person = _people(np.random.default_rng(seed), 112)[0]

    def track(kind):
        return _forward_track(kind, person, np.random.default_rng(seed), 8, 112)

    right = track("move_right")
    assert np.all(np.diff(right.centres[:, 0]) > 1) and np.ptp(right.centres[:, 1]) == 0
    assert np.all(np.diff(track("turn_clockwise").angles) > 5)
    assert np.all(np.diff(track("approach").scales) > 0)
    still = track("stand")
    assert np.ptp(still.centres, axis=0).max() == np.ptp(still.angles) == 0
    assert np.all(still.scales == 1)


def test_actors_keep_apart():
    for seed in range(20):
        video = render_video(np.random.default_rng(seed), 3, 8, 64, 8, 0.25)
        for actors in video.actors.values():
            boxes = np.array([a.box for a in actors])
            ious = iou_matrix(boxes, boxes)
            assert ious[~np.eye(len(actors), dtype=bool)].max() < 0.3


def test_same_arguments_same_bytes(dataset, tmp_path):
    out, _ = dataset
    write_synthetic_ava(tmp_path, **TINY)
    files = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    assert len(files) == len(FILES) + 3
    for rel in files:
        assert (tmp_path / rel).read_bytes() == (out / rel).read_bytes(), rel
    other = tmp_path / "other"
    write_synthetic_ava(other, **{**TINY, "seed": 6})
    assert (other / FILES["train"]).read_bytes() != (out / FILES["train"]).read_bytes()


def test_proposals_and_exclusions(dataset):
    out, summary = dataset
    for split in ("train", "val"):
        annotations = read_annotations(out / FILES[split])
        proposals = read_proposals(out / FILES[f"{split}_proposals"])
        assert set(proposals) == set(annotations)
        for key, actors in annotations.items():
            boxes = np.array([p.box for p in proposals[key]])
            scores = np.array([p.score for p in proposals[key]])
            assert np.all((scores >= 0) & (scores <= 1))
            truth = np.array([a.box for a in actors])
            ious = iou_matrix(truth, boxes)  # (actors, proposals)
            assert np.all(ious.max(axis=1) > 0.5)
            # Confident boxes are the actors'; the rest are false positives on the background.
            confident = scores >= 0.75
            assert confident.sum() == len(actors) and len(scores) <= len(actors) + 1
            assert np.all(ious[:, ~confident] < 0.3)

    excluded = read_exclusions(out / FILES["exclusions"])
    assert len(excluded) == summary["counts"]["val"]["excluded"] == 1
    assert excluded <= set(read_annotations(out / FILES["val"]))


def test_exclusions_follow_the_fraction_and_seed(tmp_path):
    common = dict(num_train_videos=1, num_val_videos=3, seconds=5, size=32)
    a = write_synthetic_ava(tmp_path / "a", exclude_fraction=0.5, seed=0, **common)
    assert a["counts"]["val"]["excluded"] == 6  # half of 3 videos x 4 key frames
    none = write_synthetic_ava(tmp_path / "b", exclude_fraction=0.0, **common)
    assert none["counts"]["val"]["excluded"] == 0 and "exclusions" not in none["files"]
    assert not (tmp_path / "b" / FILES["exclusions"]).exists()


def test_without_val_videos_writes_train_only(tmp_path):
    summary = write_synthetic_ava(tmp_path, num_train_videos=1, num_val_videos=0, seconds=2)
    assert set(summary["files"]) == {"label_map", "train", "train_proposals"}
    assert summary["counts"]["val"] == {"videos": 0, "key_frames": 0, "actors": 0, "excluded": 0}
    assert read_annotations(tmp_path / FILES["train"]).keys() == {("synth_train_0000", 1)}


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"num_train_videos": 0}, "num_train_videos"),
        ({"num_val_videos": -1}, "num_val_videos"),
        ({"seconds": 1}, "seconds"),
        ({"size": 30}, "size"),
        ({"size": 65}, "size"),
        ({"fps": 4}, "fps"),
        ({"window_frames": 7}, "window_frames"),
        ({"clutter": 1.5}, "clutter"),
        ({"exclude_fraction": 1.0}, "exclude_fraction"),
    ],
)
def test_rejects_bad_arguments(tmp_path, kwargs, name):
    with pytest.raises(ValueError, match=name):
        write_synthetic_ava(tmp_path, **kwargs)
    assert not (tmp_path / "videos").exists()


def test_cli_writes_the_layout(tmp_path):
    out = tmp_path / "ava"
    args = ["synth", str(out), "--task", "ava", "--train-videos", "1", "--val-videos", "1"]
    result = CliRunner().invoke(app, [*args, "--seconds", "2", "--size", "64"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["size"] == 64 and summary["counts"]["train"]["key_frames"] == 1
    assert sorted(p.name for p in (out / "videos").iterdir()) == [
        "synth_train_0000.mp4",
        "synth_val_0000.mp4",
    ]
    for rel in FILES.values():
        assert (out / rel).is_file()
    with VideoReader(out / "videos" / "synth_val_0000.mp4") as reader:
        assert reader.info.num_frames == 16

    # The frame size defaults to 112 for ava (64 for classify); bad values exit with a message.
    one = ["--train-videos", "1", "--val-videos", "0", "--seconds", "2"]
    result = CliRunner().invoke(app, ["synth", str(tmp_path / "big"), "--task", "ava", *one])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["size"] == 112
    bad = ["synth", str(tmp_path / "bad"), "--task", "ava", "--size", "33"]
    result = CliRunner().invoke(app, bad)
    assert result.exit_code == 2 and "size" in result.output
