"""AVA detection data, loss and evaluation: what train.py and `zeroi2v eval` need for task=detect.

A sample is one key frame: the clip of `num_frames` frames `frame_interval` apart centred on
it (video/sampling.keyframe_clip), the whole frame resized to the model's size
(video/views.detection_view), and the actors there: boxes (K, 4) and multi-hot actions (K, A).
Model class i is the i-th action of the label map in id order; rows of actions outside the map
(the official CSVs use 80 ids, the benchmark map lists 60) are dropped and counted.

Training boxes are the ground truth, jittered; evaluation boxes come from `data.detect_boxes`:
the proposals file (a person detector's boxes and scores, the AVA protocol), the model's own
actor localiser, or the ground truth (to measure the action head alone).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from torchvision.ops import box_iou

from model.detection import detect_actors
from model.precision import autocast
from model.zeroi2v import ZeroI2V
from training.ava_eval import DetectionReport, evaluate_detections
from training.config import ExperimentConfig
from training.data import DECODE_LIMITS, BrokenVideo
from training.formats.annotations import KINETICS_EXTENSIONS, AnnotationError, DirIndex
from training.formats.ava import (
    Actor,
    Detection,
    Key,
    Proposal,
    read_annotations,
    read_exclusions,
    read_label_map,
    read_proposals,
)
from video.decode import VideoError, VideoReader
from video.sampling import keyframe_clip
from video.views import ViewSpec, detection_view


@dataclass
class AvaSplit:
    keys: list[Key]  # the key frames this split uses, in file order
    actors: dict[Key, list[Actor]]  # ground truth, actions restricted to the label map
    videos: dict[str, Path]
    action_ids: list[int]  # model class i is AVA action action_ids[i]
    class_names: list[str]
    exclusions: set[Key] = field(default_factory=set)
    proposals: dict[Key, list[Proposal]] | None = None
    dropped_rows: int = 0  # (person, action) rows whose action is not in the label map
    missing: list[str] = field(default_factory=list)  # video ids with no file under root

    def describe(self) -> str:
        actors = sum(len(self.actors[k]) for k in self.keys)
        text = (
            f"{len(self.keys)} key frames, {actors} actors, {len({k[0] for k in self.keys})} "
            f"videos, {len(self.action_ids)} actions"
        )
        if self.dropped_rows:
            text += f", {self.dropped_rows} rows of actions outside the label map dropped"
        if self.missing:
            text += f", {len(self.missing)} videos not found (e.g. {self.missing[0]})"
        return text


def load_ava(cfg: ExperimentConfig, split: str) -> AvaSplit:
    """The `train` or `val` split of an AVA-format dataset (data.format: ava)."""
    d = cfg.data
    label_map = read_label_map(cfg.path(d.labels))
    action_ids = list(label_map)
    raw = read_annotations(cfg.path(getattr(d, split)))
    actors: dict[Key, list[Actor]] = {}
    dropped = 0
    for key, people in raw.items():
        kept = []
        for actor in people:
            actions = tuple(a for a in actor.actions if a in label_map)
            dropped += len(actor.actions) - len(actions)
            if actions:
                kept.append(Actor(actor.box, actions, actor.person_id))
        if kept:
            actors[key] = kept
    exclusions = (
        read_exclusions(cfg.path(d.exclusions)) if d.exclusions and split != "train" else set()
    )
    proposals = read_proposals(cfg.path(d.proposals)) if d.proposals and split != "train" else None
    index, root = DirIndex(), cfg.path(d.root)
    videos, missing = {}, []
    for video_id in dict.fromkeys(k[0] for k in actors):
        path = index.find([root], [video_id])
        if path is None:
            missing.append(video_id)
        else:
            videos[video_id] = path
    keys = [k for k in actors if k[0] in videos and k not in exclusions]
    if not keys:
        raise AnnotationError(
            f"no usable key frames in {getattr(d, split)}: {len(actors)} annotated, "
            f"{len(missing)} videos not found under {root} (extensions {KINETICS_EXTENSIONS})"
        )
    return AvaSplit(
        keys, actors, videos, action_ids, list(label_map.values()), exclusions, proposals,
        dropped, missing,
    )  # fmt: skip


def jitter_boxes(boxes: torch.Tensor, amount: float, rng: random.Random) -> torch.Tensor:
    """Move each edge by up to `amount` of the box's width or height, keeping a valid box."""
    if amount == 0 or len(boxes) == 0:
        return boxes
    w = (boxes[:, 2] - boxes[:, 0])[:, None]
    h = (boxes[:, 3] - boxes[:, 1])[:, None]
    noise = torch.tensor([[rng.uniform(-amount, amount) for _ in range(4)] for _ in boxes])
    moved = (boxes + noise * torch.cat([w, h, w, h], dim=1)).clamp(0, 1)
    x1, x2 = torch.minimum(moved[:, 0], moved[:, 2]), torch.maximum(moved[:, 0], moved[:, 2])
    y1, y2 = torch.minimum(moved[:, 1], moved[:, 3]), torch.maximum(moved[:, 1], moved[:, 3])
    valid = (x2 - x1 > 1e-3) & (y2 - y1 > 1e-3)
    return torch.where(valid[:, None], torch.stack([x1, y1, x2, y2], 1), boxes)


@dataclass
class KeyFrameTargets:
    """A batch's per-clip targets: key, boxes (K, 4), actions (K, A) multi-hot, and at
    evaluation the proposals' boxes and scores."""

    keys: list[Key]
    boxes: list[torch.Tensor]
    actions: list[torch.Tensor]
    proposals: list[tuple[torch.Tensor, torch.Tensor] | None]

    def __len__(self) -> int:
        return len(self.keys)

    def to(self, device, non_blocking: bool = False) -> KeyFrameTargets:
        move = lambda t: t.to(device, non_blocking=non_blocking)  # noqa: E731
        return KeyFrameTargets(
            self.keys, [move(b) for b in self.boxes], [move(a) for a in self.actions],
            [None if p is None else (move(p[0]), move(p[1])) for p in self.proposals],
        )  # fmt: skip


class AvaKeyFrames(Dataset):
    """Items: (clip (3, T, S, S), key, boxes (K, 4), actions (K, A), proposals or None)."""

    def __init__(
        self, split: AvaSplit, spec: ViewSpec, train: bool, box_jitter: float = 0.0,
        time_offset: float = 0.0,
    ):  # fmt: skip
        self.split = split
        self.spec = spec
        self.train = train
        self.box_jitter = box_jitter
        self.time_offset = time_offset
        self.column = {a: i for i, a in enumerate(split.action_ids)}

    def __len__(self) -> int:
        return len(self.split.keys)

    def __getitem__(self, item: tuple[int, int] | int):
        index, seed = item if isinstance(item, tuple) else (item, item)
        key = self.split.keys[index]
        path = self.split.videos[key[0]]
        try:
            with VideoReader(path, DECODE_LIMITS) as reader:
                info = reader.info
                centre = round((key[1] - self.time_offset) * info.fps)
                if not 0 <= centre < info.num_frames:
                    offset = f", timestamps minus {self.time_offset} s" if self.time_offset else ""
                    raise VideoError(
                        f"key frame at {key[1]} s is outside the video "
                        f"({info.duration_s:.1f} s{offset})"
                    )
                s = self.spec.sampling
                frames = reader.read(
                    keyframe_clip(centre, info.num_frames, s.num_frames, s.interval)
                )
        except VideoError as e:
            return BrokenVideo(f"{path} @ {key[1]} s", str(e))
        clip = detection_view(frames, self.spec.image_size, self.spec.mean, self.spec.std)
        actors = self.split.actors[key]
        boxes = torch.tensor([a.box for a in actors], dtype=torch.float32)
        if self.train:
            boxes = jitter_boxes(boxes, self.box_jitter, random.Random(seed))
        actions = torch.zeros(len(actors), len(self.column))
        for i, actor in enumerate(actors):
            actions[i, [self.column[a] for a in actor.actions]] = 1
        proposals = None
        if self.split.proposals is not None:
            found = self.split.proposals.get(key, [])
            proposals = (
                torch.tensor([p.box for p in found], dtype=torch.float32).view(-1, 4),
                torch.tensor([p.score for p in found], dtype=torch.float32),
            )
        return clip, key, boxes, actions, proposals


def collate_keyframes(batch: list):
    """(clips (B, 3, T, S, S), KeyFrameTargets, broken): collate() for key frames."""
    broken = [b for b in batch if isinstance(b, BrokenVideo)]
    good = [b for b in batch if not isinstance(b, BrokenVideo)]
    if not good:
        return None, None, broken
    clips, keys, boxes, actions, proposals = zip(*good, strict=True)
    return (
        torch.stack(clips),
        KeyFrameTargets(list(keys), list(boxes), list(actions), list(proposals)),
        broken,
    )


def keyframe_loader(
    split: AvaSplit, spec: ViewSpec, num_workers: int, time_offset: float, batch_size: int = 8
) -> DataLoader:
    """Every key frame of `split` once, in order, as collate_keyframes() triples (evaluation)."""
    data = AvaKeyFrames(split, spec, False, time_offset=time_offset)
    return DataLoader(
        data, batch_size=batch_size, num_workers=num_workers, collate_fn=collate_keyframes
    )


def detection_loss(
    model, clips: torch.Tensor, targets: KeyFrameTargets, localiser_weight: float
) -> torch.Tensor:
    """Binary cross-entropy per (actor, action) plus the localiser's CenterNet loss."""
    logits, maps = model(clips, targets.boxes)
    loss = F.binary_cross_entropy_with_logits(logits.float(), torch.cat(targets.actions))
    if localiser_weight:
        localiser = getattr(model, "module", model).head.localiser  # DDP wraps the model
        loss = loss + localiser_weight * localiser.loss(maps.float(), targets.boxes)
    return loss


def evaluate_detection(
    model: ZeroI2V,
    loader,
    split: AvaSplit,
    boxes: str,
    threshold: float,
    device: torch.device,
    amp: torch.dtype | None = None,
    progress=None,
) -> DetectionReport:
    """Frame mAP@0.5 over `loader`'s key frames, actors from `boxes` (proposals, localiser or
    groundtruth), plus the recall of those boxes at IoU 0.5; the report keeps every scored
    (box, action), for training.formats.ava.write_detections."""
    if boxes == "proposals" and split.proposals is None:
        raise ValueError("data.detect_boxes is 'proposals' but data.proposals names no file")
    was_training = model.training
    model.eval()
    detections: dict[Key, list[Detection]] = {}
    found = total = 0
    broken: list[str] = []
    for clips, targets, bad in progress(loader) if progress else loader:
        broken += [f"{b.path}: {b.error}" for b in bad]
        if clips is None:
            continue
        given = given_scores = None
        if boxes == "groundtruth":
            given = targets.boxes
        elif boxes == "proposals":
            given = [p[0] for p in targets.proposals]
            given_scores = [p[1] for p in targets.proposals]
        with autocast(device, amp):
            results = detect_actors(model, clips.to(device), given, given_scores, threshold)
        for key, truth, result in zip(targets.keys, targets.boxes, results, strict=True):
            rows = detections.setdefault(key, [])
            for box, scores in zip(result.boxes.tolist(), result.scores.tolist(), strict=True):
                rows += [
                    Detection(tuple(box), split.action_ids[a], s) for a, s in enumerate(scores)
                ]
            total += len(truth)
            if len(truth) and len(result.boxes):
                found += int(box_iou(truth.cpu(), result.boxes).max(1).values.ge(0.5).sum())
    if dist.is_initialized():
        parts: list = [None] * dist.get_world_size()
        dist.all_gather_object(parts, (detections, found, total, broken))
        detections, found, total, broken = {}, 0, 0, []
        for d, f, t, b in parts:
            detections.update(d)
            found, total, broken = found + f, total + t, broken + b
    model.train(was_training)
    evaluated = {k: split.actors[k] for k in split.keys}
    label_map = dict(zip(split.action_ids, split.class_names, strict=True))
    report = evaluate_detections(evaluated, detections, label_map, split.exclusions)
    report.box_source, report.box_recall, report.broken = boxes, found / max(1, total), broken
    report.detections = detections
    return report
