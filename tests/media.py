"""Tiny synthetic clips for the video tests, encoded with PyAV.

Frame i carries its ordinal in two flat grey halves, each a base-32 digit (levels 4, 12, ...,
252), so `ordinal_of` reads it back after lossy compression and resizing. Flat blocks survive
every codec used here nearly exactly; digits are 8 levels apart, so an error under 4 is harmless.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch

# Container for each codec the tests exercise (PyAV encoder name -> file suffix).
FORMATS = {
    "libx264": "mp4",
    "mpeg4": "avi",
    "libvpx-vp9": "webm",
    "mjpeg": "mkv",
}

# Near-lossless settings, so each digit comes back within a few grey levels.
QUALITY = {
    "libx264": {"crf": "10", "preset": "ultrafast"},
    "mpeg4": {"qscale": "2"},
    "libvpx-vp9": {"crf": "10", "b": "0", "deadline": "realtime", "cpu-used": "8"},
    "mjpeg": {"qscale": "2"},
}

PIX_FMT = {"mjpeg": "yuvj420p"}


def level(digit: int) -> int:
    return 8 * digit + 4


def ordinal_image(i: int, width: int, height: int) -> np.ndarray:
    """(H, W, 3) uint8: the left half says i // 32, the right half i % 32."""
    if not 0 <= i < 32 * 32:
        raise ValueError(f"ordinal {i} does not fit in two base-32 digits")
    img = np.empty((height, width, 3), np.uint8)
    half = width // 2
    img[:, :half] = level(i // 32)
    img[:, half:] = level(i % 32)
    return img


def ordinal_of(frame: torch.Tensor) -> int:
    """The ordinal of a (3, H, W) frame made by `ordinal_image` (upright, any size)."""
    _, h, w = frame.shape
    grey = frame.float().mean(0)
    # Sample the middle of each half, away from the edge between them and the borders.
    rows = slice(h // 4, h - h // 4)
    hi = grey[rows, w // 8 : w // 2 - w // 8].mean().item()
    lo = grey[rows, w // 2 + w // 8 : w - w // 8].mean().item()
    return 32 * round((hi - 4) / 8) + round((lo - 4) / 8)


def ordinals_of(frames: torch.Tensor) -> list[int]:
    return [ordinal_of(f) for f in frames]


def write_clip(
    path: str | Path,
    num_frames: int = 30,
    *,
    codec: str = "libx264",
    fps: int = 10,
    size: tuple[int, int] = (64, 48),
    gop: int | None = None,
    pts_ms: list[int] | None = None,
    rotation: int | None = None,
    audio: bool = False,
    images: list[np.ndarray] | None = None,
    pix_fmt: str | None = None,
    options: dict[str, str] | None = None,
    container_options: dict[str, str] | None = None,
) -> Path:
    """Encode a clip of `num_frames` ordinal frames (or `images`) and return its path.

    gop: keyframe interval. pts_ms: presentation times in milliseconds, for variable frame rate.
    rotation: the display rotation a player applies, clockwise degrees (the legacy `rotate`
    tag's convention), written as a display matrix. audio: add a mono AAC track.
    options: encoder options over QUALITY's; container_options: muxer options.
    """
    path = Path(path)
    width, height = size
    options = {**QUALITY.get(codec, {}), **(options or {})}
    if gop is not None:
        options["g"] = str(gop)
        if codec == "libx264":
            # x264 inserts keyframes on scene cuts, and every frame here is a cut.
            options["x264-params"] = f"keyint={gop}:min-keyint={gop}:scenecut=0"
    with av.open(str(path), "w", options=container_options or {}) as container:
        stream = container.add_stream(codec, rate=fps, options=options)
        stream.width, stream.height = width, height
        stream.pix_fmt = pix_fmt or PIX_FMT.get(codec, "yuv420p")
        if pts_ms is not None:
            stream.time_base = Fraction(1, 1000)
            stream.codec_context.time_base = Fraction(1, 1000)
        if rotation:
            stream.set_display_rotation(-rotation)  # PyAV takes counter-clockwise degrees
        sound = None
        if audio:
            sound = container.add_stream("aac", rate=16000)
            sound.layout = "mono"
        frames = images if images is not None else [None] * num_frames
        for i, img in enumerate(frames):
            if img is None:
                img = ordinal_image(i, width, height)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            if pts_ms is not None:
                frame.pts, frame.time_base = pts_ms[i], Fraction(1, 1000)
            else:
                frame.pts, frame.time_base = i, Fraction(1, fps)
            container.mux(stream.encode(frame))
            if sound is not None:
                samples = 16000 // fps
                tone = np.sin(np.arange(samples) * 0.1, dtype=np.float32)[None] * 0.1
                chunk = av.AudioFrame.from_ndarray(tone, format="fltp", layout="mono")
                chunk.sample_rate, chunk.pts = 16000, i * samples
                container.mux(sound.encode(chunk))
        container.mux(stream.encode())
        if sound is not None:
            container.mux(sound.encode())
    return path


def write_minutes(path: str | Path, minutes: int, fps: int = 8) -> Path:
    """A long, cheap clip for memory tests: flat 64x48 frames whose grey level counts on, a
    keyframe every 64 frames."""
    frames = minutes * 60 * fps
    images = [np.full((48, 64, 3), i % 251, np.uint8) for i in range(frames)]
    return write_clip(path, frames, fps=fps, size=(64, 48), gop=64, images=images)


def write_audio(path: str | Path, seconds: float = 1.0, cover: bool = False) -> Path:
    """An audio-only file (AAC in .m4a), with a cover picture (a still video stream) if asked."""
    path = Path(path)
    with av.open(str(path), "w", format="mp4") as container:
        sound = container.add_stream("aac", rate=16000)
        sound.layout = "mono"
        if cover:
            picture = container.add_stream("mjpeg", rate=1)
            picture.width, picture.height, picture.pix_fmt = 64, 48, "yuvj420p"
            picture.disposition = av.stream.Disposition.attached_pic
            image = av.VideoFrame.from_ndarray(ordinal_image(1, 64, 48), format="rgb24")
            container.mux(picture.encode(image) + picture.encode())
        total = int(16000 * seconds)
        for start in range(0, total, 1024):
            n = min(1024, total - start)
            chunk = av.AudioFrame.from_ndarray(
                np.zeros((1, n), np.float32), format="fltp", layout="mono"
            )
            chunk.sample_rate, chunk.pts = 16000, start
            container.mux(sound.encode(chunk))
        container.mux(sound.encode())
    return path
