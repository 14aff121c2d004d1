"""AVA v2.2 files: label map, annotations, excluded timestamps, person proposals, detections.

AVA labels people at key frames, one per second of each 15-minute movie clip (timestamps 902 to
1798 in the official release). The files, none with a header row:

- `ava_action_list_v2.2_for_activitynet_2019.pbtxt`: the label map, protobuf text `item { name:
  "bend/bow (at the waist)" id: 1 }` blocks, listing the 60 action ids the benchmark evaluates.
  The full list of 80, `ava_action_list_v2.2.pbtxt`, writes `label { name: ... label_id: ...
  label_type: PERSON_MOVEMENT }` instead; both forms are read.
- `ava_train_v2.2.csv`, `ava_val_v2.2.csv`: the annotations, one row per (person, action):
  `video_id,timestamp,x1,y1,x2,y2,action_id,person_id`, boxes normalised to [0, 1]. Files derived
  from AVA sometimes drop the person_id column.
- `ava_val_excluded_timestamps_v2.2.csv`: `video_id,timestamp` key frames left out of the
  evaluation (their annotations are unreliable).
- Person proposals, from a person detector run on the key frames (the released ones are
  pickles; this is their CSV form): `video_id,timestamp,x1,y1,x2,y2,score`.
- Detections, the AVA results format an evaluation server takes: one row per (box, action)
  `video_id,timestamp,x1,y1,x2,y2,action_id,score`.

Readers validate every row and raise AnnotationError with a `file:line:` message; returned
dicts keep the order in which keys first appear in the file. Writers refuse (ValueError)
anything their reader would not read back.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torchvision.ops import box_iou

from training.formats.annotations import (
    annotation_error,
    check_unique,
    numbered_lines,
    parse_int,
    read_text,
)

Box = tuple[float, float, float, float]  # normalised x1, y1, x2, y2 in [0, 1]


def iou_matrix(a, b) -> np.ndarray:
    """IoU of every (x1, y1, x2, y2) box in `a` against every box in `b`, (N, M): torchvision's
    box_iou in float64, areas without the VOC +1, as AVA's evaluator computes it."""
    pair = (torch.from_numpy(np.array(x, np.float64).reshape(-1, 4)) for x in (a, b))
    return box_iou(*pair).numpy()


Key = tuple[str, int]  # (video_id, timestamp in whole seconds)

# AVA files write coordinates with 3 decimals, so values a hair outside [0, 1] (and boxes of
# one person differing in the last digit) are rounding, not mistakes.
BOX_TOLERANCE = 1e-3


@dataclass(frozen=True)
class Actor:
    """One person at one key frame, with all its actions."""

    box: Box
    actions: tuple[int, ...]  # AVA action ids (label-map ids, 1-based), sorted, unique
    person_id: int


@dataclass(frozen=True)
class Proposal:
    """A person detector's box with its score."""

    box: Box
    score: float


@dataclass(frozen=True)
class Detection:
    """One scored action for one box (a row of the AVA results format)."""

    box: Box
    action: int
    score: float


# ---------------------------------------------------------------------------------------------
# parsing helpers


def _fields(file, line: int, text: str, counts: tuple[int, ...], form: str) -> list[str]:
    fields = [f.strip() for f in text.split(",")]
    if len(fields) not in counts:
        expected = " or ".join(map(str, counts))
        raise annotation_error(
            file, line, f"expected {form} ({expected} columns), got {len(fields)}"
        )
    return fields


def _key(file, line: int, fields: list[str]) -> Key:
    video_id = fields[0]
    if not video_id:
        raise annotation_error(file, line, "empty video_id")
    timestamp = parse_int(file, line, fields[1], "timestamp")
    if timestamp < 0:
        raise annotation_error(file, line, f"negative timestamp {timestamp}")
    return video_id, timestamp


def _float(file, line: int, text: str, what: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise annotation_error(file, line, f"{what} {text!r} is not a number") from None


def _box(file, line: int, fields: list[str]) -> Box:
    values = []
    for name, text in zip(("x1", "y1", "x2", "y2"), fields, strict=True):
        value = _float(file, line, text, name)
        # Written as `not a <= v <= b` so that NaN fails too.
        if not -BOX_TOLERANCE <= value <= 1 + BOX_TOLERANCE:
            raise annotation_error(file, line, f"{name} {text} is outside [0, 1]")
        values.append(min(1.0, max(0.0, value)))
    x1, y1, x2, y2 = values
    if not (x1 < x2 and y1 < y2):
        raise annotation_error(file, line, f"empty or inverted box ({x1}, {y1}, {x2}, {y2})")
    return x1, y1, x2, y2


def _score(file, line: int, text: str) -> float:
    score = _float(file, line, text, "score")
    if not 0 <= score <= 1:
        raise annotation_error(file, line, f"score {text} is outside [0, 1]")
    return score


def _action(file, line: int, text: str, label_map: dict[int, str] | None) -> int:
    action = parse_int(file, line, text, "action_id")
    if label_map is not None:
        if action not in label_map:
            raise annotation_error(file, line, f"action_id {action} is not in the label map")
    elif action < 1:
        raise annotation_error(
            file, line, f"action_id {action} is not positive (AVA ids start at 1)"
        )
    return action


def _same_box(a: Box, b: Box) -> bool:
    return all(abs(p - q) <= BOX_TOLERANCE for p, q in zip(a, b, strict=True))


# ---------------------------------------------------------------------------------------------
# writing helpers


def _format_key(key: Key) -> str:
    video_id, timestamp = key
    if not isinstance(video_id, str) or not video_id or video_id != video_id.strip():
        raise ValueError(f"video_id {video_id!r} cannot be written to an AVA CSV")
    if any(c in video_id for c in ",\r\n"):
        raise ValueError(f"video_id {video_id!r} cannot be written to an AVA CSV")
    if not isinstance(timestamp, int) or isinstance(timestamp, bool) or timestamp < 0:
        raise ValueError(f"timestamp {timestamp!r} of {video_id} is not a whole second >= 0")
    return f"{video_id},{timestamp:04d}"


def _format_box(box: Box, key: Key) -> str:
    x1, y1, x2, y2 = (round(v, 3) for v in box)
    # Checked after rounding: a box thinner than the 3 decimals AVA writes would read back empty.
    if not (0 <= x1 < x2 <= 1 and 0 <= y1 < y2 <= 1):
        raise ValueError(f"box {box} at {key}, at 3 decimals, is not inside [0, 1] or is empty")
    return f"{x1:.3f},{y1:.3f},{x2:.3f},{y2:.3f}"


def _format_score(score: float, key: Key, probability: bool) -> str:
    score = float(score)
    if not math.isfinite(score) or (probability and not 0 <= score <= 1):
        raise ValueError(
            f"score {score} at {key} is not " + ("in [0, 1]" if probability else "finite")
        )
    return repr(score)  # the shortest text that reads back to the same float


def _write(path, rows: list[str], what: str) -> None:
    if not rows:
        raise ValueError(f"no {what} to write: the reader refuses an empty file")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text("".join(row + "\n" for row in rows), encoding="utf-8")


# ---------------------------------------------------------------------------------------------
# label map

# One token of protobuf text format, as the label map uses it. Alternatives are tried in order;
# the last one catches anything else, so every character belongs to some token.
_PBTXT_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
    | (?P<comment>\#[^\n]*)
    | (?P<open>(?:item|label)\s*\{)
    | (?P<close>\})
    | (?P<field>(?P<name>[A-Za-z_]\w*)\s*:\s*
        (?P<value>"(?:[^"\\\n]|\\.)*"|[^\s"{}#]+))
    | (?P<garbage>[^\s]+)
    """,
    re.VERBOSE,
)
_IGNORED_FIELDS = ("label_type", "display_name")


def read_label_map(path: str | os.PathLike) -> dict[int, str]:
    """id -> name, in id order, from an AVA label map pbtxt: `item` or `label` blocks with a
    `name` and an `id` (or `label_id`); `label_type` and `display_name` are ignored, `#` starts
    a comment."""
    text = read_text(path)
    items: list[tuple[int, dict[str, tuple[str, int]]]] = []  # (line of `item {`, fields)
    current: dict[str, tuple[str, int]] | None = None
    line = 1
    for match in _PBTXT_TOKEN.finditer(text):
        kind = match.lastgroup  # the outermost group: `field`, not the `name` inside it
        token = match.group()
        if kind == "open":
            if current is not None:
                raise annotation_error(path, line, "an item inside another item")
            current = {}
            items.append((line, current))
        elif kind == "close":
            if current is None:
                raise annotation_error(path, line, "`}` outside an item")
            current = None
        elif kind == "field":
            name, value = match.group("name"), match.group("value")
            if current is None:
                raise annotation_error(path, line, f"field {name!r} outside an item")
            if name == "label_id":
                name = "id"
            if name not in ("name", "id", *_IGNORED_FIELDS):
                raise annotation_error(path, line, f"unknown field {name!r} in a label map item")
            if name in current:
                raise annotation_error(path, line, f"second {name!r} in one item")
            current[name] = (value, line)
        elif kind == "garbage":
            raise annotation_error(
                path, line, f"unexpected {token!r} (expected `item {{`, `}}` or `field: value`)"
            )
        line += token.count("\n")
    if current is not None:
        raise annotation_error(path, items[-1][0], "item not closed by `}`")
    if not items:
        raise annotation_error(path, None, "no items")

    names: dict[int, str] = {}
    first_line: dict[int, int] = {}
    for item_line, fields in items:
        for needed in ("name", "id"):
            if needed not in fields:
                raise annotation_error(path, item_line, f"item has no {needed}")
        name, name_line = fields["name"]
        if not (len(name) >= 2 and name.startswith('"') and name.endswith('"')):
            raise annotation_error(path, name_line, f"name {name} is not a quoted string")
        name = re.sub(r"\\(.)", r"\1", name[1:-1])
        id_text, id_line = fields["id"]
        label_id = parse_int(path, id_line, id_text, "id")
        if label_id < 1:
            raise annotation_error(path, id_line, f"id {label_id} is not positive")
        if label_id in names:
            raise annotation_error(
                path, id_line, f"duplicate id {label_id} (first at {first_line[label_id]})"
            )
        names[label_id] = name
        first_line[label_id] = id_line
    check_unique(list(names.values()), path, [first_line[i] for i in names])
    return dict(sorted(names.items()))


def write_label_map(path: str | os.PathLike, names: dict[int, str]) -> None:
    """Items `name`/`id`, in id order, as in the official file."""
    rows = []
    if len(set(names.values())) != len(names):
        raise ValueError("duplicate names in the label map")
    for label_id, name in sorted(names.items()):
        if not isinstance(label_id, int) or isinstance(label_id, bool) or label_id < 1:
            raise ValueError(f"label id {label_id!r} is not a positive integer")
        if not name or "\n" in name or "\r" in name:
            raise ValueError(f"name {name!r} cannot be written to a label map")
        quoted = name.replace("\\", "\\\\").replace('"', '\\"')
        rows.append(f'item {{\n  name: "{quoted}"\n  id: {label_id}\n}}')
    _write(path, rows, "label map items")


# ---------------------------------------------------------------------------------------------
# annotations


_ANNOTATION_FORM = "video_id,timestamp,x1,y1,x2,y2,action_id[,person_id]"


def read_annotations(
    path: str | os.PathLike, label_map: dict[int, str] | None = None
) -> dict[Key, list[Actor]]:
    """Rows of one (video_id, timestamp, person_id) grouped into one Actor.

    With a label map, an action id outside it is an error: pass the map the file was written
    with (for the official CSVs, all 80 actions of ava_action_list_v2.2.pbtxt, not the 60 that
    are evaluated). Without person ids (7 columns), people are told apart by their boxes: rows
    whose boxes agree to within 1e-3 are one person, numbered from 0 by first appearance at
    that key.
    """
    # key -> person_id -> (box, actions, line of first row)
    people: dict[Key, dict[int, tuple[Box, set[int], int]]] = {}
    columns = None
    for n, text in numbered_lines(path):
        fields = _fields(path, n, text, (7, 8), _ANNOTATION_FORM)
        if columns is None:
            columns = len(fields)
        elif len(fields) != columns:
            raise annotation_error(
                path, n, f"{len(fields)} columns where earlier rows have {columns}"
            )
        key = _key(path, n, fields)
        box = _box(path, n, fields[2:6])
        action = _action(path, n, fields[6], label_map)
        at_key = people.setdefault(key, {})
        if columns == 8:
            person_id = parse_int(path, n, fields[7], "person_id")
            if person_id < 0:
                raise annotation_error(path, n, f"negative person_id {person_id}")
        else:
            person_id = next(
                (p for p, (b, _, _) in at_key.items() if _same_box(b, box)), len(at_key)
            )
        if person_id not in at_key:
            at_key[person_id] = (box, {action}, n)
            continue
        first_box, actions, first = at_key[person_id]
        if not _same_box(first_box, box):
            where = f"{key[0]},{key[1]:04d}"
            raise annotation_error(
                path,
                n,
                f"person {person_id} at {where} has box {box}, but {first_box} at line {first}",
            )
        actions.add(action)  # a repeated (person, action) row is kept once
    return {
        key: [Actor(box, tuple(sorted(actions)), p) for p, (box, actions, _) in at_key.items()]
        for key, at_key in people.items()
    }


def write_annotations(path: str | os.PathLike, actors: dict[Key, list[Actor]]) -> None:
    """One row per (person, action), 8 columns, timestamps zero-padded to 4 digits."""
    rows = []
    for key, at_key in actors.items():
        prefix = _format_key(key)
        seen: set[int] = set()
        for actor in at_key:
            if not isinstance(actor.person_id, int) or actor.person_id < 0:
                raise ValueError(f"person_id {actor.person_id!r} at {key} is not an int >= 0")
            if actor.person_id in seen:
                raise ValueError(f"two actors with person_id {actor.person_id} at {key}")
            seen.add(actor.person_id)
            if not actor.actions:
                raise ValueError(f"person {actor.person_id} at {key} has no actions to write")
            box = _format_box(actor.box, key)
            for action in actor.actions:
                if not isinstance(action, int) or action < 1:
                    raise ValueError(f"action id {action!r} at {key} is not a positive int")
                rows.append(f"{prefix},{box},{action},{actor.person_id}")
    _write(path, rows, "annotations")


# ---------------------------------------------------------------------------------------------
# excluded timestamps


def read_exclusions(path: str | os.PathLike) -> set[Key]:
    keys = set()
    for n, text in numbered_lines(path):
        keys.add(_key(path, n, _fields(path, n, text, (2,), "video_id,timestamp")))
    return keys


def write_exclusions(path: str | os.PathLike, keys: Iterable[Key]) -> None:
    """Sorted, so that the same set always gives the same file."""
    _write(path, [_format_key(key) for key in sorted(set(keys))], "excluded timestamps")


# ---------------------------------------------------------------------------------------------
# person proposals


def read_proposals(path: str | os.PathLike) -> dict[Key, list[Proposal]]:
    proposals: dict[Key, list[Proposal]] = {}
    for n, text in numbered_lines(path):
        fields = _fields(path, n, text, (7,), "video_id,timestamp,x1,y1,x2,y2,score")
        key = _key(path, n, fields)
        proposal = Proposal(_box(path, n, fields[2:6]), _score(path, n, fields[6]))
        proposals.setdefault(key, []).append(proposal)
    return proposals


def write_proposals(path: str | os.PathLike, proposals: dict[Key, list[Proposal]]) -> None:
    rows = []
    for key, at_key in proposals.items():
        prefix = _format_key(key)
        for p in at_key:
            score = _format_score(p.score, key, probability=True)
            rows.append(f"{prefix},{_format_box(p.box, key)},{score}")
    _write(path, rows, "proposals")


# ---------------------------------------------------------------------------------------------
# detections (AVA results format)


def read_detections(path: str | os.PathLike) -> dict[Key, list[Detection]]:
    """Scores may be any finite number (logits as well as probabilities): only their order
    matters to the evaluation."""
    detections: dict[Key, list[Detection]] = {}
    for n, text in numbered_lines(path):
        fields = _fields(path, n, text, (8,), "video_id,timestamp,x1,y1,x2,y2,action_id,score")
        key = _key(path, n, fields)
        box = _box(path, n, fields[2:6])
        action = _action(path, n, fields[6], None)
        score = _float(path, n, fields[7], "score")
        if not math.isfinite(score):
            raise annotation_error(path, n, f"score {fields[7]} is not finite")
        detections.setdefault(key, []).append(Detection(box, action, score))
    return detections


def write_detections(path: str | os.PathLike, detections: dict[Key, list[Detection]]) -> None:
    rows = []
    for key, at_key in detections.items():
        prefix = _format_key(key)
        for d in at_key:
            if not isinstance(d.action, int) or d.action < 1:
                raise ValueError(f"action id {d.action!r} at {key} is not a positive int")
            score = _format_score(d.score, key, probability=False)
            rows.append(f"{prefix},{_format_box(d.box, key)},{d.action},{score}")
    _write(path, rows, "detections")
