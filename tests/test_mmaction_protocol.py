"""The "mmaction2" test protocol: the views mmaction2's test pipeline makes, for imported models.

Each part is held against mmaction2 1.x's own formulas, written out here independently with
numpy (mmaction/datasets/transforms/loading.py SampleFrames and UniformSample; processing.py
Resize, CenterCrop and ThreeCrop), and the resize against cv2 itself
(tests/data/cv2_resize_reference.safetensors, made by make_cv2_resize_reference.py).
"""

import itertools
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from tests.media import ordinal_of, write_clip
from video import SamplingSpec, VideoReader, ViewSpec, load_views, make_views, resize_short_side
from video.sampling import dense_clips, mmaction2_dense_clips, mmaction2_uniform_clips
from video.views import crop_corners, decode_clips, spatial_crops, views_from_clips, windows_plan

REFERENCE = Path(__file__).parent / "data" / "cv2_resize_reference.safetensors"

# What an import of the authors' checkpoints records (K400 and Something-Something v2).
K400 = {
    "num_frames": 8, "image_size": 224, "temporal_clips": 3, "spatial_crops": 1,
    "mean": [122.769 / 255, 116.74 / 255, 104.04 / 255],
    "std": [68.493 / 255, 66.63 / 255, 70.321 / 255],
    "sampling": "dense", "frame_interval": 16, "protocol": "mmaction2", "average_clips": "prob",
    "test_pipeline": [{"type": "DecordInit"}, {"type": "SampleFrames", "clip_len": 8}],
}  # fmt: skip
SSV2 = {**K400, "sampling": "uniform", "num_frames": 32, "temporal_clips": 1, "spatial_crops": 3}


# -- mmaction2's formulas, with numpy -------------------------------------------------------


def sample_frames(total_frames: int, clip_len: int, frame_interval: int, num_clips: int):
    """SampleFrames(clip_len, frame_interval, num_clips, test_mode=True), out_of_bound 'loop'."""
    ori_clip_len = (clip_len - 1) * frame_interval + 1
    max_offset = max(total_frames - ori_clip_len, 0)
    if clip_len == 1:  # the 2D recognizer's branch
        avg_interval = total_frames / float(num_clips)
        offsets = np.arange(num_clips) * avg_interval + avg_interval / 2.0
    elif num_clips > 1:
        offsets = np.round(np.arange(num_clips) * (max_offset / float(num_clips - 1)))
    else:
        offsets = np.array([max_offset // 2])
    inds = offsets[:, None] + np.arange(clip_len)[None, :] * frame_interval
    return np.mod(inds, total_frames).astype(np.int64).tolist()


def uniform_sample(total_frames: int, clip_len: int, num_clips: int):
    """UniformSample(clip_len, num_clips, test_mode=True)."""
    seg_size = float(total_frames - 1) / clip_len
    duration = seg_size / (num_clips + 1)
    inds = [
        int(np.round(seg_size * i)) + int(duration * (k + 1))
        for k in range(num_clips)
        for i in range(clip_len)
    ]
    return np.array(inds).reshape(num_clips, clip_len).tolist()


def center_crop(h: int, w: int, size: int) -> list[tuple[int, int]]:
    """CenterCrop: (left, top) of the crop."""
    return [((w - size) // 2, (h - size) // 2)]


def three_crop(h: int, w: int, size: int) -> list[tuple[int, int]]:
    """ThreeCrop: (x, y) offsets, in its order."""
    assert size in (h, w)
    if size == h:
        w_step = (w - size) // 2
        return [(0, 0), (2 * w_step, 0), (w_step, 0)]
    h_step = (h - size) // 2
    return [(0, 0), (0, 2 * h_step), (0, h_step)]


def rescale_size(h: int, w: int, short: int) -> tuple[int, int]:
    """mmcv.rescale_size((w, h), (inf, short)) as (new_h, new_w)."""
    factor = min(np.inf / max(h, w), short / min(h, w))
    return int(h * float(factor) + 0.5), int(w * float(factor) + 0.5)


# -- frame indices ---------------------------------------------------------------------------

FRAMES = [1, 2, 5, 7, 8, 15, 16, 17, 31, 63, 64, 113, 114, 115, 116, 127, 128, 129, 300, 301]


@pytest.mark.parametrize("total", FRAMES)
def test_dense_indices_are_sample_frames(total):
    for clip_len, interval, num_clips in itertools.product(
        [1, 2, 4, 8], [1, 2, 4, 16], range(1, 6)
    ):
        expected = sample_frames(total, clip_len, interval, num_clips)
        assert mmaction2_dense_clips(total, clip_len, interval, num_clips) == expected
        spec = SamplingSpec("dense", clip_len, interval, num_clips, protocol="mmaction2")
        assert spec.plan(total, train=False) == expected


@pytest.mark.parametrize("total", FRAMES)
def test_uniform_indices_are_uniform_sample(total):
    for clip_len, num_clips in itertools.product([1, 2, 3, 4, 8, 16, 32], range(1, 6)):
        expected = uniform_sample(total, clip_len, num_clips)
        assert mmaction2_uniform_clips(total, clip_len, num_clips) == expected
        spec = SamplingSpec("uniform", clip_len, num_clips=num_clips, protocol="mmaction2")
        assert spec.plan(total, train=False) == expected
        assert all(0 <= i < total for clip in expected for i in clip)


def test_halves_round_to_even_and_short_videos_loop():
    # span 7 (4 frames 2 apart): room 1 over 2 gaps is 0.5 -> 0; room 3 -> 1.5 -> 2; 5 -> 2.5 -> 2
    assert [c[0] for c in mmaction2_dense_clips(8, 4, 2, 3)] == [0, 0, 1]
    assert [c[0] for c in mmaction2_dense_clips(10, 4, 2, 3)] == [0, 2, 3]
    assert [c[0] for c in mmaction2_dense_clips(12, 4, 2, 3)] == [0, 2, 5]
    # 10 frames, a clip spanning 16: every clip starts at 0 and wraps around
    assert mmaction2_dense_clips(10, 4, 5, 2) == [[0, 5, 0, 5]] * 2
    # one clip: (300 - 113) // 2
    assert mmaction2_dense_clips(300, 8, 16) == [[93 + 16 * j for j in range(8)]]
    # seg_size 0.75: 1.5 -> 2 (segment 2); 2.25 -> 2 (segment 3)
    assert mmaction2_uniform_clips(4, 4) == [[0, 1, 2, 2]]
    assert mmaction2_uniform_clips(3, 4) == [[0, 0, 1, 2]]  # seg 0.5: 0.5 -> 0, 1.5 -> 2


def test_training_samples_the_same_under_either_protocol():
    for kind in ("dense", "uniform"):
        ours = SamplingSpec(kind, 8, 4, num_clips=3)
        theirs = SamplingSpec(kind, 8, 4, num_clips=3, protocol="mmaction2")
        for seed in range(5):
            assert theirs.plan(200, True, random.Random(seed)) == ours.plan(
                200, True, random.Random(seed)
            )
    # ... while the test clips differ: zeroi2v centres its clips, mmaction2 spans the video
    assert SamplingSpec(num_clips=3).plan(300, train=False) == dense_clips(300, 8, 16, 3)
    assert SamplingSpec(num_clips=3, protocol="mmaction2").plan(300, False)[0][0] == 0


# -- crops -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("h", "w", "size"),
    [(32, 81, 32), (32, 80, 32), (90, 32, 32), (91, 32, 32), (32, 32, 32), (33, 64, 33)],
)
def test_crop_boxes_are_center_crop_and_three_crop(h, w, size):
    frames = (torch.arange(h)[:, None] * 1000 + torch.arange(w)).expand(2, 3, h, w)
    for num, reference in ((1, center_crop), (3, three_crop)):
        crops = spatial_crops(frames, size, num, "mmaction2")
        assert [(int(c[0, 0, 0, 0]) % 1000, int(c[0, 0, 0, 0]) // 1000) for c in crops] == (
            reference(h, w, size)
        )
        assert all(c.shape == (2, 3, size, size) for c in crops)
    # the centre crop of a frame larger than the crop both ways, odd and even
    for hh, ww in ((41, 53), (53, 41), (40, 52)):
        corners = crop_corners(hh, ww, size, 1, "mmaction2")
        assert corners == [(t, lft) for lft, t in center_crop(hh, ww, size)]
        assert corners == crop_corners(hh, ww, size, 1)  # as zeroi2v's


def test_three_crops_differ_from_zeroi2v_only_where_mmaction2_does():
    # 81 - 32 = 49 is odd: mmaction2's right crop starts at 48, ours flush at 49; and its order
    assert crop_corners(32, 81, 32, 3, "mmaction2") == [(0, 0), (0, 48), (0, 24)]
    assert crop_corners(32, 81, 32, 3) == [(0, 0), (0, 24), (0, 49)]
    with pytest.raises(ValueError, match="one side of 32"):
        crop_corners(40, 81, 32, 3, "mmaction2")  # ThreeCrop's assertion
    with pytest.raises(ValueError, match="resize first"):
        crop_corners(30, 81, 32, 1, "mmaction2")


def test_views_follow_three_crop_order():
    clips = [torch.arange(81, dtype=torch.uint8).expand(4, 3, 32, 81).clone()]
    spec = ViewSpec(
        SamplingSpec(num_frames=4, protocol="mmaction2"),
        image_size=32,
        spatial_crops=3,
        mean=(0.0, 0.0, 0.0),
        std=(1 / 255, 1 / 255, 1 / 255),  # views in pixel units
    )
    views = make_views(clips, spec)
    assert views[:, 0, 0, 0, 0].round().tolist() == [0, 48, 24]


# -- resize ----------------------------------------------------------------------------------


def reference_pairs():
    frames = load_file(str(REFERENCE))
    for key, expected in sorted(frames.items()):
        if key.startswith("out_"):
            _, kind, orientation, short = key.split("_")
            yield key, frames[f"in_{kind}_{orientation}"], int(short), expected


def test_resize_matches_cv2_within_one_grey_level():
    """Measured with opencv-python-headless 4.14 (5.1 gives the same pixels): no pixel more than
    1 grey level from cv2's, 10.9% of all pixels 1 away (at most 13.4% of one frame), nearly
    all above cv2's, whose 8-bit SIMD loop truncates its fixed-point products."""
    with safe_open(str(REFERENCE), "np") as f:
        assert f.metadata()["cv2"].startswith("4.")
    differing = total = 0
    signed = 0.0
    for key, image, short, expected in reference_pairs():
        frames = image.permute(2, 0, 1)[None]  # (1, 3, H, W), as frames come from the decoder
        for layout in (torch.contiguous_format, torch.channels_last):
            out = resize_short_side(frames.contiguous(memory_format=layout), short, "mmaction2")
            out = out[0].permute(1, 2, 0)
            assert out.dtype == torch.uint8
            assert out.shape == expected.shape, key  # mmcv.rescale_size's size, exactly
            assert out.shape[:2] == rescale_size(*image.shape[:2], short)
            diff = out.int() - expected.int()
            assert diff.abs().max() <= 1, key
            assert (diff != 0).float().mean() <= 0.15, key
        differing += int((diff != 0).sum())
        total += diff.numel()
        signed += float(diff.sum())
    assert differing / total <= 0.12
    assert abs(signed / total) <= 0.15  # no more than rounding's drift


def test_resize_sizes_follow_mmcv_not_torchvision():
    frames = torch.randint(0, 256, (2, 3, 37, 55), dtype=torch.uint8)
    # 55 * 32 / 37 = 47.57: mmcv rounds to 48, torchvision truncates to 47
    assert resize_short_side(frames, 32, "mmaction2").shape == (2, 3, 32, 48)
    assert resize_short_side(frames, 32).shape == (2, 3, 32, 47)
    assert resize_short_side(frames.transpose(-1, -2), 32, "mmaction2").shape == (2, 3, 48, 32)
    assert resize_short_side(frames, 37, "mmaction2") is frames  # cv2 would copy it unchanged
    one = resize_short_side(frames[0], 32, "mmaction2")  # (3, H, W) too
    assert torch.equal(one, resize_short_side(frames, 32, "mmaction2")[0])


# -- the spec and checkpoints ----------------------------------------------------------------


def test_preprocess_records_the_protocol():
    for d in (K400, SSV2):
        spec = ViewSpec.from_preprocess(d)  # the import's extra keys are ignored
        assert spec.protocol == spec.sampling.protocol == "mmaction2"
        assert ViewSpec.from_preprocess(spec.to_preprocess()) == spec
        assert ViewSpec.from_preprocess(json.loads(json.dumps(spec.to_preprocess()))) == spec
        assert spec.with_views(1, 3).protocol == "mmaction2"
    ssv2 = ViewSpec.from_preprocess(SSV2)
    assert ssv2.sampling == SamplingSpec("uniform", 32, 16, 1, "mmaction2")
    assert ssv2.num_views == 3 and ssv2.mean[0] == pytest.approx(122.769 / 255)


def test_no_protocol_is_zeroi2v_and_an_unknown_one_is_an_error():
    old = {k: v for k, v in K400.items() if k != "protocol"}
    spec = ViewSpec.from_preprocess(old)
    assert spec.protocol == "zeroi2v" and spec == ViewSpec.from_preprocess(
        {**old, "protocol": "zeroi2v"}
    )
    assert ViewSpec().to_preprocess()["protocol"] == "zeroi2v"
    with pytest.raises(
        ValueError, match="protocol must be 'zeroi2v'.*or 'mmaction2'.*'pyslowfast'"
    ):
        ViewSpec.from_preprocess({**K400, "protocol": "pyslowfast"})
    with pytest.raises(ValueError, match="protocol"):
        resize_short_side(torch.zeros(1, 3, 8, 8, dtype=torch.uint8), 4, "mmaction")


# -- end to end: a real video ----------------------------------------------------------------


def unnormalize(view: torch.Tensor, spec: ViewSpec) -> torch.Tensor:
    """(3, T, S, S) view -> (T, 3, S, S) pixel values."""
    mean = torch.tensor(spec.mean).view(3, 1, 1, 1)
    std = torch.tensor(spec.std).view(3, 1, 1, 1)
    return ((view * std + mean) * 255).permute(1, 0, 2, 3)


def mm_spec(**sampling) -> ViewSpec:
    return ViewSpec.from_preprocess({**K400, "num_frames": 4, "image_size": 35, **sampling})


@pytest.mark.parametrize(
    ("frames", "sampling"),
    [
        (40, {"frame_interval": 5, "temporal_clips": 3}),  # starts 0, 12.5 -> 12, 25
        (10, {"frame_interval": 5, "temporal_clips": 2}),  # shorter than a clip: looped
        (30, {"sampling": "uniform", "temporal_clips": 2}),
    ],
)
def test_a_video_decodes_to_mmaction2s_frames_resized_and_cropped(tmp_path, frames, sampling):
    """64x48 frames whose grey levels say their ordinal: the clips hold the formula's frames,
    resized to mmcv's 47x35 (torchvision would make 46x35), three crops at x = 0, 12, 6."""
    path = write_clip(tmp_path / "clip.mp4", frames, size=(64, 48), gop=5)
    spec = mm_spec(**sampling, spatial_crops=3)
    s = spec.sampling
    if s.kind == "dense":
        expected = sample_frames(frames, 4, s.interval, s.num_clips)
    else:
        expected = uniform_sample(frames, 4, s.num_clips)
    decoded = decode_clips(path, spec)
    assert decoded.clips.shape == (s.num_clips, 4, 3, 35, 47)
    assert [[ordinal_of(f) for f in clip] for clip in decoded.clips] == expected
    with VideoReader(path) as reader:  # each frame as mmaction2 resizes it
        full = reader.read(list(range(frames)))
    for clip, indices in zip(decoded.clips, expected, strict=True):
        assert torch.equal(clip, resize_short_side(full[indices], 35, "mmaction2"))
    views, info = load_views(path, spec)
    assert info.num_frames == frames and views.shape == (s.num_clips * 3, 3, 4, 35, 35)
    assert torch.equal(views, views_from_clips(decoded.clips, spec))
    for k, clip in enumerate(decoded.clips):
        for c, x in enumerate((0, 12, 6)):
            pixels = unnormalize(views[3 * k + c], spec)
            torch.testing.assert_close(pixels, clip[..., x : x + 35].float(), atol=1e-3, rtol=0)


def test_timeline_windows_are_resized_as_the_protocol_says(tmp_path):
    path = write_clip(tmp_path / "w.mp4", 30, fps=10, size=(64, 48))
    spec = mm_spec(frame_interval=2, temporal_clips=1)
    with VideoReader(path) as reader:
        windows = list(windows_plan(reader, spec, stride_s=1.0).stream(reader))
        full = reader.read(list(range(30)))
    assert len(windows) == 3  # the windows themselves are the zeroi2v timeline's
    for k, window in enumerate(windows):
        frames = [10 * k + 2 * j for j in range(4)]
        assert torch.equal(window.clip, resize_short_side(full[frames], 35, "mmaction2"))


# -- the service and `zeroi2v eval` take the checkpoint's protocol ---------------------------


def tiny_checkpoint(path: Path, preprocess: dict, class_names: list[str] | None = None) -> Path:
    from model import build_model, merge_adapters, save_merged
    from tests.helpers import randomize_adapters, tiny_model_config

    torch.manual_seed(0)
    num_classes = len(class_names) if class_names else 7
    model = build_model(tiny_model_config(num_classes=num_classes))
    randomize_adapters(model)
    return save_merged(merge_adapters(model), path, class_names, preprocess=preprocess)


def test_the_service_shows_an_imported_model_its_protocols_views(tmp_path):
    from fastapi.testclient import TestClient

    from model import read_info
    from service.app import create_app
    from service.local import LocalBackend
    from service.model_runner import ModelRunner
    from service.settings import ServiceSettings
    from service.video_service import VideoService

    preprocess = {**K400, "num_frames": 4, "image_size": 32, "frame_interval": 5,
                  "temporal_clips": 3, "spatial_crops": 3}  # fmt: skip
    model = tiny_checkpoint(tmp_path / "m.safetensors", preprocess)
    video = write_clip(tmp_path / "clip.mp4", 40, size=(64, 46))  # 64 * 32 / 46 = 44.52 -> 45
    settings = ServiceSettings(model_path=str(model), max_top_k=7)
    runner = ModelRunner(str(model), precision="fp32", max_batch_size=4)
    service = VideoService(settings, read_info(model), LocalBackend(runner, settings))
    assert service.spec == ViewSpec.from_preprocess(preprocess)
    app = create_app()
    app.state.service = service
    answer = TestClient(app).post(
        "/classify?top_k=7", content=video.read_bytes(), headers={"content-type": "video/mp4"}
    )
    assert answer.status_code == 200, answer.text
    scores = {label["index"]: label["score"] for label in answer.json()["labels"]}
    for protocol, same in (("mmaction2", True), ("zeroi2v", False)):
        spec = ViewSpec.from_preprocess({**preprocess, "protocol": protocol})
        probs = runner.probabilities(load_views(video, spec)[0])
        expected = {i: round(float(p), 6) for i, p in enumerate(probs)}
        close = all(abs(scores[i] - expected[i]) <= 2e-6 for i in expected)
        assert close == same, (protocol, scores, expected)


def test_eval_takes_an_imported_models_protocol(synth_dir, tmp_path):
    from typer.testing import CliRunner

    from cli import app
    from model import load_merged
    from model.classification import video_probabilities
    from tests.helpers import tiny_config
    from training.config import load_config
    from training.data import load_annotations

    config = tiny_config(synth_dir, tmp_path / "run")  # dense, 2 clips x 1 crop, CLIP's mean
    names = load_annotations(load_config(config), "val").class_names
    preprocess = {**SSV2, "num_frames": 4, "image_size": 32, "temporal_clips": 2}
    checkpoint = tiny_checkpoint(tmp_path / "m.safetensors", preprocess, names)
    cli = CliRunner()
    for extra, views in (([], 6), (["--clips", "1", "--crops", "1"], 1)):
        out = tmp_path / f"eval{views}"
        result = cli.invoke(app, ["eval", str(config), "--checkpoint", str(checkpoint),
                                  "--precision", "fp32", "--out", str(out), *extra])  # fmt: skip
        assert result.exit_code == 0, result.output
        assert "mmaction2 test protocol (uniform sampling" in result.output
        assert json.loads(result.stdout.strip().splitlines()[-1])["views"] == views
        # the same confusion as the checkpoint's own views give, video by video
        spec = ViewSpec.from_preprocess(preprocess).with_views(*([1, 1] if extra else [None]))
        model = load_merged(checkpoint).eval()
        annotations = load_annotations(load_config(config), "val", class_names=names)
        confusion = torch.zeros(len(names), len(names), dtype=torch.int64)
        for sample in annotations.samples:
            with torch.no_grad():
                probs = video_probabilities(model, load_views(sample.path, spec)[0][None])
            confusion[sample.label, probs.argmax()] += 1
        report = json.loads((out / "eval_val.json").read_text())
        assert report["confusion"] == confusion.tolist()
