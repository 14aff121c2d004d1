"""An action timeline: a classifier's labels over sliding windows of a whole video, and the
segments where the top label stays the same.

Windows come from video.views.stream_windows (one decode front to back, bounded memory); each is
one temporal clip of the model's frames, seen through the checkpoint's spatial crops. The
records are what `zeroi2v predict --timeline` writes (NDJSON lines, or CSV), one per window
and then a summary.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from service.model_runner import ModelRunner
from service.responses import Label, TimelineSegment, TimelineSummary, TimelineWindow
from video.decode import VideoReader
from video.views import ViewSpec, stream_windows


def top_labels(probabilities: torch.Tensor, class_names: list[str], top_k: int) -> list[Label]:
    scores, indices = probabilities.topk(min(top_k, len(class_names)))
    return [
        Label(label=class_names[i], index=i, score=round(float(s), 6))
        for s, i in zip(scores.tolist(), indices.tolist(), strict=True)
    ]


def merge_segments(windows: list[TimelineWindow]) -> list[TimelineSegment]:
    """Consecutive windows with the same top label as one segment. Where the label changes,
    the boundary is midway between the centres of the last window of one label and the first
    of the next: a window takes a new label about when the new action fills half of it, so its
    start would put boundaries early by half a window. The first segment starts with the first
    window, the last ends with the last window; segments tile that span without overlaps."""
    segments: list[TimelineSegment] = []
    previous: TimelineWindow | None = None
    for w in windows:
        label = w.labels[0].label
        if segments and segments[-1].label == label:
            last = segments[-1]
            segments[-1] = last.model_copy(
                update={"end_s": w.end_s, "windows": last.windows + 1,
                        "mean_score": last.mean_score + (w.labels[0].score - last.mean_score)
                        / (last.windows + 1)}
            )  # fmt: skip
            previous = w
            continue
        start = w.start_s
        if segments:
            centre = (previous.start_s + previous.end_s + w.start_s + w.end_s) / 4
            start = round(centre, 3)
            segments[-1] = segments[-1].model_copy(update={"end_s": start})
        segments.append(TimelineSegment(start_s=start, end_s=w.end_s, label=label,
                                        windows=1, mean_score=w.labels[0].score))  # fmt: skip
        previous = w
    return [s.model_copy(update={"mean_score": round(s.mean_score, 6)}) for s in segments]


def local_timeline(
    runner: ModelRunner,
    reader: VideoReader,
    spec: ViewSpec,
    stride_s: float,
    top_k: int,
    windows_per_batch: int | None = None,
) -> Iterator[TimelineWindow | TimelineSummary]:
    """The timeline of the video `reader` has open, in this process: each window's record as
    soon as its batch has run, then the summary."""
    spec = spec.with_views(temporal_clips=1)
    per_batch = windows_per_batch or max(1, runner.max_batch_size // spec.spatial_crops)
    names = runner.info.class_names
    started = time.perf_counter()
    records: list[TimelineWindow] = []
    inference_s = 0.0
    pending = []

    def run(batch) -> list[TimelineWindow]:
        nonlocal inference_s
        t0 = time.perf_counter()
        views = [v for w in batch for v in runner.views(w.clip[None], spec)]
        probs = torch.stack(runner.run(views)).view(len(batch), spec.spatial_crops, -1).mean(1)
        ms = (time.perf_counter() - t0) * 1e3
        inference_s += ms / 1e3
        return [
            TimelineWindow(start_s=round(w.start_s, 3), end_s=round(w.end_s, 3),
                           labels=top_labels(p, names, top_k), inference_ms=round(ms, 2))
            for w, p in zip(batch, probs, strict=True)
        ]  # fmt: skip

    for window in stream_windows(reader, spec, stride_s):
        pending.append(window)
        if len(pending) == per_batch:
            for record in run(pending):
                records.append(record)
                yield record
            pending = []
    if pending:
        for record in run(pending):
            records.append(record)
            yield record
    yield TimelineSummary(
        windows=len(records),
        stride_s=stride_s,
        duration_s=round(reader.info.duration_s, 3),
        segments=merge_segments(records),
        frames_decoded=reader.frames_decoded,
        inference_ms=round(inference_s * 1e3, 2),
        total_ms=round((time.perf_counter() - started) * 1e3, 2),
    )


class RecordWriter:
    """Writes a timeline's records as they come: NDJSON (.jsonl, .ndjson: the windows and the
    summary), or CSV (.csv: start, end, then label and score of each of the top labels, a
    window a row). A path of None writes nothing. Use as a context manager."""

    SUFFIXES = (".jsonl", ".ndjson", ".csv")

    def __init__(self, path: Path | None, top_k: int):
        self.path = None if path is None else Path(path)
        if self.path is not None and self.path.suffix not in self.SUFFIXES:
            raise ValueError(f"{self.path}: timeline records go to .jsonl, .ndjson or .csv")
        self.top_k = top_k
        self._file = self._csv = None

    def __enter__(self) -> RecordWriter:
        if self.path is not None:
            self._file = self.path.open("w", newline="")
            if self.path.suffix == ".csv":
                self._csv = csv.writer(self._file)
                self._csv.writerow(["start_s", "end_s"] + [
                    f"{c}{i + 1}" for i in range(self.top_k) for c in ("label", "score")
                ])  # fmt: skip
        return self

    def write(self, record: TimelineWindow | TimelineSummary) -> None:
        if self._file is None:
            return
        if self._csv is None:
            self._file.write(record.model_dump_json() + "\n")
        elif isinstance(record, TimelineWindow):
            labels = [v for lab in record.labels for v in (lab.label, lab.score)]
            self._csv.writerow([record.start_s, record.end_s, *labels])
        self._file.flush()

    def __exit__(self, *exc) -> None:
        if self._file is not None:
            self._file.close()


def plot_timeline(windows: list[TimelineWindow], path: Path, classes: int = 5) -> None:
    """A strip chart: the score of each of the `classes` most often top-ranked labels over time,
    one line each, and the top label of each window as a coloured band beneath."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers
    import matplotlib.pyplot as plt

    counts: dict[str, int] = {}
    for w in windows:
        counts[w.labels[0].label] = counts.get(w.labels[0].label, 0) + 1
    shown = sorted(counts, key=lambda name: -counts[name])[:classes]
    centres = [(w.start_s + w.end_s) / 2 for w in windows]
    fig, ax = plt.subplots(figsize=(10, 3.2))
    colours = {name: plt.cm.tab10(i % 10) for i, name in enumerate(shown)}
    for name in shown:
        scores = [next((lab.score for lab in w.labels if lab.label == name), 0.0) for w in windows]
        ax.plot(centres, scores, label=name, color=colours[name], linewidth=1.5)
    for w in windows:
        colour = colours.get(w.labels[0].label, "lightgrey")
        ax.axvspan(w.start_s, w.end_s, ymin=0, ymax=0.04, color=colour, linewidth=0)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("seconds")
    ax.set_ylabel("score")
    ax.legend(loc="upper right", fontsize=7, ncol=min(len(shown), 5))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
