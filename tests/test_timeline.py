"""The timeline's pieces alone: merging windows into segments, the record files, bad options."""

import json

import pytest
from typer.testing import CliRunner

from cli import app
from service.responses import Label, TimelineWindow
from service.timeline import RecordWriter, merge_segments
from training import demo


def window(start: float, label: str, score: float) -> TimelineWindow:
    labels = [Label(label=label, index=0, score=score)]
    return TimelineWindow(start_s=start, end_s=start + 1.5, decode_ms=1.0, inference_ms=1.0,
                          batch_size=1, labels=labels)  # fmt: skip


def test_consecutive_windows_with_one_top_label_are_one_segment():
    windows = [window(0, "a", 0.9), window(1, "a", 0.7), window(2, "b", 0.6), window(3, "a", 1.0)]
    segments = merge_segments(windows)
    # Window centres at 0.75, 1.75, 2.75, 3.75: boundaries midway between them.
    assert [(s.label, s.start_s, s.end_s, s.windows) for s in segments] == [
        ("a", 0, 2.25, 2), ("b", 2.25, 3.25, 1), ("a", 3.25, 4.5, 1)
    ]  # fmt: skip
    assert segments[0].mean_score == pytest.approx(0.8)
    assert merge_segments([]) == []


def write_records(records, path) -> None:
    with RecordWriter(path, top_k=1) as writer:
        for record in records:
            writer.write(record)


def test_records_as_ndjson_and_csv(tmp_path):
    windows = [window(0, "a", 0.9), window(1, "b", 0.5)]
    write_records(windows, tmp_path / "t.jsonl")
    lines = [json.loads(line) for line in (tmp_path / "t.jsonl").read_text().splitlines()]
    assert [line["labels"][0]["label"] for line in lines] == ["a", "b"]
    write_records(windows, tmp_path / "t.csv")
    assert (tmp_path / "t.csv").read_text().splitlines() == [
        "start_s,end_s,label1,score1", "0.0,1.5,a,0.9", "1.0,2.5,b,0.5"
    ]  # fmt: skip
    with pytest.raises(ValueError, match=".jsonl, .ndjson or .csv"):
        write_records(windows, tmp_path / "t.txt")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--stride", "0"], "--stride must be a number of seconds > 0"),
        (["--stride", "inf"], "--stride must be a number of seconds > 0"),
        (["--out", "t.txt"], ".jsonl, .ndjson or .csv"),
        (["--out", "/no/such/folder/t.csv"], "/no/such/folder/t.csv: No such file"),
        (["--plot", "t.txt"], "the chart is a .png"),
        (["--clips", "2"], "--clips has no meaning with --timeline"),
        (["--crops", "2"], "spatial_crops: 1 (centre) or 3"),
    ],
)
def test_bad_timeline_options_are_refused(tmp_path, options, message):
    clip = demo.write_clips(tmp_path / "clips")[0]
    result = CliRunner().invoke(
        app, ["predict", str(clip), "-m", str(demo.SHIPPED), "--timeline", *options]
    )
    assert result.exit_code == 2 and message in result.output


def test_a_video_shorter_than_a_window_is_refused(tmp_path):
    import numpy as np

    rng = np.random.default_rng(0)
    short = tmp_path / "short.mp4"
    demo.write_mp4(short, demo.synth_frames("growing", rng, 10, 64, 0.25))  # 10 frames < 15
    result = CliRunner().invoke(app, ["predict", str(short), "-m", str(demo.SHIPPED), "--timeline"])
    assert result.exit_code == 2 and "spans 15 frames" in result.output
