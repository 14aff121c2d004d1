import itertools
import random

import pytest

from video import SamplingSpec, dense_clips, uniform_clips

GRID = list(itertools.product([1, 2, 3, 7, 8, 9, 31, 127, 128, 129, 300], [1, 4, 8], [1, 3]))


def test_dense_test_clips_match_mmaction2():
    # mmaction2 SampleFrames(clip_len=8, frame_interval=16, num_clips=3, test_mode=True):
    # avg = (300 - 128 + 1) / 3, offsets = int(k * avg + avg / 2) = 28, 86, 144.
    clips = dense_clips(300, 8, 16, num_clips=3)
    assert [c[0] for c in clips] == [28, 86, 144]
    assert clips[0] == [28 + 16 * j for j in range(8)]
    assert dense_clips(300, 8, 16) == [[86 + 16 * j for j in range(8)]]  # one clip: centred


def test_dense_test_clips_are_evenly_spaced_and_deterministic():
    clips = dense_clips(1000, 8, 4, num_clips=5)
    starts = [c[0] for c in clips]
    gaps = {b - a for a, b in itertools.pairwise(starts)}
    assert max(gaps) - min(gaps) <= 1
    assert starts[0] + starts[-1] + 8 * 4 - 1 == pytest.approx(999, abs=2)  # centred
    assert clips == dense_clips(1000, 8, 4, num_clips=5)


def test_dense_train_is_random_seeded_and_in_range():
    draws = [dense_clips(200, 8, 4, train=True, rng=random.Random(s))[0] for s in range(200)]
    assert draws[3] == dense_clips(200, 8, 4, train=True, rng=random.Random(3))[0]
    starts = {d[0] for d in draws}
    assert len(starts) > 50
    assert min(starts) >= 0 and max(starts) <= 200 - 32  # the whole span fits
    for d in draws:
        assert d == [d[0] + 4 * j for j in range(8)]


def test_train_draws_one_clip_whatever_num_clips():
    assert len(dense_clips(300, 8, 16, num_clips=3, train=True, rng=random.Random(0))) == 1
    assert len(uniform_clips(300, 8, num_clips=3, train=True, rng=random.Random(0))) == 1


def test_global_random_state_is_used_without_rng():
    random.seed(7)
    a = dense_clips(500, 8, 4, train=True)
    random.seed(7)
    assert dense_clips(500, 8, 4, train=True) == a


def test_dense_short_video_shrinks_the_interval_and_keeps_order():
    # 100 frames < 8 x 16: interval 100 // 8 = 12, span 96, 5 possible starts (centre: 2).
    assert dense_clips(100, 8, 16) == [[2, 14, 26, 38, 50, 62, 74, 86]]
    clip = dense_clips(100, 8, 16, train=True, rng=random.Random(0))[0]
    assert clip == sorted(clip) and clip[1] - clip[0] == 12 and clip[-1] < 100
    # Exactly num_frames frames: every frame once, in order (not frame 0 eight times).
    assert dense_clips(8, 8, 16) == [list(range(8))]


def test_dense_fewer_frames_than_clip_repeats_each_frame():
    assert dense_clips(3, 8, 16) == [[0, 0, 0, 1, 1, 1, 2, 2]]
    assert dense_clips(3, 8, 16, num_clips=2) == [[0, 0, 0, 1, 1, 1, 2, 2]] * 2
    assert dense_clips(1, 4, 2) == [[0, 0, 0, 0]]


@pytest.mark.parametrize(("video_frames", "num_frames", "num_clips"), GRID)
def test_every_index_is_in_range(video_frames, num_frames, num_clips):
    rng = random.Random(video_frames)
    for train in (False, True):
        expected_clips = 1 if train else num_clips
        for interval in (1, 2, 16):
            clips = dense_clips(video_frames, num_frames, interval, num_clips, train, rng)
            assert len(clips) == expected_clips
            assert all(len(c) == num_frames for c in clips)
            assert all(0 <= i < video_frames for c in clips for i in c)
        clips = uniform_clips(video_frames, num_frames, num_clips, train, rng)
        assert len(clips) == expected_clips
        assert all(len(c) == num_frames for c in clips)
        assert all(0 <= i < video_frames for c in clips for i in c)
        assert all(c == sorted(c) for c in clips)  # uniform clips keep temporal order


def test_uniform_test_takes_segment_middles():
    assert uniform_clips(80, 8) == [[5, 15, 25, 35, 45, 55, 65, 75]]
    assert uniform_clips(8, 8) == [list(range(8))]


def test_uniform_test_clips_interleave():
    clips = uniform_clips(80, 8, num_clips=2)
    assert clips[0] == [5, 15, 25, 35, 45, 55, 65, 75]  # clip 0 is always the middles
    assert clips[1] == [0, 10, 20, 30, 40, 50, 60, 70]  # half a segment on, wrapped
    third = uniform_clips(90, 3, num_clips=3)
    assert third == [[15, 45, 75], [25, 55, 85], [5, 35, 65]]


def test_uniform_train_one_random_frame_per_segment():
    segments = [(10 * i, 10 * i + 10) for i in range(8)]
    seen = set()
    for seed in range(100):
        clip = uniform_clips(80, 8, train=True, rng=random.Random(seed))[0]
        assert all(lo <= i < hi for i, (lo, hi) in zip(clip, segments, strict=True))
        seen.update(clip)
    assert len(seen) > 60  # covers most frames
    assert uniform_clips(80, 8, train=True, rng=random.Random(5)) == uniform_clips(
        80, 8, train=True, rng=random.Random(5)
    )


def test_uniform_fewer_frames_than_segments_repeats_evenly():
    assert uniform_clips(3, 8) == [[0, 0, 0, 1, 1, 1, 2, 2]]
    assert uniform_clips(3, 8, train=True, rng=random.Random(0)) == [[0, 0, 0, 1, 1, 1, 2, 2]]


def test_spec_plan_dispatches():
    dense = SamplingSpec(num_frames=4, interval=2, num_clips=3)
    assert dense.plan(100, train=False) == dense_clips(100, 4, 2, 3)
    assert len(dense.plan(100, train=True, rng=random.Random(0))) == 1
    uniform = SamplingSpec(kind="uniform", num_frames=4, num_clips=2)
    assert uniform.plan(100, train=False) == uniform_clips(100, 4, 2)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"kind": "random"},
        {"num_frames": 0},
        {"interval": 0},
        {"num_clips": 0},
        {"num_frames": 2.5},
        {"num_frames": True},
    ],
)
def test_spec_is_validated(kwargs):
    with pytest.raises(ValueError):
        SamplingSpec(**kwargs)


def test_functions_validate_counts():
    with pytest.raises(ValueError, match="video_frames"):
        dense_clips(0, 8, 16)
    with pytest.raises(ValueError, match="num_segments"):
        uniform_clips(10, 0)
    with pytest.raises(ValueError, match="video_frames"):
        SamplingSpec().plan(0, train=False)


def test_sliding_windows_start_every_stride_and_fit_the_video():
    from video.sampling import sliding_windows

    def at(fps: float, frames: int) -> list[float]:
        return [i / fps for i in range(frames)]

    # 10 fps, 4 frames 2 apart (a span of 7 frames), a window every 0.5 s: starts 0, 5, ..., 20
    windows = sliding_windows(at(10, 30), 4, 2, 0.5)
    assert [w[0] for w in windows] == [0, 5, 10, 15, 20]
    assert windows[0] == [0, 2, 4, 6] and windows[-1][-1] == 26
    # A stride under a frame repeats no window, and a tiny one costs no more than a frame's.
    assert [w[0] for w in sliding_windows(at(10, 10), 2, 1, 0.04)] == list(range(9))
    assert len(sliding_windows(at(30, 18000), 8, 2, 1e-9)) == 18000 - 14
    # Variable frame rate: 1 s at 10 fps, then 30 fps; the starts follow the times.
    times = at(10, 10) + [1 + i / 30 for i in range(60)]
    starts = [times[w[0]] for w in sliding_windows(times, 2, 1, 0.5)]
    assert starts == pytest.approx([0.0, 0.5, 1.0, 1.5, 2.0, 2.5])
    with pytest.raises(ValueError, match=r"spans 15 frames; the video has 10 \(0.90 s"):
        sliding_windows(at(10, 10), 8, 2, 1.0)
    for stride in (0.0, float("inf")):
        with pytest.raises(ValueError, match="stride_s must be > 0 and finite"):
            sliding_windows(at(10, 30), 4, 2, stride)
