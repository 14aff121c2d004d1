"""A synthetic AVA-style spatio-temporal action detection dataset, as real MP4 files.

Each video shows 2-3 "people" (vivid, outlined, asymmetric polygons) on a static cluttered
background. Key frames come at 1 Hz; around each one, a window of `window_frames` frames in which
every actor does one motion action (MOTIONS) and maybe carries a black square (`carry`, an
appearance action). The motion pairs work as in training/synthetic/shapes.py: a window of a
backward action is its forward partner's window, same random draws, played in reverse, so only
temporal order tells the two apart. Actors are multi-label (a motion, maybe carry) and are
annotated with their box at the key frame, in AVA's file formats (training/formats/ava.py)
and AVA's file names.

Between windows the actors jump to new poses (every window is a fresh draw); a frame outside
every window repeats the last frame shown before it (the first window's first frame, before that
window). A model must look at a key frame's window only.
"""

from __future__ import annotations

import colorsys
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from training.formats.ava import (
    Actor,
    Box,
    Key,
    Proposal,
    iou_matrix,
    write_annotations,
    write_exclusions,
    write_label_map,
    write_proposals,
)
from training.synthetic.shapes import (
    ROTATING_SHAPES,
    SHAPES,
    draw_background,
    place,
    vivid,
    write_mp4,
)

# (forward, backward): a backward window is its forward partner's window reversed in time.
# Image coordinates: x right, y down, so an increasing angle turns clockwise on screen.
MOTION_PAIRS: tuple[tuple[str, str], ...] = (
    ("move_right", "move_left"),
    ("turn_clockwise", "turn_anticlockwise"),
    ("approach", "retreat"),
)
MOTIONS: tuple[str, ...] = (
    "move_left",
    "move_right",
    "turn_clockwise",
    "turn_anticlockwise",
    "approach",
    "retreat",
    "stand",
)
ACTIONS: tuple[str, ...] = (*MOTIONS, "carry")
# AVA's label map ids are 1-based.
ACTION_IDS: dict[str, int] = {name: i + 1 for i, name in enumerate(ACTIONS)}
_REVERSE_OF = {backward: forward for forward, backward in MOTION_PAIRS}

CARRY_PROBABILITY = 0.4
MAX_ACTOR_IOU = 0.3  # between any two actors, over every pair of frames of a window
FALSE_POSITIVE_PROBABILITY = 0.5
SPLITS = ("train", "val")
_EXCLUSION_STREAM = 1000  # seeds the choice of excluded keys apart from every video's stream

FILES = {
    "label_map": "annotations/ava_action_list_v2.2.pbtxt",
    "train": "annotations/ava_train_v2.2.csv",
    "val": "annotations/ava_val_v2.2.csv",
    "exclusions": "annotations/ava_val_excluded_timestamps_v2.2.csv",
    "train_proposals": "annotations/ava_train_proposals.csv",
    "val_proposals": "annotations/ava_val_proposals.csv",
}


@dataclass(frozen=True)
class Person:
    """What stays the same about one actor through a video."""

    shape: np.ndarray  # unit polygon (farthest vertex at distance 1)
    radius: float  # pixels, at scale 1
    fill: tuple[int, int, int]
    outline: tuple[int, int, int]


@dataclass(frozen=True)
class Track:
    """One actor's pose in each frame of a window."""

    centres: np.ndarray  # (T, 2) pixels
    angles: np.ndarray  # (T,) degrees
    scales: np.ndarray  # (T,)


def _hue(rgb: tuple[int, int, int]) -> float:
    return colorsys.rgb_to_hsv(*(c / 255 for c in rgb))[0]


def _people(rng: np.random.Generator, size: int) -> list[Person]:
    shapes = list(ROTATING_SHAPES.values())
    people: list[Person] = []
    for _ in range(rng.integers(2, 4)):
        shape = shapes[rng.integers(len(shapes))]
        radius = rng.uniform(0.15, 0.22) * size
        outline = (0, 0, 0) if rng.uniform() < 0.5 else (255, 255, 255)
        # Hues apart, so that actors can be told apart (and followed) by colour.
        while True:
            fill = vivid(rng)
            gaps = [abs(_hue(fill) - _hue(p.fill)) for p in people]
            if all(min(g, 1 - g) > 0.15 for g in gaps):
                break
        people.append(Person(shape, radius, fill, outline))
    return people


def _forward_track(
    kind: str, person: Person, rng: np.random.Generator, num_frames: int, size: int
) -> Track:
    """The poses of `kind`, a forward motion or `stand`. Positions keep the actor (at its largest)
    inside the frame; its carried square may stick out a little."""
    u = np.linspace(0.0, 1.0, num_frames)
    angle = rng.uniform(0, 360)
    scales = np.ones(num_frames)
    if kind == "approach":
        # Geometric growth: the same ratio every frame; scale 1 mid-window.
        scales = rng.uniform(1.4, 1.7) ** (u - 0.5)
    margin = person.radius * scales.max()
    if kind == "move_right":
        travel = rng.uniform(0.15, 0.3) * size
        x = rng.uniform(margin, size - margin - travel) + travel * u
    else:
        x = np.full(num_frames, rng.uniform(margin, size - margin))
    y = np.full(num_frames, rng.uniform(margin, size - margin))
    angles = np.full(num_frames, angle)
    if kind == "turn_clockwise":
        # Steps well below 180 degrees: the turn's direction is unambiguous frame to frame.
        angles = angle + rng.uniform(60, 120) * u
    return Track(np.stack([x, y], axis=1), angles, scales)


def _actor_polygons(person: Person, track: Track, carry: bool) -> list[list[list[tuple]]]:
    """Per frame, the polygons to draw: the body, then the carried square if any. The square is
    held at the body's farthest vertex and turns and scales with the body."""
    tip = person.shape[np.argmax(np.linalg.norm(person.shape, axis=1))]
    frames = []
    for centre, angle, scale in zip(track.centres, track.angles, track.scales, strict=True):
        radius = person.radius * scale
        polygons = [place(person.shape, centre, radius, angle)]
        if carry:
            a = np.deg2rad(angle)
            rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
            held = centre + rot @ tip * radius
            polygons.append(place(SHAPES["square"], held, 0.3 * radius, angle))
        frames.append(polygons)
    return frames


def _pixel_box(polygons: list[list[tuple]]) -> np.ndarray:
    points = np.array([p for polygon in polygons for p in polygon])
    return np.concatenate([points.min(axis=0), points.max(axis=0)])


def _place_actors(
    people: Sequence[Person],
    motions: Sequence[str],
    carries: Sequence[bool],
    rng: np.random.Generator,
    num_frames: int,
    size: int,
) -> tuple[list[list[list[list[tuple]]]], list[np.ndarray]]:
    """Per actor, its polygons per frame and its (T, 4) pixel boxes, actors kept apart."""
    # Each actor is redrawn until it keeps clear of those already placed; if the first ones
    # leave no room, all are redrawn. Any placement has a positive probability, so this ends.
    for _ in range(1000):
        polygons, boxes = [], []
        for person, motion, carry in zip(people, motions, carries, strict=True):
            for _ in range(100):
                forward = _REVERSE_OF.get(motion, motion)
                frames = _actor_polygons(
                    person, _forward_track(forward, person, rng, num_frames, size), carry
                )
                box = np.array([_pixel_box(f) for f in frames])
                if all(iou_matrix(box, b).max() < MAX_ACTOR_IOU for b in boxes):
                    break
            else:
                break
            if motion in _REVERSE_OF:
                frames, box = frames[::-1], box[::-1]
            polygons.append(frames)
            boxes.append(box)
        else:
            return polygons, boxes
    raise RuntimeError("could not place the actors apart; the frame is too crowded")


def render_window(
    background: Image.Image,
    people: Sequence[Person],
    motions: Sequence[str],
    carries: Sequence[bool],
    rng: np.random.Generator,
    num_frames: int,
) -> tuple[np.ndarray, np.ndarray]:
    """(T, H, W, 3) uint8 frames of one window and (T, A, 4) normalised boxes of its actors.

    Actor i does motions[i] and carries a square if carries[i]. The random draws depend only on
    each motion's forward partner, and the no-overlap test compares every frame of one actor with
    every frame of another, so it does not depend on direction either: for equal rng states,
    swapping every actor's motion for its partner gives exactly the frames in reverse order.
    """
    if not len(people) == len(motions) == len(carries):
        raise ValueError("people, motions and carries must have one entry per actor")
    unknown = [m for m in motions if m not in MOTIONS]
    if unknown:
        raise ValueError(f"unknown motions {unknown}; motions are {', '.join(MOTIONS)}")
    size = background.width
    polygons, boxes = _place_actors(people, motions, carries, rng, num_frames, size)
    width = max(1, round(size / 40))
    rendered = []
    for t in range(num_frames):
        frame = background.copy()
        draw = ImageDraw.Draw(frame)
        for person, frames in zip(people, polygons, strict=True):
            body, *held = frames[t]
            draw.polygon(body, fill=person.fill, outline=person.outline, width=width)
            for square in held:
                draw.polygon(square, fill=(0, 0, 0), outline=(255, 255, 255), width=width)
        rendered.append(np.asarray(frame))
    # Normalised, pixel i spans [i, i + 1) / size. Pillow's painted pixels reach about half a
    # pixel beyond the vertices on either side (measured: within a pixel, unbiased).
    pixels = np.stack(boxes, axis=1) + [-0.5, -0.5, 0.5, 0.5]
    normalised = np.clip(pixels / size, 0.0, 1.0)
    return np.stack(rendered), normalised


def _key_frames(seconds: int, fps: int) -> list[tuple[int, int]]:
    """(timestamp, key frame index) for every key frame: 1 Hz, t = 1 .. seconds - 1."""
    return [(t, round(t * fps)) for t in range(1, seconds)]


@dataclass(frozen=True)
class SyntheticVideo:
    frames: np.ndarray  # (seconds * fps, H, W, 3) uint8
    actors: dict[int, list[Actor]]  # timestamp -> actors at its key frame


def render_video(
    rng: np.random.Generator,
    seconds: int,
    fps: int,
    size: int,
    window_frames: int,
    clutter: float,
) -> SyntheticVideo:
    """One video: windows around the key frames, edge frames repeated in between."""
    people = _people(rng, size)
    background = draw_background(rng, size, clutter)
    half = window_frames // 2
    total = seconds * fps
    frames: list[np.ndarray | None] = [None] * total
    actors: dict[int, list[Actor]] = {}
    for t, key in _key_frames(seconds, fps):
        motions = [MOTIONS[rng.integers(len(MOTIONS))] for _ in people]
        carries = [bool(rng.uniform() < CARRY_PROBABILITY) for _ in people]
        window, boxes = render_window(background, people, motions, carries, rng, window_frames)
        frames[key - half : key + half] = list(window)
        actors[t] = [
            Actor(
                box=tuple(float(v) for v in boxes[half, i]),
                actions=tuple(sorted([ACTION_IDS[motion]] + [ACTION_IDS["carry"]] * carry)),
                person_id=i,
            )
            for i, (motion, carry) in enumerate(zip(motions, carries, strict=True))
        ]
    # Frames before the first window hold its first frame; any others hold the last one shown.
    first = next(i for i, f in enumerate(frames) if f is not None)
    for i in range(total):
        if frames[i] is None:
            frames[i] = frames[first] if i < first else frames[i - 1]
    return SyntheticVideo(np.stack(frames), actors)


def _jitter(rng: np.random.Generator, box: Box) -> Box:
    """A detector-like box near `box`: IoU mostly above 0.7, always above 0.5."""
    truth = np.asarray(box)
    w, h = truth[2] - truth[0], truth[3] - truth[1]
    while True:
        moved = np.clip(truth + rng.normal(0, 0.05, 4) * [w, h, w, h], 0.0, 1.0)
        if moved[2] > moved[0] and moved[3] > moved[1] and iou_matrix(moved, truth)[0, 0] > 0.5:
            return tuple(float(v) for v in moved)


def _false_positive(rng: np.random.Generator, boxes: list[Box]) -> Box | None:
    """A person-sized box on the background (IoU < 0.3 with every actor), or None if the actors
    leave no room for one after a few tries."""
    for _ in range(50):
        w, h = rng.uniform(0.15, 0.4, 2)
        x, y = rng.uniform(0, 1 - w), rng.uniform(0, 1 - h)
        candidate = np.array([x, y, x + w, y + h])
        if all(iou_matrix(candidate, b)[0, 0] < 0.3 for b in boxes):
            return tuple(float(v) for v in candidate)
    return None


def _proposals(rng: np.random.Generator, actors: list[Actor]) -> list[Proposal]:
    proposals = [Proposal(_jitter(rng, a.box), round(rng.uniform(0.75, 1.0), 4)) for a in actors]
    if rng.uniform() < FALSE_POSITIVE_PROBABILITY:
        box = _false_positive(rng, [a.box for a in actors])
        if box is not None:
            proposals.append(Proposal(box, round(rng.uniform(0.05, 0.5), 4)))
    return proposals


def _check_arguments(
    num_train_videos, num_val_videos, seconds, fps, size, window_frames, clutter, exclude_fraction
) -> None:
    if num_train_videos < 1:
        raise ValueError(f"num_train_videos must be at least 1, not {num_train_videos}")
    if num_val_videos < 0:
        raise ValueError(f"num_val_videos must be at least 0, not {num_val_videos}")
    if seconds < 2:
        raise ValueError(
            f"seconds must be at least 2 (key frames are t = 1 .. seconds - 1), not {seconds}"
        )
    if window_frames < 2 or window_frames % 2:
        raise ValueError(f"window_frames must be even and at least 2, not {window_frames}")
    if fps < window_frames:
        raise ValueError(
            f"fps ({fps}) must be at least window_frames ({window_frames}): windows of key "
            "frames one second apart must not overlap"
        )
    if size < 32 or size % 2:
        raise ValueError(f"size must be even (yuv420p) and at least 32, not {size}")
    if not 0 <= clutter <= 1:
        raise ValueError(f"clutter must be between 0 and 1, not {clutter}")
    if not 0 <= exclude_fraction < 1:
        raise ValueError(f"exclude_fraction must be in [0, 1), not {exclude_fraction}")


def write_synthetic_ava(
    out_dir: str | os.PathLike,
    num_train_videos: int = 48,
    num_val_videos: int = 16,
    seconds: int = 6,
    fps: int = 8,
    size: int = 112,
    window_frames: int = 8,
    seed: int = 0,
    clutter: float = 0.25,
    exclude_fraction: float = 0.05,
) -> dict:
    """Write videos/<video_id>.mp4 and AVA's annotation files under out_dir; return a summary.

    Video i of a split is seeded by (seed, the split's position in SPLITS, i), so it does not
    depend on how many other videos there are. Existing files of the same names are overwritten.
    """
    _check_arguments(
        num_train_videos, num_val_videos, seconds, fps, size, window_frames, clutter,
        exclude_fraction,
    )  # fmt: skip
    out = Path(out_dir)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    paths = {name: out / rel for name, rel in FILES.items()}
    write_label_map(paths["label_map"], dict(enumerate(ACTIONS, start=1)))
    written = ["label_map"]

    counts = {}
    val_keys: list[Key] = []
    num_videos_of = {"train": num_train_videos, "val": num_val_videos}
    for s, split in enumerate(SPLITS):
        num_videos = num_videos_of[split]
        annotations: dict[Key, list[Actor]] = {}
        proposals: dict[Key, list[Proposal]] = {}
        for i in range(num_videos):
            video_id = f"synth_{split}_{i:04d}"
            video = render_video(
                np.random.default_rng([seed, s, i]), seconds, fps, size, window_frames, clutter
            )
            write_mp4(out / "videos" / f"{video_id}.mp4", video.frames, fps, keyint=fps)
            # Its own stream: proposals can change without changing the videos.
            proposal_rng = np.random.default_rng([seed, s, i, 1])
            for t, actors in video.actors.items():
                annotations[(video_id, t)] = actors
                proposals[(video_id, t)] = _proposals(proposal_rng, actors)
        # AVA's readers refuse empty files, so a split without videos gets none.
        if annotations:
            write_annotations(paths[split], annotations)
            write_proposals(paths[f"{split}_proposals"], proposals)
            written += [split, f"{split}_proposals"]
        counts[split] = {
            "videos": num_videos,
            "key_frames": len(annotations),
            "actors": sum(len(a) for a in annotations.values()),
        }
        if split == "val":
            val_keys = sorted(annotations)

    excluded = []
    if val_keys and exclude_fraction > 0:
        rng = np.random.default_rng([seed, _EXCLUSION_STREAM])
        count = max(1, round(exclude_fraction * len(val_keys)))
        excluded = sorted(val_keys[j] for j in rng.choice(len(val_keys), count, replace=False))
        write_exclusions(paths["exclusions"], excluded)
        written.append("exclusions")
    counts["val"]["excluded"] = len(excluded)
    for name in FILES.keys() - set(written):
        paths[name].unlink(missing_ok=True)  # left by an earlier run into the same folder

    return {
        "root": str(out),
        "videos": str(out / "videos"),
        "files": {name: str(paths[name]) for name in written},
        "action_names": dict(enumerate(ACTIONS, start=1)),
        "counts": counts,
        "seconds": seconds,
        "fps": fps,
        "size": size,
        "window_frames": window_frames,
        "seed": seed,
        "clutter": clutter,
        "exclude_fraction": exclude_fraction,
    }
