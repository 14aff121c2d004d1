"""The task seam of training: what train.py and `zeroi2v eval` ask of a task, and the two tasks.

A task owns its data (dataset, collate, how a split is described), its loss, its evaluation
(result, the line and record a run logs, the report it writes) and the split an evaluation
reads. The model's side of a task is its head (model/tasks.py); the service's side is its
answer (service/tasks.py). train.py and the CLI take `TASKS[cfg.model.task]` and never branch.

Batches are (inputs, targets, broken): inputs a (B, ...) tensor, targets whatever the task's
loss and evaluation read, broken the unreadable samples (training.data.BrokenVideo).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from training.augment import ClipAugment
from training.ava_eval import DetectionReport, write_detection_report
from training.config import ExperimentConfig, TrainConfig
from training.data import VideoClips, collate, describe, load_annotations, test_loader
from training.detection import (
    AvaKeyFrames,
    AvaSplit,
    collate_keyframes,
    detection_loss,
    evaluate_detection,
    keyframe_loader,
    load_ava,
)
from training.evaluate import EvalResult, evaluate, write_report
from training.formats.ava import write_detections
from video.views import ViewSpec


class TaskError(ValueError):
    """Data that does not fit the task or the model (class names that disagree, say)."""


@dataclass
class TrainingData:
    train: Dataset
    val: Dataset
    train_split: Any  # the parsed split (Annotations, AvaSplit), for `describe` and evaluation
    val_split: Any
    class_names: list[str]


class TrainingTask(Protocol):
    collate: Callable

    def data(self, cfg: ExperimentConfig) -> TrainingData: ...

    def describe(self, split) -> str: ...

    def prepare(self, model: nn.Module, t: TrainConfig) -> None:
        """Adjust what trains before the optimiser sees the parameters."""

    def loss(self, model: nn.Module, inputs: torch.Tensor, targets, t: TrainConfig): ...

    def evaluate(self, model, loader, split, cfg, device, amp=None, progress=None): ...

    def summary(self, result) -> tuple[dict, str]:
        """The numbers a run logs after an evaluation, and the line it prints."""

    def eval_loader(
        self,
        cfg: ExperimentConfig,
        split: str,
        class_names: list[str],
        spec: ViewSpec | None = None,
    ) -> tuple[Any, DataLoader]:
        """A split of cfg's dataset for evaluating a model trained on `class_names`, seen as
        `spec` says (None: cfg's test views; `zeroi2v eval`: ExperimentConfig.eval_view_spec)."""

    def write_report(self, result, out_dir: Path, name: str) -> dict[str, Path]: ...

    def write_predictions(self, result, out_dir: Path, split: str) -> list[Path]:
        """What `zeroi2v eval` writes beside the report (detection: the detections as CSV)."""


class Classification:
    """One label per video; multi-view top-1/top-5 and a confusion matrix."""

    collate = staticmethod(collate)
    describe = staticmethod(describe)

    def data(self, cfg: ExperimentConfig) -> TrainingData:
        train_spec, test_spec = cfg.view_spec(train=True), cfg.view_spec(train=False)
        train_set = load_annotations(cfg, "train")
        names = train_set.class_names
        val_set = load_annotations(cfg, "val", class_names=names)
        if val_set.class_names != names:
            raise TaskError("train and val annotations disagree on the class names")
        augment = ClipAugment(cfg.augment, cfg.model.image_size, train_spec.mean, train_spec.std,
                              names)  # fmt: skip
        return TrainingData(
            VideoClips(train_set, train_spec, train=True, augment=augment),
            VideoClips(val_set, test_spec, train=False),
            train_set, val_set, names,
        )  # fmt: skip

    def prepare(self, model: nn.Module, t: TrainConfig) -> None:
        pass

    def loss(self, model, inputs: torch.Tensor, labels: torch.Tensor, t: TrainConfig):
        return F.cross_entropy(model(inputs).float(), labels, label_smoothing=t.label_smoothing)

    def evaluate(self, model, loader, split, cfg, device, amp=None, progress=None) -> EvalResult:
        result = evaluate(model, loader, split.class_names, device, amp, progress)
        # The views the loader made, which `zeroi2v eval` may take from the checkpoint.
        return dataclasses.replace(result, views=loader.dataset.spec.num_views)

    def summary(self, result: EvalResult) -> tuple[dict, str]:
        line = (
            f"top1 {result.top1:.4f} top5 {result.top5:.4f} ({result.count} videos, "
            f"{result.views} views)"
        )
        return {"top1": result.top1, "top5": result.top5}, line

    def eval_loader(self, cfg, split: str, class_names: list[str], spec=None):
        annotations = load_annotations(cfg, split, class_names=class_names)
        if annotations.class_names != class_names:
            raise TaskError(f"the model was trained on other classes than the {split} split's")
        spec = spec or cfg.view_spec(train=False)
        videos = max(1, 8 // spec.num_views)
        return annotations, test_loader(annotations, spec, cfg.data.num_workers, videos)

    def write_report(self, result: EvalResult, out_dir: Path, name: str) -> dict[str, Path]:
        return write_report(result, out_dir, name=name)

    def write_predictions(self, result: EvalResult, out_dir: Path, split: str) -> list[Path]:
        return []  # the report's confusion matrix says it all


class Detection:
    """AVA: actions of actor boxes at key frames; frame mAP@0.5 and the boxes' recall."""

    collate = staticmethod(collate_keyframes)
    describe = staticmethod(AvaSplit.describe)

    def data(self, cfg: ExperimentConfig) -> TrainingData:
        train_spec, test_spec = cfg.view_spec(train=True), cfg.view_spec(train=False)
        train_set, val_set = load_ava(cfg, "train"), load_ava(cfg, "val")
        if val_set.action_ids != train_set.action_ids:
            raise TaskError("train and val use different label maps")
        offset = cfg.data.time_offset
        return TrainingData(
            AvaKeyFrames(train_set, train_spec, True, cfg.augment.box_jitter, offset),
            AvaKeyFrames(val_set, test_spec, False, time_offset=offset),
            train_set, val_set, train_set.class_names,
        )  # fmt: skip

    def prepare(self, model: nn.Module, t: TrainConfig) -> None:
        if t.localiser_weight == 0:  # no loss reaches it: DDP needs it out of the graph
            model.head.localiser.requires_grad_(False)

    def loss(self, model, clips: torch.Tensor, targets, t: TrainConfig):
        return detection_loss(model, clips, targets, t.localiser_weight)

    def evaluate(
        self, model, loader, split: AvaSplit, cfg, device, amp=None, progress=None
    ) -> DetectionReport:
        d = cfg.data
        return evaluate_detection(
            model, loader, split, d.detect_boxes, d.detect_threshold, device, amp, progress
        )

    def summary(self, result: DetectionReport) -> tuple[dict, str]:
        line = f"mAP@0.5 {result.mAP:.4f} ({result.key_frames} key frames)"
        return {"mAP": result.mAP}, line

    def eval_loader(self, cfg, split: str, class_names: list[str], spec=None):
        data = load_ava(cfg, split)
        if data.class_names != class_names:
            raise TaskError(f"the model's actions differ from the label map {cfg.data.labels}")
        d = cfg.data
        return data, keyframe_loader(data, spec or cfg.view_spec(train=False), d.num_workers,
                                     d.time_offset)  # fmt: skip

    def write_report(self, result: DetectionReport, out_dir: Path, name: str) -> dict[str, Path]:
        return write_detection_report(result, out_dir, name=name)

    def write_predictions(self, result: DetectionReport, out_dir: Path, split: str) -> list[Path]:
        """Every scored (box, action) in AVA's results format (none found: no file)."""
        if not any(result.detections.values()):
            return []
        path = out_dir / f"detections_{split}.csv"
        write_detections(path, result.detections)
        return [path]


TASKS: dict[str, TrainingTask] = {"classify": Classification(), "detect": Detection()}
