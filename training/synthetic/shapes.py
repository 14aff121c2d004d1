"""A synthetic video dataset in which only the ORDER of frames tells classes apart.

Classes come in pairs (CLASS_PAIRS). A clip of the second class of a pair is a clip of the first
class played backwards: same renderer, same random draws, frames reversed. Both classes therefore
draw their clips' frame *sets* from one distribution, and a model that pools frames without
regard to their order (an image model with temporal mean pooling) cannot beat chance within a
pair. A model that relates frames across time (ZeroI2V's temporal heads) can.

Each clip: a static cluttered background (smooth colour noise, muted rectangles and ellipses,
small static distractor shapes) and one large saturated outlined shape that moves, rotates or
changes size. Frames are rendered with Pillow and written as H.264 MP4s with PyAV.
"""

from __future__ import annotations

import colorsys
import os
from collections.abc import Sequence
from pathlib import Path

import av
import numpy as np
from PIL import Image, ImageDraw

from training.formats.annotations import Annotations, Sample, write_video_list

# (forward, backward): the backward class is the forward class's clip reversed in time.
# Image coordinates: x right, y down, so an increasing angle turns clockwise on screen.
CLASS_PAIRS: tuple[tuple[str, str], ...] = (
    ("moving_right", "moving_left"),
    ("moving_down", "moving_up"),
    ("rotating_clockwise", "rotating_anticlockwise"),
    ("growing", "shrinking"),
)
CLASSES: tuple[str, ...] = tuple(name for pair in CLASS_PAIRS for name in pair)
_REVERSE_OF = {backward: forward for forward, backward in CLASS_PAIRS}

SPLITS = ("train", "val", "test")


def _unit(points: Sequence[tuple[float, float]]) -> np.ndarray:
    """Polygon vertices scaled so the farthest vertex is at distance 1 from the origin."""
    p = np.asarray(points, dtype=np.float64)
    return p / np.linalg.norm(p, axis=1).max()


def _regular(n: int, phase_deg: float = 0.0) -> np.ndarray:
    a = np.deg2rad(phase_deg) + 2 * np.pi * np.arange(n) / n
    return np.stack([np.cos(a), np.sin(a)], axis=1)


# Shapes for motion and scaling: any orientation will do.
SHAPES = {
    "square": _unit([(-1, -1), (1, -1), (1, 1), (-1, 1)]),
    "circle": _regular(24),
    "triangle": _regular(3, -90),
    "cross": _unit(
        [(-0.3, -1), (0.3, -1), (0.3, -0.3), (1, -0.3), (1, 0.3), (0.3, 0.3)]
        + [(0.3, 1), (-0.3, 1), (-0.3, 0.3), (-1, 0.3), (-1, -0.3), (-0.3, -0.3)]
    ),
}
# Shapes for rotation: no rotational symmetry, so the direction of a turn is unambiguous
# for any step below 180 degrees.
ROTATING_SHAPES = {
    "L": _unit([(-1, -1), (-0.3, -1), (-0.3, 0.4), (1, 0.4), (1, 1), (-1, 1)]),
    "arrow": _unit(
        [(-1, -0.25), (0.2, -0.25), (0.2, -0.7), (1, 0), (0.2, 0.7), (0.2, 0.25)] + [(-1, 0.25)]
    ),
    "T": _unit(
        [(-1, -1), (1, -1), (1, -0.45), (0.25, -0.45), (0.25, 1), (-0.25, 1)]
        + [(-0.25, -0.45), (-1, -0.45)]
    ),
}


def place(shape: np.ndarray, centre, radius: float, angle_deg: float) -> list[tuple]:
    a = np.deg2rad(angle_deg)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    pts = shape @ rot.T * radius + np.asarray(centre, dtype=np.float64)
    return [tuple(p) for p in pts]


def vivid(rng: np.random.Generator) -> tuple[int, int, int]:
    rgb = colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(0.65, 1.0), rng.uniform(0.8, 1.0))
    return tuple(int(round(255 * c)) for c in rgb)


def _muted(rng: np.random.Generator) -> tuple[int, int, int]:
    rgb = colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(0.0, 0.35), rng.uniform(0.3, 0.75))
    return tuple(int(round(255 * c)) for c in rgb)


def draw_background(rng: np.random.Generator, size: int, clutter: float = 1.0) -> Image.Image:
    """Static clutter: smooth colour noise, muted blocks and blobs, small vivid distractors.

    `clutter` scales it: 0 is a flat colour, 1 the full clutter, values between fade the blocks
    towards the base colour and draw fewer distractors. The random draws are the same whatever
    its value, so a clip keeps its object and motion when only the clutter changes.
    """
    k = size / 64
    base = np.asarray(_muted(rng), np.float64)
    grid = base + clutter * rng.normal(0, 25, (4, 4, 3))
    image = Image.fromarray(np.clip(grid, 0, 255).round().astype(np.uint8)).resize(
        (size, size), Image.Resampling.BILINEAR
    )
    draw = ImageDraw.Draw(image)

    def faded(colour: tuple[int, int, int]) -> tuple[int, ...]:
        return tuple(int(round(c)) for c in base + clutter * (np.asarray(colour) - base))

    for _ in range(rng.integers(3, 7)):
        w, h = rng.uniform(8, 32, 2) * k
        x, y = rng.uniform(-w / 2, size - w / 2), rng.uniform(-h / 2, size - h / 2)
        ellipse, colour = rng.uniform() < 0.5, faded(_muted(rng))
        if clutter > 0:
            (draw.ellipse if ellipse else draw.rectangle)((x, y, x + w, y + h), fill=colour)
    # Distractors look like the moving object, only smaller and still: the class is in the
    # motion, not in which shapes are on screen.
    kinds = list(SHAPES.values()) + list(ROTATING_SHAPES.values())
    count = rng.integers(2, 5)
    for i in range(count):
        shape = kinds[rng.integers(len(kinds))]
        radius = rng.uniform(3, 5.5) * k
        centre = rng.uniform(radius, size - radius, 2)
        polygon, colour = place(shape, centre, radius, rng.uniform(0, 360)), vivid(rng)
        if i < round(clutter * count):
            draw.polygon(polygon, fill=colour)
    return image


def _track(kind: str, rng: np.random.Generator, num_frames: int, size: int) -> list[list[tuple]]:
    """Per frame, the vertices of the object of a forward class."""
    k = size / 64
    t = np.arange(num_frames, dtype=np.float64)
    span = max(num_frames - 1, 1)
    if kind in ("moving_right", "moving_down"):
        shape = list(SHAPES.values())[rng.integers(len(SHAPES))]
        radius = rng.uniform(6, 10) * k
        room = size - 2 * radius
        # Travel up to 1.1x the room: a little of the object may leave the frame at either end.
        speed = rng.uniform(0.6, 1.1) * room / span
        slack = room - speed * span
        start = radius + (rng.uniform(0, slack) if slack > 0 else slack / 2)
        along = start + speed * t
        across = np.full_like(t, rng.uniform(radius, size - radius))
        xy = np.stack([along, across] if kind == "moving_right" else [across, along], axis=1)
        angle = rng.uniform(0, 360)
        return [place(shape, c, radius, angle) for c in xy]
    if kind == "rotating_clockwise":
        shape = list(ROTATING_SHAPES.values())[rng.integers(len(ROTATING_SHAPES))]
        radius = rng.uniform(8, 12) * k
        centre = rng.uniform(radius, size - radius, 2)
        angles = rng.uniform(0, 360) + rng.uniform(15, 30) * t
        return [place(shape, centre, radius, a) for a in angles]
    if kind == "growing":
        shape = list(SHAPES.values())[rng.integers(len(SHAPES))]
        radius = rng.uniform(6, 10) * k
        scales = 0.4 * 4.0 ** (t / span)  # 0.4x -> 1.6x, the same ratio every frame
        centre = rng.uniform(1.6 * radius, size - 1.6 * radius, 2)
        angle = rng.uniform(0, 360)
        return [place(shape, centre, radius * s, angle) for s in scales]
    raise ValueError(f"unknown class {kind!r}; classes are {', '.join(CLASSES)}")


def _render(
    kind: str, rng: np.random.Generator, num_frames: int, size: int, clutter: float
) -> np.ndarray:
    background = draw_background(rng, size, clutter)
    polygons = _track(kind, rng, num_frames, size)
    fill = vivid(rng)
    outline = (0, 0, 0) if rng.uniform() < 0.5 else (255, 255, 255)
    width = max(1, round(size / 40))
    frames = []
    for polygon in polygons:
        frame = background.copy()
        ImageDraw.Draw(frame).polygon(polygon, fill=fill, outline=outline, width=width)
        frames.append(np.asarray(frame))
    return np.stack(frames)


def synth_frames(
    cls_name: str,
    rng: np.random.Generator,
    num_frames: int = 16,
    size: int = 64,
    clutter: float = 1.0,
) -> np.ndarray:
    """(T, H, W, 3) uint8 frames of one clip of `cls_name`.

    A backward class renders its forward partner with the same draws from `rng` and reverses
    the frames, so for equal rng states the two are exact time reversals of each other.
    `clutter` (0..1) scales the background clutter (see draw_background).
    """
    if num_frames < 2:
        raise ValueError(f"num_frames must be at least 2, not {num_frames}")
    if size < 16 or size % 2:
        raise ValueError(f"size must be even and at least 16 (yuv420p), not {size}")
    if not 0 <= clutter <= 1:
        raise ValueError(f"clutter must be between 0 and 1, not {clutter}")
    if cls_name in _REVERSE_OF:
        return _render(_REVERSE_OF[cls_name], rng, num_frames, size, clutter)[::-1].copy()
    return _render(cls_name, rng, num_frames, size, clutter)


def write_mp4(path: str | os.PathLike, frames: np.ndarray, fps: int = 8, keyint: int = 8) -> None:
    """H.264 (libx264, yuv420p) MP4 of (N, H, W, 3) uint8 frames with a keyframe every `keyint`
    frames, so seeking is cheap (keyint=1: intra-only). One encoder thread and no scene-cut
    keyframes keep the bytes reproducible."""
    _, height, width, _ = frames.shape
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {
            # Intra-only files get one constant quantiser, so a frame is coded the same wherever
            # it stands: a clip and its reversal then hold bit-identical frames.
            **({"qp": "12"} if keyint == 1 else {"crf": "18"}),
            "preset": "veryfast",
            "threads": "1",
            "x264-params": f"keyint={keyint}:min-keyint={keyint}:scenecut=0:mbtree=0",
        }
        stream.codec_context.thread_count = 1
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _split_counts(n: int, fractions: Sequence[float]) -> dict[str, int]:
    if len(fractions) != 3 or any(f <= 0 for f in fractions):
        raise ValueError(f"split_fractions must be three positive numbers, not {fractions}")
    total = sum(fractions)
    val = round(n * fractions[1] / total)
    test = round(n * fractions[2] / total)
    counts = {"train": n - val - test, "val": val, "test": test}
    if min(counts.values()) < 1:
        raise ValueError(f"{n} videos per class leave a split empty: {counts}")
    return counts


def write_synthetic_dataset(
    out_dir: str | os.PathLike,
    num_videos_per_class: int = 60,
    split_fractions: Sequence[float] = (0.7, 0.15, 0.15),
    num_frames: int = 16,
    size: int = 64,
    fps: int = 8,
    seed: int = 0,
    classes: Sequence[str] | None = None,
    clutter: float = 1.0,
) -> dict:
    """Write videos/<class>/<class>_NNNN.mp4, train/val/test.txt (mmaction2 lists relative to
    out_dir) and classes.txt; return a summary.

    Every class gets the same number of videos per split. Clip i of a class is seeded by
    (seed, the class's position in CLASSES, i), so a class's clips do not depend on which other
    classes are chosen. Existing files of the same names are overwritten.
    """
    names = list(CLASSES if classes is None else classes)
    unknown = [c for c in names if c not in CLASSES]
    if unknown or not names or len(set(names)) != len(names):
        raise ValueError(f"classes must be distinct names from {', '.join(CLASSES)}: {names}")
    counts = _split_counts(num_videos_per_class, split_fractions)
    out = Path(out_dir)

    split_samples: dict[str, list[Sample]] = {s: [] for s in SPLITS}
    for label, name in enumerate(names):
        folder = out / "videos" / name
        folder.mkdir(parents=True, exist_ok=True)
        split_of = [s for s in SPLITS for _ in range(counts[s])]
        for i, split in enumerate(split_of):
            rng = np.random.default_rng([seed, CLASSES.index(name), i])
            path = folder / f"{name}_{i:04d}.mp4"
            write_mp4(path, synth_frames(name, rng, num_frames, size, clutter), fps)
            split_samples[split].append(Sample(path, label))

    lists = {}
    for split in SPLITS:
        lists[split] = out / f"{split}.txt"
        annotations = Annotations(split_samples[split], names)
        write_video_list(annotations, lists[split], out / "classes.txt", out)
    return {
        "root": str(out),
        "class_names": names,
        "lists": {s: str(p) for s, p in lists.items()},
        "classes_file": str(out / "classes.txt"),
        "counts": {s: len(split_samples[s]) for s in SPLITS},
        "per_class": counts,
        "num_frames": num_frames,
        "size": size,
        "fps": fps,
        "seed": seed,
        "clutter": clutter,
    }
