"""Training configuration: one YAML file per experiment, overridable with `--set key=value`.

Sections: `model` (model.ZeroI2VConfig; num_classes comes from the data), `data` (annotation
format, files, sampling), `augment`, `train` (optimiser, schedule, checkpoints). Every section
forbids unknown keys, so a typo is an error that names the key, not a silently ignored setting.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from model import ZeroI2VConfig
from model.backbone import normalization
from model.detection import BOX_THRESHOLD
from video.sampling import SamplingSpec
from video.views import ViewSpec

AnnotationFormat = Literal["video_list", "kinetics", "ssv2", "ucf101", "hmdb51", "ava"]
# The data formats each model task trains on (training/tasks.py reads them).
TASK_FORMATS = {
    "classify": ("video_list", "kinetics", "ssv2", "ucf101", "hmdb51"),
    "detect": ("ava",),
}


class ConfigError(ValueError):
    """A training config that cannot be used; the message names the file and the key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(_Section):
    """Where the videos and annotations are, and how clips are sampled.

    Files per format:
    Relative paths are resolved against `base_dir` (default: the working directory).
      video_list: train, val (mmaction2 lists), class_names (optional)
      kinetics:   train, val (CSV files)
      ssv2:       labels (labels.json), train, val (train.json, validation.json)
      ucf101:     class_names (classInd.txt), train, val (trainlist0N.txt, testlist0N.txt)
      hmdb51:     splits_dir, split (1-3)
      ava:        labels (label-map .pbtxt), train, val (annotation CSVs), optional exclusions
                  and proposals (for val); videos are ROOT/<video_id>.<ext> (model.task: detect)
    """

    format: AnnotationFormat = "video_list"
    root: str
    train: str | None = None
    val: str | None = None
    test: str | None = None  # held-out split for final numbers (optional)
    class_names: str | None = None
    labels: str | None = None
    splits_dir: str | None = None
    split: int = Field(1, ge=1, le=3)
    sampling: Literal["dense", "uniform"] = "dense"
    frame_interval: int = Field(16, ge=1)
    test_clips: int = Field(1, ge=1)
    test_crops: Literal[1, 3] = 1
    # AVA only. Timestamps minus time_offset are seconds into the video file: 900 for the
    # usual 15-minute cuts (AVA's key frames run from 902 s to 1798 s of each movie).
    exclusions: str | None = None
    proposals: str | None = None
    time_offset: float = 0.0
    # Actor boxes at evaluation: a person detector's (proposals, the AVA protocol), the
    # model's own localiser, or the ground truth (measures the action head alone).
    detect_boxes: Literal["proposals", "localiser", "groundtruth"] = "proposals"
    detect_threshold: float = Field(
        BOX_THRESHOLD, ge=0.0, le=1.0, description="localiser box score"
    )
    # Fraction of a split's videos that may fail to decode before the run stops.
    max_broken_fraction: float = Field(0.01, ge=0.0, le=1.0)
    num_workers: int = Field(2, ge=0)

    @model_validator(mode="after")
    def _files_for_format(self):
        need = {
            "video_list": ["train", "val"],
            "kinetics": ["train", "val"],
            "ssv2": ["labels", "train", "val"],
            "ucf101": ["class_names", "train", "val"],
            "hmdb51": ["splits_dir"],
            "ava": ["labels", "train", "val"],
        }[self.format]
        missing = [k for k in need if getattr(self, k) is None]
        if missing:
            raise ValueError(f"format {self.format!r} needs data.{', data.'.join(missing)}")
        return self


class AugmentConfig(_Section):
    """Training-time augmentation (torchvision.transforms.v2, same parameters for every frame)."""

    crop_scale: tuple[float, float] = (0.25, 1.0)
    flip: float = Field(0.5, ge=0.0, le=1.0)
    # Class-name pairs swapped by a horizontal flip ("pushing left" <-> "pushing right").
    # Something-Something v2 needs this (or flip: 0); Kinetics does not.
    flip_label_pairs: list[tuple[str, str]] = []
    randaugment_magnitude: int = Field(7, ge=0, le=30)
    randaugment_ops: int = Field(4, ge=0)
    random_erasing: float = Field(0.0, ge=0.0, le=1.0)
    # Detection trains on the ground-truth boxes, each edge moved by up to this fraction of the
    # box's size; the clip itself is only resized (crops and flips would move the boxes).
    box_jitter: float = Field(0.1, ge=0.0, le=0.5)


class TrainConfig(_Section):
    epochs: int = Field(40, ge=1)
    batch_size: int = Field(64, ge=1, description="global batch: per device x devices x accum")
    grad_accum: int = Field(1, ge=1)
    lr: float = Field(3e-4, gt=0)
    weight_decay: float = Field(0.05, ge=0)
    warmup_epochs: float = Field(2.5, ge=0)
    warmup_start_factor: float = Field(0.1, gt=0, le=1)
    min_lr_factor: float = Field(0.0, ge=0, le=1)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    localiser_weight: float = Field(1.0, ge=0, description="detect: weight of the box loss")
    clip_grad: float | None = Field(1.0, gt=0)
    amp: Literal["auto", "bf16", "fp16", "off"] = "auto"
    seed: int = 0
    checkpoint_every_steps: int = Field(0, ge=0, description="0: only at the end of each epoch")
    eval_every_epochs: int = Field(1, ge=0, description="0: evaluate only after the last epoch")
    out_dir: str = "runs/default"


class ExperimentConfig(_Section):
    model: ZeroI2VConfig
    data: DataConfig
    augment: AugmentConfig = AugmentConfig()
    train: TrainConfig = TrainConfig()
    # Folder the relative paths in `data` and `train.out_dir` are resolved against.
    base_dir: str = "."

    @model_validator(mode="after")
    def _task_matches_format(self):
        formats = TASK_FORMATS[self.model.task]
        if self.data.format not in formats:
            raise ValueError(
                f"model.task {self.model.task!r} does not go with data.format "
                f"{self.data.format!r}: it trains on {' or '.join(formats)} data"
            )
        return self

    def path(self, value: str) -> Path:
        p = Path(value).expanduser()
        return p if p.is_absolute() else Path(self.base_dir) / p

    def view_spec(self, train: bool = False) -> ViewSpec:
        """Sampling and views of this experiment: one clip, one crop in training."""
        sampling = SamplingSpec(
            kind=self.data.sampling,
            num_frames=self.model.num_frames,
            interval=self.data.frame_interval,
            num_clips=1 if train else self.data.test_clips,
        )
        mean, std = normalization(self.model.backbone)
        return ViewSpec(
            sampling=sampling,
            image_size=self.model.image_size,
            spatial_crops=1 if train else self.data.test_crops,
            mean=mean,
            std=std,
        )

    def eval_view_spec(
        self, preprocess: dict, clips: int | None = None, crops: int | None = None
    ) -> ViewSpec:
        """The views `zeroi2v eval` shows a checkpoint with this `preprocess` metadata. A model
        imported from mmaction2 records its test protocol (sampling, clips, crops, mean/std and
        resize), which is what its accuracy was measured with and which this config cannot
        express: it is taken whole. Otherwise (every checkpoint trained here) this config's test
        views. clips/crops (--clips/--crops) override the counts of either."""
        recorded = ViewSpec.from_preprocess(preprocess)  # an unknown protocol is an error here
        spec = recorded if recorded.protocol == "mmaction2" else self.view_spec(train=False)
        return spec.with_views(clips, crops)


def load_config(path: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read a YAML config, apply `key.sub=value` overrides (values parsed as YAML), validate."""
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text())
    except OSError as e:
        raise ConfigError(f"cannot read config {path}: {e.strerror}") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: expected a mapping with model/data/train sections")
    for item in overrides or []:
        apply_override(doc, item)
    doc.setdefault("base_dir", ".")
    try:
        return ExperimentConfig.model_validate(doc)
    except ValidationError as e:
        raise ConfigError(f"{path}: invalid config:\n{_describe(e)}") from e


def apply_override(doc: dict, item: str) -> None:
    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {item!r} is not key=value (e.g. train.lr=1e-4)")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as e:
        raise ConfigError(f"override {item!r}: value is not valid YAML: {e}") from e
    *parents, leaf = key.split(".")
    node: Any = doc
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {item!r}: {part!r} is not a section")
    node[leaf] = value


def _describe(e: ValidationError) -> str:
    lines = []
    for err in e.errors():
        where = ".".join(str(p) for p in err["loc"])
        lines.append(f"  {where}: {err['msg']}")
    return "\n".join(lines)
