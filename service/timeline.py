"""An action timeline: a classifier's labels over sliding windows of a whole video, and the
segments where the top label stays the same.

The windows come from video.views.WindowPlan.stream (one decode front to back, bounded memory),
run in a worker thread (`WindowSource`) that stays at most a few batches ahead of the model.
Each window is one temporal clip of the model's frames seen through the spatial crops; batches
of windows go to the model like any request's views (the Ray model replica batches them with
other requests'). VideoService.timeline puts it together for POST /timeline and
`zeroi2v predict --timeline`, which both write these records: one per window, then a summary.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import csv
import math
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path

import anyio
import torch

from service import problems
from service.decoding import release_free_memory
from service.responses import Label, TimelineSegment, TimelineSummary, TimelineWindow
from service.settings import ServiceSettings
from video.decode import DecodeLimits, VideoReader
from video.views import ViewSpec, Window, WindowPlan, windows_plan


@dataclass(frozen=True)
class TimelineParams:
    stride_s: float | None = None  # None: half a window (video.views.windows_plan)
    top_k: int = 5
    spatial_crops: int | None = None  # None: the model's

    # Below a frame at 100 fps a stride only repeats windows; and it bounds a request's windows
    # (30 minutes: 180,000).
    MIN_STRIDE_S = 0.01

    def check(self, settings: ServiceSettings) -> None:
        """Refuse bad parameters (a 422 problem) before any upload is read."""
        if self.stride_s is not None and not self.MIN_STRIDE_S <= self.stride_s < math.inf:
            raise problems.bad_parameters(
                f"stride_s: {self.stride_s} is not seconds >= {self.MIN_STRIDE_S}"
            )
        if self.top_k < 1 or self.top_k > settings.max_top_k:
            raise problems.bad_parameters(f"top_k: from 1 to {settings.max_top_k}")
        if self.spatial_crops not in (None, 1, 3):
            raise problems.bad_parameters("spatial_crops: 1 (centre) or 3 (three crops)")


@dataclass(frozen=True)
class WindowScores:
    """The model's answer for a batch of windows."""

    outputs: list  # per window, its task's combined output (classification: probabilities)
    inference_ms: float  # the model batch(es) the windows ran in
    batch_size: int  # items in the largest of them


def window_outputs(task, groups: list[list], results: list) -> list:
    """The results of the flattened `groups` (each window's batch items) put back together
    per window, as the task combines a request's."""
    outputs, k = [], 0
    for group in groups:
        outputs.append(task.combine(results[k : k + len(group)]))
        k += len(group)
    return outputs


class WindowSource:
    """A timeline's windows, decoded in a worker thread and handed to the event loop through a
    bounded queue: decoding runs at most `ahead` windows ahead of the model, so memory stays
    bounded however slow the model is, and `aclose` stops the decode at its next window."""

    def __init__(self, reader: VideoReader, plan: WindowPlan, pool: Executor, ahead: int):
        self.reader, self.plan = reader, plan
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue = asyncio.Queue(ahead)
        self._stopping = threading.Event()
        self._error: BaseException | None = None
        self._finished = False
        self._done = asyncio.wrap_future(pool.submit(self._produce))

    @classmethod
    async def open(
        cls,
        source: str | Path,
        spec: ViewSpec,
        stride_s: float | None,
        limits: DecodeLimits,
        pool: Executor,
        ahead: int,
        name: str | None = None,
    ) -> WindowSource:
        """Open the video and plan its windows (in `pool`): a file that is not a video, or too
        long, or shorter than one window, fails here, before any window is decoded. `name`: what
        messages call the video (default: its path)."""

        def open_and_plan() -> tuple[VideoReader, WindowPlan]:
            reader = VideoReader(source, limits, name=name)
            try:
                return reader, windows_plan(reader, spec, stride_s)
            except BaseException:
                reader.close()
                raise

        opening = pool.submit(open_and_plan)
        try:
            reader, plan = await asyncio.wrap_future(opening)
        except asyncio.CancelledError:
            # The open goes on in its thread (up to the decode timeout): wait for it, so that
            # the request's slot and file are let go of after it, and close what it opened.
            with anyio.CancelScope(shield=True):
                with contextlib.suppress(Exception):
                    reader, _ = await asyncio.wrap_future(opening)
                    reader.close()
            raise
        return cls(reader, plan, pool, ahead)

    def _produce(self) -> None:
        try:
            started = time.perf_counter()
            for window in self.plan.stream(self.reader, self._stopping.is_set):
                if not self._put((window, time.perf_counter() - started)):
                    return
                started = time.perf_counter()
            self._put(None)
        except BaseException as e:  # handed to the reading side, which raises it
            self._put(e)
        finally:
            self.reader.close()
            release_free_memory()

    def _put(self, item) -> bool:
        """Hand `item` to the loop, waiting while the queue is full; False once closed."""
        future = asyncio.run_coroutine_threadsafe(self._queue.put(item), self._loop)
        while not self._stopping.is_set():
            try:
                future.result(timeout=0.1)
                return True
            except concurrent.futures.TimeoutError:
                continue
        future.cancel()
        return False

    async def next_batch(self, most: int) -> list[tuple[Window, float]]:
        """The next windows with the seconds each took to decode: the first waited for, then
        up to `most` that are ready; [] at the end. A decode error is raised after the windows
        before it."""
        batch: list[tuple[Window, float]] = []
        while len(batch) < most and not self._finished and (not batch or not self._queue.empty()):
            item = await self._queue.get()
            if item is None or isinstance(item, BaseException):
                self._finished, self._error = True, item
            else:
                batch.append(item)
        if not batch and self._error is not None:
            raise self._error
        return batch

    async def aclose(self) -> None:
        """Stop decoding (at the next decoded frame) and wait until the worker has let go
        of the video."""
        self._stopping.set()
        await self._done


async def timeline_records(
    source: WindowSource,
    score: Callable[[torch.Tensor], Awaitable[WindowScores]],
    class_names: list[str],
    top_k: int,
    per_batch: int,
    model_id: str,
    spatial_crops: int,
) -> AsyncIterator[TimelineWindow | TimelineSummary]:
    """Each window's record as soon as its batch has been scored (`score`: uint8 windows (n,
    T, 3, H, W) -> WindowScores), then the summary. Decoding goes on while a batch is scored."""
    started = time.perf_counter()
    segments = SegmentMerger()
    count, decode_s, inference_ms = 0, 0.0, 0.0
    while batch := await source.next_batch(per_batch):
        scored = await score(torch.stack([window.clip for window, _ in batch]))
        inference_ms += scored.inference_ms
        for (window, seconds), output in zip(batch, scored.outputs, strict=True):
            decode_s += seconds
            record = TimelineWindow(
                start_s=round(window.start_s, 3), end_s=round(window.end_s, 3),
                labels=top_labels(output, class_names, top_k),
                decode_ms=round(seconds * 1e3, 2), inference_ms=round(scored.inference_ms, 2),
                batch_size=scored.batch_size,
            )  # fmt: skip
            segments.add(record)
            count += 1
            yield record
    yield TimelineSummary(
        model=model_id,
        windows=count,
        stride_s=source.plan.stride_s,
        spatial_crops=spatial_crops,
        duration_s=round(source.plan.duration_s, 3),
        segments=segments.segments(),
        frames_decoded=source.reader.frames_decoded,
        decode_ms=round(decode_s * 1e3, 2),
        inference_ms=round(inference_ms, 2),
        total_ms=round((time.perf_counter() - started) * 1e3, 2),
    )


def top_labels(probabilities: torch.Tensor, class_names: list[str], top_k: int) -> list[Label]:
    scores, indices = probabilities.topk(min(top_k, len(class_names)))
    return [
        Label(label=class_names[i], index=i, score=round(float(s), 6))
        for s, i in zip(scores.tolist(), indices.tolist(), strict=True)
    ]


class SegmentMerger:
    """Consecutive windows with the same top label as one segment, window by window (a long
    timeline keeps its segments, not its windows). Where the label changes, the boundary is
    midway between the centres of the last window of one label and the first of the next: a
    window takes a new label about when the new action fills half of it, so its start would put
    boundaries early by half a window. The first segment starts with the first window, the last
    ends with the last window; segments tile that span without overlaps."""

    def __init__(self):
        self._segments: list[TimelineSegment] = []
        self._previous: TimelineWindow | None = None

    def add(self, w: TimelineWindow) -> None:
        segments, label, score = self._segments, w.labels[0].label, w.labels[0].score
        if segments and segments[-1].label == label:
            last = segments[-1]
            segments[-1] = last.model_copy(
                update={"end_s": w.end_s, "windows": last.windows + 1,
                        "mean_score": last.mean_score + (score - last.mean_score)
                        / (last.windows + 1)}
            )  # fmt: skip
        else:
            start = w.start_s
            if segments:
                p = self._previous
                start = round((p.start_s + p.end_s + w.start_s + w.end_s) / 4, 3)
                segments[-1] = segments[-1].model_copy(update={"end_s": start})
            segments.append(TimelineSegment(start_s=start, end_s=w.end_s, label=label,
                                            windows=1, mean_score=score))  # fmt: skip
        self._previous = w

    def segments(self) -> list[TimelineSegment]:
        return [s.model_copy(update={"mean_score": round(s.mean_score, 6)}) for s in self._segments]


def merge_segments(windows: list[TimelineWindow]) -> list[TimelineSegment]:
    merger = SegmentMerger()
    for w in windows:
        merger.add(w)
    return merger.segments()


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
