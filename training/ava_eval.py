"""Frame-level action detection AP on AVA: the official metric, mean AP at IoU 0.5.

Reproduces the AVA evaluation code (`ava_evaluation/` in mmaction2 and SlowFast, from
ActivityNet's `Evaluation/ava/`), which runs the Pascal VOC evaluator of the TensorFlow object
detection API with each action a class:

- every (person, action) of the ground truth is a box of that action's class, every detection
  row a scored box of its class; actions outside `class_ids` are dropped from both;
- excluded key frames are dropped from the ground truth and the detections;
- per key frame and class, detections in descending score order each take the ground-truth box
  they overlap most (IoU on continuous coordinates, first box on ties): a true positive if that
  IoU >= the threshold and no earlier detection took the box, else a false positive. A detection
  whose best box is taken is a false positive even when a free box also overlaps it enough:
  VOC's greedy rule, not an optimal assignment;
- detections at key frames without ground truth are false positives: the TF evaluator gives
  such frames an empty ground truth rather than skipping them;
- per class, AP is the VOC all-points area under the precision/recall curve with precision made
  non-increasing; a class without ground truth has no AP (None) and is left out of the mean.

Equal scores: the official code orders them with numpy's unstable argsort, so its AP for tied
scores depends on the input order in ways nobody relies on; here ties keep input order (key
frames in dict order, detections in list order).
"""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from training.formats.ava import Actor, Box, Detection, Key, iou_matrix


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two boxes (training.formats.ava.iou_matrix)."""
    return float(iou_matrix([a], [b])[0, 0])


def average_precision(scores: Sequence[float], is_tp: Sequence[bool], num_positives: int) -> float:
    """VOC all-points AP of detections with these scores and true-positive flags, against
    `num_positives` ground-truth boxes (those never detected count as misses)."""
    if len(scores) != len(is_tp):
        raise ValueError(f"{len(scores)} scores but {len(is_tp)} true-positive flags")
    if num_positives < 1:
        raise ValueError(f"num_positives must be >= 1, not {num_positives}")
    tp = np.asarray(is_tp, dtype=bool)
    if tp.sum() > num_positives:
        raise ValueError(f"{tp.sum()} true positives but only {num_positives} positives")
    if not len(tp):
        return 0.0
    values = np.asarray(scores, dtype=np.float64)
    if np.isnan(values).any():
        raise ValueError("a score is NaN")
    tp = tp[np.argsort(-values, kind="stable")]
    precision = np.cumsum(tp) / np.arange(1, len(tp) + 1)
    # The precision credited at a recall level is the best one reached at that recall or beyond.
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    # Recall rises by 1 / num_positives at each true positive and nowhere else.
    return float(envelope[tp].sum() / num_positives)


@dataclass
class _Matches:
    scores: dict[int, list[float]]
    is_tp: dict[int, list[bool]]
    num_groundtruth: dict[int, int]
    key_frames: int
    key_frames_without_groundtruth: int


def _match(
    groundtruth: dict[Key, list[Actor]],
    detections: dict[Key, list[Detection]],
    class_ids: Sequence[int],
    exclusions: Collection[Key],
    iou_threshold: float,
    max_per_key: int | None,
) -> _Matches:
    classes = list(class_ids)
    if len(set(classes)) != len(classes):
        raise ValueError("class_ids has duplicates")
    if not 0 < iou_threshold <= 1:
        raise ValueError(f"iou_threshold must be in (0, 1], not {iou_threshold}")
    if max_per_key is not None and max_per_key < 1:
        raise ValueError(f"max_per_key must be >= 1 or None, not {max_per_key}")
    wanted = set(classes)
    excluded = set(exclusions)

    boxes: dict[Key, dict[int, list[Box]]] = {}  # key -> class -> ground-truth boxes
    num_groundtruth = dict.fromkeys(classes, 0)
    for key, actors in groundtruth.items():
        if key in excluded:
            continue
        by_class = boxes.setdefault(key, {})
        for actor in actors:
            for action in actor.actions:
                if action in wanted:
                    by_class.setdefault(action, []).append(actor.box)
                    num_groundtruth[action] += 1

    scores: dict[int, list[float]] = {c: [] for c in classes}
    is_tp: dict[int, list[bool]] = {c: [] for c in classes}
    without_groundtruth = 0
    for key, at_key in detections.items():
        if key in excluded:
            continue
        without_groundtruth += key not in boxes
        ranked = sorted((d for d in at_key if d.action in wanted), key=lambda d: -d.score)
        if max_per_key is not None:
            # ActivityNet's evaluation server reads only the 50 best rows of each key frame.
            ranked = ranked[:max_per_key]
        by_class = boxes.get(key, {})
        taken: dict[int, list[bool]] = {}
        # The TF evaluator drops empty boxes rather than counting them.
        ranked = [d for d in ranked if d.box[0] < d.box[2] and d.box[1] < d.box[3]]
        # Every IoU of the key frame at once: each detected box (one per action it scores)
        # against each ground-truth box.
        found = {box: i for i, box in enumerate(dict.fromkeys(d.box for d in ranked))}
        truth = {
            box: i for i, box in enumerate(dict.fromkeys(b for v in by_class.values() for b in v))
        }
        table = iou_matrix(list(found), list(truth)).tolist() if found and truth else []
        for d in ranked:
            candidates = by_class.get(d.action, [])
            hit = False
            if candidates:
                row = table[found[d.box]]
                overlaps = [row[truth[box]] for box in candidates]
                best = max(range(len(candidates)), key=overlaps.__getitem__)
                used = taken.setdefault(d.action, [False] * len(candidates))
                if overlaps[best] >= iou_threshold and not used[best]:
                    used[best] = hit = True
            scores[d.action].append(d.score)
            is_tp[d.action].append(hit)
    return _Matches(scores, is_tp, num_groundtruth, len(boxes), without_groundtruth)


def _per_class(matches: _Matches) -> dict[int, float | None]:
    return {
        c: average_precision(matches.scores[c], matches.is_tp[c], n) if n else None
        for c, n in matches.num_groundtruth.items()
    }


def frame_ap(
    groundtruth: dict[Key, list[Actor]],
    detections: dict[Key, list[Detection]],
    class_ids: Sequence[int],
    exclusions: Collection[Key] = (),
    iou_threshold: float = 0.5,
    *,
    max_per_key: int | None = None,
) -> dict[int, float | None]:
    """AP per class id, None for a class without ground truth (see the module docstring).

    `max_per_key=50` keeps only the 50 best-scoring detections of each key frame, as
    ActivityNet's `get_ava_performance.py` (the challenge server) does; mmaction2 and SlowFast
    keep all, and so does the default.
    """
    matches = _match(groundtruth, detections, class_ids, exclusions, iou_threshold, max_per_key)
    return _per_class(matches)


def mean_ap(per_class: dict[int, float | None]) -> float:
    """Mean over the classes that have an AP (those with ground truth)."""
    values = [ap for ap in per_class.values() if ap is not None]
    if not values:
        raise ValueError("no class has an AP: no ground truth for any class")
    return sum(values) / len(values)


# ---------------------------------------------------------------------------------------------
# report


@dataclass
class DetectionReport:
    per_class: dict[int, float | None]  # class id -> AP, None without ground truth
    class_names: dict[int, str]
    num_groundtruth: dict[int, int]  # ground-truth boxes per class, after exclusions
    num_detections: dict[int, int]  # detections per class that were scored
    key_frames: int  # ground-truth key frames evaluated (after exclusions)
    # Key frames with detections but no ground truth: every detection there is a false positive.
    key_frames_without_groundtruth: int = 0
    iou_threshold: float = 0.5
    # Set by training/detection.py: where the actor boxes came from (proposals, localiser,
    # groundtruth), the fraction of true boxes they found at IoU 0.5, and unreadable clips.
    box_source: str | None = None
    box_recall: float | None = None
    broken: list[str] = field(default_factory=list)
    # Every scored (box, action) per key frame, for training.formats.ava.write_detections.
    detections: dict[Key, list[Detection]] = field(default_factory=dict, repr=False)

    @property
    def mAP(self) -> float | None:
        if all(ap is None for ap in self.per_class.values()):
            return None
        return mean_ap(self.per_class)

    def headline(self) -> dict:
        """The numbers `zeroi2v eval` prints."""
        return {"key_frames": self.key_frames, "boxes": self.box_source, "mAP": self.mAP,
                "box_recall": self.box_recall}  # fmt: skip

    def summary(self) -> dict:
        return {
            "mAP": self.mAP,
            "iou_threshold": self.iou_threshold,
            "key_frames": self.key_frames,
            "key_frames_without_groundtruth": self.key_frames_without_groundtruth,
            "box_source": self.box_source,
            "box_recall": self.box_recall,
            "broken_clips": self.broken,
            "classes": len(self.per_class),
            "classes_with_groundtruth": sum(ap is not None for ap in self.per_class.values()),
            "per_class": [
                {
                    "id": c,
                    "name": self.class_names.get(c, str(c)),
                    "ap": ap,
                    "groundtruth": self.num_groundtruth.get(c, 0),
                    "detections": self.num_detections.get(c, 0),
                }
                for c, ap in self.per_class.items()
            ],
        }


def evaluate_detections(
    groundtruth: dict[Key, list[Actor]],
    detections: dict[Key, list[Detection]],
    label_map: dict[int, str],
    exclusions: Collection[Key] = (),
    iou_threshold: float = 0.5,
    *,
    max_per_key: int | None = None,
) -> DetectionReport:
    """frame_ap over the classes of `label_map` (the 60-class evaluation map for AVA v2.2),
    with the counts a report needs."""
    matches = _match(
        groundtruth, detections, list(label_map), exclusions, iou_threshold, max_per_key
    )
    return DetectionReport(
        per_class=_per_class(matches),
        class_names=dict(label_map),
        num_groundtruth=matches.num_groundtruth,
        num_detections={c: len(s) for c, s in matches.scores.items()},
        key_frames=matches.key_frames,
        key_frames_without_groundtruth=matches.key_frames_without_groundtruth,
        iou_threshold=iou_threshold,
    )


def write_detection_report(
    report: DetectionReport, out_dir: Path, name: str = "eval_detection"
) -> dict[str, Path]:
    """`<name>.json` with every number and `<name>_ap.png`, AP per class as bars."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / f"{name}.json"
    json_path.write_text(json.dumps(report.summary(), indent=1))
    png_path = out_dir / f"{name}_ap.png"
    plot_ap(report, png_path)
    return {"json": json_path, "png": png_path}


def plot_ap(report: DetectionReport, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display on servers
    import matplotlib.pyplot as plt

    ids = list(report.per_class)
    n = len(ids)
    aps = [report.per_class[c] for c in ids]
    labels = [f"{report.class_names.get(c, str(c))} ({c})" for c in ids]
    fig, ax = plt.subplots(figsize=(8, min(40.0, max(3.0, 0.22 * n + 1.5))))
    rows = range(n)
    ax.barh(rows, [0.0 if ap is None else ap for ap in aps], color="tab:blue")
    ax.set_yticks(rows, labels, fontsize=7)
    for row, ap in zip(rows, aps, strict=True):
        if ap is None:
            ax.get_yticklabels()[row].set_color("grey")
            ax.text(0.01, row, "no ground truth", va="center", fontsize=6, color="grey")
        else:
            ax.text(ap + 0.01, row, f"{ap:.3f}", va="center", fontsize=6)
    overall = report.mAP
    title = f"frame AP@{report.iou_threshold:g} per class, {report.key_frames} key frames"
    if overall is not None:
        ax.axvline(overall, color="tab:red", linestyle="--", linewidth=1)
        title += f" (mAP {overall:.3f})"
    ax.set_ylim(max(n, 1) - 0.5, -0.5)  # first class at the top, no margins
    ax.set_xlim(0, 1.08)
    ax.set_xlabel("average precision")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
