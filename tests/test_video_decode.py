import dataclasses
import io
import random
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from tests.media import FORMATS, ordinal_image, ordinals_of, write_audio, write_clip
from video import (
    DecodeLimits,
    DecodeTimeout,
    NotAVideo,
    NoVideoStream,
    OverCostLimit,
    VideoError,
    VideoReader,
    VideoTooLarge,
    probe,
    read_frames,
)
from video.packaged import CLIPS, packaged_clip


@pytest.fixture(scope="session")
def media(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("media")


@pytest.fixture(scope="session")
def clips(media) -> dict[str, Path]:
    """30 frames, 64x48, 10 fps, a keyframe every 10 frames, in each codec/container."""
    return {
        codec: write_clip(media / f"clip.{ext}", 30, codec=codec, gop=10)
        for codec, ext in FORMATS.items()
    }


@pytest.fixture(scope="session")
def mp4(clips) -> Path:
    return clips["libx264"]


@pytest.fixture(scope="session")
def long_mp4(media) -> Path:
    """300 frames with a keyframe every 10, for seeking."""
    return write_clip(media / "long.mp4", 300, gop=10, fps=30)


@pytest.fixture(scope="session")
def bframes_mp4(media) -> Path:
    """H.264 with B-frames: decode order differs from presentation order."""
    return write_clip(media / "bframes.mp4", 60, gop=12, options={"preset": "fast", "bf": "3"})


# -- formats ---------------------------------------------------------------------------------


@pytest.mark.parametrize("codec", list(FORMATS))
def test_formats(clips, codec):
    with VideoReader(clips[codec]) as reader:
        info = reader.info
        assert (info.num_frames, info.width, info.height, info.rotation) == (30, 64, 48, 0)
        assert info.fps == pytest.approx(10.0) and info.duration_s == pytest.approx(3.0)
        assert info.codec == {"libx264": "h264", "libvpx-vp9": "vp9"}.get(codec, codec)
        assert not info.has_audio
        wanted = [29, 0, 13, 13, 5, 10, 9]
        frames = reader.read(wanted)
        assert frames.dtype == torch.uint8 and frames.shape == (7, 3, 48, 64)
        assert ordinals_of(frames) == wanted
        assert ordinals_of(reader.read(range(30))) == list(range(30))


def test_b_frames_decode_in_presentation_order(bframes_mp4):
    with av.open(str(bframes_mp4)) as container:
        stream = container.streams.video[0]
        pts = [p.pts for p in container.demux(stream) if p.size]
    assert pts != sorted(pts), "the clip should have B-frames"
    rng = random.Random(0)
    with VideoReader(bframes_mp4) as reader:
        assert reader.info.num_frames == 60
        for _ in range(10):
            wanted = [rng.randrange(60) for _ in range(rng.randint(1, 6))]
            assert ordinals_of(reader.read(wanted)) == wanted


def test_sparse_read_seeks_instead_of_decoding_everything(long_mp4):
    wanted = [5 + 37 * k for k in range(8)]  # 5, 42, ..., 264: each in its own 10-frame GOP
    with VideoReader(long_mp4) as reader:
        opened = reader.frames_decoded
        assert ordinals_of(reader.read(wanted[::-1])) == wanted[::-1]
        decoded = reader.frames_decoded - opened
    # From each target's keyframe up to the target: at most 10 frames per target, not 265.
    assert decoded <= 8 * 10
    assert reader.seeks >= 8


def test_targets_in_one_gop_share_one_seek(long_mp4):
    with VideoReader(long_mp4) as reader:
        seeks, decoded = reader.seeks, reader.frames_decoded
        assert ordinals_of(reader.read([23, 21, 28, 21])) == [23, 21, 28, 21]
        assert reader.seeks - seeks == 1
        assert reader.frames_decoded - decoded == 9  # keyframe 20 through 28


def test_variable_frame_rate(media):
    rng = random.Random(0)
    pts_ms = [0]
    for _ in range(39):
        pts_ms.append(pts_ms[-1] + rng.choice([10, 33, 40, 100, 250]))
    for ext in ("mp4", "mkv"):
        path = write_clip(media / f"vfr.{ext}", 40, pts_ms=pts_ms, gop=8)
        with VideoReader(path) as reader:
            assert reader.info.num_frames == 40
            # The last frame lasts as long as the typical gap; the rest is the pts span.
            assert reader.info.duration_s == pytest.approx(pts_ms[-1] / 1000, abs=0.101)
            wanted = list(range(40))
            rng.shuffle(wanted)
            assert ordinals_of(reader.read(wanted)) == wanted


@pytest.mark.parametrize("rotation", [90, 180, 270])
def test_rotation_metadata_gives_upright_frames(media, rotation):
    # A red square marks the top-left corner of the coded picture.
    images = []
    for i in range(3):
        img = ordinal_image(i, 64, 48)
        img[:8, :8] = (255, 0, 0)
        images.append(img)
    path = write_clip(media / f"rot{rotation}.mp4", images=images, rotation=rotation)
    with VideoReader(path) as reader:
        info = reader.info
        assert info.rotation == rotation
        expected_size = (48, 64) if rotation in (90, 270) else (64, 48)
        assert (info.width, info.height) == expected_size
        frame = reader.read([1])[0]
    assert frame.shape == (3, info.height, info.width)
    red = (frame[0].int() - frame[1].int()) > 100
    ys, xs = red.nonzero(as_tuple=True)
    # Turned clockwise by `rotation`, the top-left corner goes to the top-right (90),
    # bottom-right (180) or bottom-left (270).
    corner = (ys.float().mean() > info.height / 2, xs.float().mean() > info.width / 2)
    assert corner == {90: (False, True), 180: (True, True), 270: (True, False)}[rotation]
    assert 40 <= len(ys) <= 90  # about the 8x8 square, give or take compression


@pytest.mark.parametrize(("codec", "pix_fmt"), [("libvpx-vp9", "yuv420p"), ("libx264", "yuv444p")])
def test_odd_frame_size(media, codec, pix_fmt):
    path = write_clip(media / f"odd-{codec}.mkv", 10, codec=codec, size=(63, 47), pix_fmt=pix_fmt)
    with VideoReader(path) as reader:
        assert (reader.info.width, reader.info.height) == (63, 47)
        frames = reader.read([9, 0, 4])
    assert frames.shape == (3, 3, 47, 63)
    assert ordinals_of(frames) == [9, 0, 4]


@pytest.mark.parametrize(("codec", "ext"), [("libx264", "mp4"), ("mjpeg", "mkv")])
def test_audio_is_ignored(media, codec, ext):
    path = write_clip(media / f"audio.{ext}", 20, codec=codec, audio=True)
    with VideoReader(path) as reader:
        assert reader.info.has_audio
        assert reader.info.num_frames == 20
        assert ordinals_of(reader.read([19, 3, 0])) == [19, 3, 0]


def test_animated_gif_is_a_video(media):
    path = media / "anim.gif"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("gif", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "rgb8"
        for i in range(5):
            frame = av.VideoFrame.from_ndarray(ordinal_image(i, 64, 48), format="rgb24")
            container.mux(stream.encode(frame.reformat(format="rgb8")))
        container.mux(stream.encode())
    assert ordinals_of(read_frames(path, [4, 1])) == [4, 1]


# -- sources ---------------------------------------------------------------------------------


def test_sources(mp4):
    data = mp4.read_bytes()
    sources = [
        str(mp4),
        mp4,
        data,
        bytearray(data),
        memoryview(data),
        io.BytesIO(data),
        NonSeekable(data),
    ]
    for source in sources:
        assert ordinals_of(read_frames(source, [7, 2])) == [7, 2]
    with open(mp4, "rb") as f:
        assert probe(f).num_frames == 30
        assert not f.closed  # the caller's file stays open


class NonSeekable(io.RawIOBase):
    """A pipe-like stream: read, no seek."""

    def __init__(self, data: bytes):
        self._data = io.BytesIO(data)

    def readable(self):
        return True

    def readinto(self, buffer):
        return self._data.readinto(buffer)


class Failing(io.RawIOBase):
    def readable(self):
        return True

    def seekable(self):
        return True

    def seek(self, offset, whence=0):
        return 0

    def readinto(self, buffer):
        raise OSError("disk on fire")


def test_file_object_errors_become_not_a_video():
    with pytest.raises(NotAVideo, match="disk on fire|cannot open") as err:
        VideoReader(Failing())
    assert err.value.__cause__ is not None


def test_path_with_a_colon_is_a_file_not_a_protocol(mp4, tmp_path, monkeypatch):
    (tmp_path / "2024-01-01T10:00:00.mp4").write_bytes(mp4.read_bytes())
    monkeypatch.chdir(tmp_path)
    assert probe("2024-01-01T10:00:00.mp4").num_frames == 30


def test_playlist_is_not_a_video(media):
    segment = write_clip(media / "segment.ts", 10)
    playlist = media / "list.m3u8"
    # No #EXT-X-ENDLIST: a live playlist, which FFmpeg would poll for new segments for minutes.
    playlist.write_text(f"#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1.0,\n{segment}\n")
    with pytest.raises(NotAVideo, match="playlist"):
        probe(playlist)


@pytest.mark.parametrize("source", [None, 3, 1.5, ["clip.mp4"]])
def test_wrong_source_type(source):
    with pytest.raises(TypeError, match="path, bytes or a binary file object"):
        VideoReader(source)


def test_empty_read_and_closed_reader(mp4):
    reader = VideoReader(mp4)
    assert reader.read([]).shape == (0, 3, 48, 64)
    reader.close()
    reader.close()  # idempotent
    with pytest.raises(ValueError, match="closed"):
        reader.read([0])


def test_index_errors(mp4):
    with VideoReader(mp4) as reader:
        for bad in (30, -1, 1000):
            with pytest.raises(IndexError, match=f"frame {bad} does not exist.*30 frames"):
                reader.read([0, bad])
        with pytest.raises(TypeError):
            reader.read([1.5])
        assert ordinals_of(reader.read([np.int64(3)])) == [3]


# -- bad input -------------------------------------------------------------------------------


def _png(path: Path) -> Path:
    with av.open(str(path), "w", format="image2") as container:
        stream = container.add_stream("png", rate=1)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "rgb24"
        frame = av.VideoFrame.from_ndarray(ordinal_image(1, 64, 48), format="rgb24")
        container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def test_not_a_video(media):
    text = media / "notes.txt"
    text.write_text("hello world\n" * 50)  # FFmpeg's tty demuxer would render this as video
    empty = media / "empty.mp4"
    empty.write_bytes(b"")
    png = _png(media / "still.png")
    cases = {
        "random bytes": (np.random.default_rng(0).bytes(5000), "cannot open"),
        "empty file": (empty, "empty file"),
        "empty bytes": (b"", "empty"),
        "text file": (text, "not a video"),
        "text bytes": (text.read_bytes(), "cannot open"),
        "png file": (png, "still image"),
        "png bytes": (png.read_bytes(), "still image"),
        "missing file": (media / "nope.mp4", "no such file"),
        "directory": (media, "not a regular file"),
    }
    for name, (source, message) in cases.items():
        with pytest.raises(NotAVideo, match=message) as err:
            probe(source)
        assert err.value.reason == "not_a_video", name
        if isinstance(source, Path):
            assert str(source) in str(err.value), "the message names the file"


def test_audio_only_file(media):
    path = write_audio(media / "sound.m4a")
    with pytest.raises(NoVideoStream, match=r"no video stream \(audio only\)") as err:
        probe(path)
    assert err.value.reason == "no_video_stream" and isinstance(err.value, VideoError)


def test_cover_art_is_not_a_video(media):
    path = write_audio(media / "song.m4a", cover=True)
    with av.open(str(path)) as container:
        assert len(container.streams.video) == 1  # the picture is a one-frame video stream
    with pytest.raises(NoVideoStream, match="audio only, and a cover picture"):
        probe(path)


def test_truncated_mp4(mp4):
    data = mp4.read_bytes()  # moov (the index) is at the end: cut, nothing is left to read
    for cut in (data[: len(data) // 2], data[:1024]):
        with pytest.raises(NotAVideo, match="cannot open"):
            probe(cut)


def test_truncated_faststart_mp4_keeps_the_frames_it_has(media):
    # The index (moov) goes first, so a cut file still lists the frames it had.
    path = write_clip(
        media / "faststart.mp4", 100, gop=10, container_options={"movflags": "+faststart"}
    )
    data = path.read_bytes()
    with VideoReader(data[: int(len(data) * 0.7)]) as reader:
        n = reader.info.num_frames
        assert 10 < n < 100
        assert ordinals_of(reader.read(range(n))) == list(range(n))
    with av.open(str(path)) as container:
        first = next(p for p in container.demux(container.streams.video[0]) if p.size)
        cut = first.pos + first.size // 2  # in the middle of the first frame
    with pytest.raises(NotAVideo, match="no complete video frame"):
        probe(data[:cut])


def test_corrupt_frames_are_refused_not_returned(media):
    path = write_clip(media / "corrupt.mp4", 30, gop=10)
    data = zero_packet(path, 12)
    with VideoReader(data) as reader:
        assert ordinals_of(reader.read([11, 20, 29])) == [11, 20, 29]
        # Frame 12 is lost, and 13-19 predict from it: the decoder would conceal and return
        # plausible garbage, so they are refused until the next keyframe.
        for bad in (12, 13, 19):
            with pytest.raises(NotAVideo, match=f"frame {bad} of 30 could not be decoded"):
                reader.read([11, bad])


# -- limits ----------------------------------------------------------------------------------


def test_resolution_limit(mp4):
    with pytest.raises(VideoTooLarge, match="64x48") as err:
        probe(mp4, DecodeLimits(max_width=32, max_height=32))
    assert err.value.reason == "too_large"
    with pytest.raises(VideoTooLarge, match="1000 pixels"):
        probe(mp4, DecodeLimits(max_pixels=1000))
    # Width and height bind either orientation: 64x48 passes a 48x64 (portrait) limit.
    assert probe(mp4, DecodeLimits(max_width=48, max_height=64)).width == 64


def test_thin_frames_are_refused_before_resizing_blows_them_up(media):
    """3840x2 frames resized to a short side of 224 would be 224x430080 each: tens of GB for a
    30-clip request of a 33 KB file. Refused by their aspect ratio, at probe time."""
    thin = write_clip(media / "thin.mp4", 2, size=(3840, 2))
    with pytest.raises(OverCostLimit, match=r"3840x2 frames have an aspect ratio of 1920:1") as e:
        probe(thin)
    assert e.value.reason == "over_cost_limit"
    assert probe(write_clip(media / "wide.mp4", 2, size=(64, 8))).width == 64  # 8:1 passes


def test_a_read_that_would_decode_too_much_is_refused_before_decoding(long_mp4):
    """Frames decoded x pixels per read: each target costs the frames from its keyframe."""
    info = probe(long_mp4)
    per_frame = info.width * info.height
    with VideoReader(long_mp4, DecodeLimits(max_decoded_pixels=20 * per_frame)) as reader:
        assert reader.frames_to_decode([5, 9, 25, 29]) == 10 + 10  # two GOPs of 10, from 0 and 20
        assert ordinals_of(reader.read([9, 29])) == [9, 29]
        before = reader.frames_decoded
        cost = r"up to 30 frames of 64x48 decoded \(0.09216 megapixels; at most 0.06144 per"
        with pytest.raises(OverCostLimit, match=cost):
            reader.read([9, 19, 29])
        assert reader.frames_decoded == before  # nothing was decoded


def test_decoding_past_the_budget_stops_even_when_the_plan_was_under_it(long_mp4):
    """A damaged file can take more decoding than its plan (retries from earlier keyframes):
    the frames actually decoded count against the same budget."""
    info = probe(long_mp4)
    with VideoReader(long_mp4, DecodeLimits(max_decoded_pixels=5 * info.width * info.height)) as r:
        r.frames_to_decode = lambda targets: 1  # a plan that underestimates
        with pytest.raises(OverCostLimit, match="decoding went past 5 frames"):
            r.read([9])
    with VideoReader(long_mp4) as reader:  # no budget by default: training reads what it has
        assert ordinals_of(reader.read([0, 299])) == [0, 299]


def test_duration_and_frame_limits(clips):
    for codec in ("libx264", "libvpx-vp9"):  # mp4 states its length; webm is counted
        with pytest.raises(VideoTooLarge, match=r"lasts .*3\.0 s|more than 2"):
            probe(clips[codec], DecodeLimits(max_duration_s=2.0))
        with pytest.raises(VideoTooLarge, match="over the 20 frame limit"):
            probe(clips[codec], DecodeLimits(max_frames=20))
        assert probe(clips[codec], DecodeLimits(max_duration_s=3.0, max_frames=30))


def test_limits_are_validated():
    for bad in ({"max_frames": 0}, {"timeout_s": 0}, {"max_duration_s": -1}, {"threads": -1}):
        with pytest.raises(ValueError):
            DecodeLimits(**bad)


def test_timeout(long_mp4):
    with pytest.raises(DecodeTimeout, match="1e-06 s limit") as err:
        probe(long_mp4, DecodeLimits(timeout_s=1e-6))
    assert err.value.reason == "timeout"
    with VideoReader(long_mp4) as reader:
        reader.limits = dataclasses.replace(reader.limits, timeout_s=1e-9)
        with pytest.raises(DecodeTimeout):
            reader.read([250])


def test_threads_setting(mp4):
    assert ordinals_of(read_frames(mp4, [3, 17], DecodeLimits(threads=1))) == [3, 17]


@pytest.mark.parametrize("name", sorted(CLIPS))
def test_real_packaged_clips_match_a_full_decode(name):
    """Real footage from packages (H.264, MPEG-4 with packed B-frames, MS-MPEG4, Cinepak, a
    1080p film): frames read with seeks equal the frames of one full sequential decode."""
    path = packaged_clip(name)
    with VideoReader(path) as reader:
        n = reader.info.num_frames
        wanted = sorted({0, 1, n // 3, n // 3 + 1, n // 2, n - 2, n - 1})
        frames = dict(zip(wanted, reader.read(wanted), strict=True))
    with av.open(str(path)) as container:
        count = 0
        for i, frame in enumerate(container.decode(video=0)):
            count += 1
            if i in frames:
                expected = frame.to_ndarray(format="rgb24")
                assert np.array_equal(frames[i].permute(1, 2, 0).numpy(), expected), i
    assert count == n


# -- decoding only what the read needs ---------------------------------------------------------


def every_frame(path: Path) -> list[np.ndarray]:
    """Reference: every frame decoded in order by PyAV alone, as RGB."""
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


@pytest.mark.parametrize(
    ("name", "b_frames"),
    [("bikes.mp4", True), ("bigbuckbunny.mp4", False), ("carphone_pristine.mp4", True)],
)
def test_unreferenced_frames_are_skipped_and_wanted_frames_are_exact(name, b_frames):
    """Real H.264 clips: B-frames nobody wants are never decoded, and the frames that are
    wanted equal PyAV's own decoding of every frame, bit for bit."""
    try:
        path = packaged_clip(name)
    except FileNotFoundError as e:
        pytest.skip(str(e))
    reference = every_frame(path)
    targets = list(range(3, len(reference), 7))
    for threads in (1, 0):
        with VideoReader(path, DecodeLimits(threads=threads)) as reader:
            frames = reader.read(targets)
            decoded = reader.frames_decoded
        for k, i in enumerate(targets):
            assert np.array_equal(frames[k].permute(1, 2, 0).numpy(), reference[i]), (name, i)
        if b_frames:  # some were skipped
            assert decoded < targets[-1] + 1, (name, threads, decoded)


def test_a_first_read_from_the_start_goes_on_from_the_opening_decode():
    """Opening decodes the first frame; a first read that starts there continues that decode
    (no second seek, frame 0 decoded once, unreferenced frames still skipped) and gives the
    same frames as a read that seeks. A first read that starts at a later keyframe seeks."""
    path = packaged_clip("bikes.mp4")  # H.264 with B-frames, keyframes after frame 0
    reference = every_frame(path)
    with VideoReader(path, DecodeLimits(threads=1)) as reader:
        assert (reader.seeks, reader.frames_decoded) == (1, 1)
        targets = [0, 9, 20]
        first = reader.read(targets)
        assert reader.seeks == 1
        resumed = reader.frames_decoded  # the opening's frame and the read's
        again = reader.read(targets)
        # The read that seeks decodes as many: the resumed one skipped the same B-frames.
        assert reader.seeks == 2 and reader.frames_decoded - resumed == resumed < 21
    assert torch.equal(first, again)
    for k, i in enumerate(targets):
        assert np.array_equal(first[k].permute(1, 2, 0).numpy(), reference[i]), i
    with VideoReader(path, DecodeLimits(threads=1)) as reader:
        late = reader.keyframes[1]
        frames = reader.read([late + 1])
        assert reader.seeks == 2
        assert np.array_equal(frames[0].permute(1, 2, 0).numpy(), reference[late + 1])


def zero_packet(path: Path, index: int) -> bytes:
    """The file's bytes with the payload of its `index`-th video packet zeroed (its 4-byte
    NAL length kept), as a damaged download or disk would leave it."""
    with av.open(str(path)) as container:
        packets = [(p.pos, p.size) for p in container.demux(container.streams.video[0]) if p.size]
    data = bytearray(path.read_bytes())
    pos, size = packets[index]
    data[pos + 4 : pos + size] = bytes(size - 4)
    return bytes(data)


def test_a_corrupt_reference_frame_is_not_skipped_silently(media):
    """The skip is decided from the NAL headers: a zeroed packet is sent to the decoder, which
    fails on it, and the frames predicted from it are refused, wanted or not."""
    path = write_clip(media / "corrupt_ref.mp4", 30, gop=30)
    data = zero_packet(path, 5)
    with VideoReader(data) as reader, pytest.raises(NotAVideo, match="not be decoded"):
        reader.read([20])


def test_read_with_a_transform_keeps_only_transformed_frames(mp4):
    import torchvision.transforms.v2.functional as TF

    half = lambda f: TF.resize(f, [24], antialias=True)  # noqa: E731
    with VideoReader(mp4) as reader:
        full = reader.read([4, 1, 4])
        small = reader.read([4, 1, 4], transform=half)
    assert small.shape == (3, 3, 24, 32)
    assert small.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(small, half(full))


def test_decode_device():
    from video.decode import DecodeDeviceError, resolve_decode_device

    assert resolve_decode_device("cpu") == "cpu"
    if torch.cuda.is_available():
        pytest.skip("a GPU machine: the fallback is what this test is about")
    assert resolve_decode_device("auto") == "cpu"
    with pytest.raises(DecodeDeviceError, match="decode_device=cuda, but this process has no"):
        resolve_decode_device("cuda")
    with pytest.raises(DecodeDeviceError, match="auto, cpu or cuda"):
        resolve_decode_device("gpu")


def test_a_video_falls_back_to_cpu_decoding_when_nvdec_cannot_open(mp4):
    if torch.cuda.is_available():
        pytest.skip("a GPU machine: NVDEC opens")
    with VideoReader(mp4, device="cuda") as reader, VideoReader(mp4) as cpu:
        assert reader.hardware is False
        assert torch.equal(reader.read([0, 5, 9]), cpu.read([0, 5, 9]))


def test_only_packets_of_unreferenced_slices_are_skippable(mp4):
    """The NAL headers decide: non-reference slices (with SEI or delimiters) may be skipped; a
    reference slice, an IDR, a parameter set or a malformed packet never is."""

    def avcc(*nals: bytes) -> av.Packet:
        return av.Packet(b"".join(len(n).to_bytes(4, "big") + n for n in nals))

    with VideoReader(mp4) as reader:
        assert reader._nal_length_size == 4  # MP4: avcC, 4-byte NAL lengths
        skippable = reader._unreferenced
        assert skippable(avcc(b"\x01\xaa\xbb"))  # non-IDR slice, nal_ref_idc 0
        assert skippable(avcc(b"\x09\xf0", b"\x06\x05\x01", b"\x01\xaa"))  # AUD, SEI, slice
        assert not skippable(avcc(b"\x21\xaa"))  # nal_ref_idc 1: a reference
        assert not skippable(avcc(b"\x05\xaa"))  # IDR, however its ref_idc reads
        assert not skippable(avcc(b"\x68\xce", b"\x01\xaa"))  # a PPS before the slice
        assert not skippable(avcc(b"\x06\x05\x01"))  # no slice at all
        assert not skippable(av.Packet(b"\x00\x00\x00\x09\x01\xaa"))  # length past the end
        assert not skippable(avcc(b"\x81\xaa"))  # forbidden bit set
        reader._nal_length_size = None  # Annex B: start codes
        assert skippable(av.Packet(b"\x00\x00\x00\x01\x09\xf0\x00\x00\x01\x01\xaa"))
        assert not skippable(av.Packet(b"\x00\x00\x01\x67\x64\x00\x00\x01\x01\xaa"))  # SPS


# -- streaming: one decode front to back -------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["bikes.mp4", "bigbuckbunny.mp4", "carphone_pristine.mp4", "Megamind.avi"]
)
def test_a_stream_gives_what_read_gives(name):
    """Real clips (B-frames or not, and AVI's packed B-frames, whose timestamps go backwards):
    streamed frames equal PyAV's own decoding of every frame and come in order."""
    try:
        path = packaged_clip(name)
    except FileNotFoundError as e:
        pytest.skip(str(e))
    reference = every_frame(path)
    targets = list(range(2, len(reference), 5))
    with VideoReader(path, DecodeLimits(threads=1)) as reader:
        streamed = list(reader.stream(targets))
    assert [i for i, _ in streamed] == targets
    for i, frame in streamed:
        assert np.array_equal(frame.permute(1, 2, 0).numpy(), reference[i]), (name, i)


def test_a_stream_refuses_unsorted_ordinals_and_a_frame_that_does_not_decode(media, mp4):
    with VideoReader(mp4) as reader:
        with pytest.raises(ValueError, match="sorted, unique"):
            list(reader.stream([4, 1]))
        with pytest.raises(IndexError):
            list(reader.stream([1, 99]))
    path = write_clip(media / "corrupt_stream.mp4", 30, gop=30)
    data = zero_packet(path, 5)
    with VideoReader(data) as reader:
        frames = reader.stream([1, 20])
        assert next(frames)[0] == 1  # before the damage
        with pytest.raises(NotAVideo, match="frame 20 of 30 could not be decoded"):
            next(frames)
    # With a keyframe every 10 frames the damage ends at frame 10: the stream goes on.
    path = write_clip(media / "corrupt_stream_gop.mp4", 30, gop=10)
    data = zero_packet(path, 5)
    with VideoReader(data) as reader:
        assert [i for i, _ in reader.stream([1, 20, 25])] == [1, 20, 25]


def test_a_stream_stops_when_asked_between_frames(media):
    """A stop request ends the stream at the next decoded frame, even between wanted frames
    far apart (a timeline with a long stride whose client left), without an error."""
    path = write_clip(media / "stop.mp4", 60, gop=60)
    with VideoReader(path) as reader:
        decoded_at_start = reader.frames_decoded
        stop = lambda: reader.frames_decoded - decoded_at_start >= 5  # noqa: E731
        # frame 0 is still held back (STREAM_LOOKAHEAD) when the stop comes
        assert list(reader.stream([0, 59], stop=stop)) == []
        assert reader.frames_decoded - decoded_at_start == 5
