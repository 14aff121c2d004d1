"""Dataset annotation formats, read into one shape: (video path, label) samples and class names.

Readers: mmaction2 video lists, Kinetics CSVs, Something-Something v2 JSON, UCF101 and HMDB51
split files. Each resolves video paths against a `root` directory and does not decode or open
videos (only the Kinetics reader looks for files, because its file names are not in the CSV).
Malformed input raises AnnotationError whose message starts with `file:line:` (for JSON files,
which the official SSv2 release writes on one line, `file: entry N:` instead).
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

KINETICS_EXTENSIONS = (".mp4", ".mkv", ".webm", ".avi")


class AnnotationError(ValueError):
    """Malformed or inconsistent annotations; the message names the file and line."""


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int


@dataclass
class Annotations:
    samples: list[Sample]
    class_names: list[str]
    # Clips the annotations list but whose video file was not found (Kinetics only).
    missing: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# helpers


def annotation_error(
    file: str | os.PathLike, line: int | str | None, message: str
) -> AnnotationError:
    where = f"{file}:{line}" if isinstance(line, int) else f"{file}"
    if isinstance(line, str):  # a JSON entry, not a line
        where += f": {line}"
    return AnnotationError(f"{where}: {message}")


def read_text(file: str | os.PathLike) -> str:
    path = Path(file)
    try:
        # utf-8-sig: lists written on Windows (UCF101's are) may start with a BOM.
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise annotation_error(path, None, "file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise annotation_error(path, None, f"cannot read: {e}") from None
    if not text.strip():
        raise annotation_error(path, None, "empty file")
    return text


def numbered_lines(file: str | os.PathLike) -> list[tuple[int, str]]:
    """(1-based line number, stripped text) of the non-blank lines."""
    text = read_text(file)
    return [(n, s.strip()) for n, s in enumerate(text.splitlines(), 1) if s.strip()]


def parse_int(file: str | os.PathLike, line: int | str, text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise annotation_error(file, line, f"{what} {text!r} is not an integer") from None


def check_unique(names: Sequence[str], file: str | os.PathLike, lines: Sequence[int | str]):
    first: dict[str, int | str] = {}
    for name, line in zip(names, lines, strict=True):
        if name in first:
            raise annotation_error(
                file, line, f"duplicate class name {name!r} (first at {first[name]})"
            )
        first[name] = line


def _check_label(file, line, label: int, num_classes: int, names_from: str) -> None:
    if not 0 <= label < num_classes:
        raise annotation_error(
            file, line, f"label {label} out of range: {num_classes} class names in {names_from}"
        )


def read_class_names(file: str | os.PathLike) -> list[str]:
    """One class name per line; line n (1-based) is class n - 1. Trailing blank lines are fine,
    blank lines between names are not (dropping them would shift every later index)."""
    lines = [s.strip() for s in read_text(file).splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    for n, name in enumerate(lines, 1):
        if not name:
            raise annotation_error(file, n, "blank line between class names")
    check_unique(lines, file, range(1, len(lines) + 1))
    return lines


# ---------------------------------------------------------------------------------------------
# mmaction2 video list


def read_video_list(
    list_file: str | os.PathLike,
    root: str | os.PathLike,
    class_names_file: str | os.PathLike | None = None,
) -> Annotations:
    """mmaction2's video list: `relative/path label` per line; `#` lines are comments.

    The label is the last whitespace-separated token, so paths may contain spaces (and a list
    with extra columns, such as rawframe lists' frame counts, is not detected as such). Without a
    class names file the names are "0".."N-1", N = max label + 1.
    """
    root = Path(root)
    names = read_class_names(class_names_file) if class_names_file is not None else None
    samples = []
    for n, line in numbered_lines(list_file):
        if line.startswith("#"):
            continue
        parts = line.rsplit(maxsplit=1)
        if len(parts) != 2:
            raise annotation_error(list_file, n, f"expected 'path label', got {line!r}")
        path, label_text = parts
        label = parse_int(list_file, n, label_text, "label")
        if names is not None:
            _check_label(list_file, n, label, len(names), str(class_names_file))
        elif label < 0:
            raise annotation_error(list_file, n, f"negative label {label}")
        samples.append(Sample(root / path, label))
    if not samples:
        raise annotation_error(list_file, None, "no samples, only comments")
    if names is None:
        names = [str(i) for i in range(max(s.label for s in samples) + 1)]
    return Annotations(samples, names)


def write_video_list(
    annotations: Annotations,
    list_file: str | os.PathLike,
    class_names_file: str | os.PathLike,
    root: str | os.PathLike,
) -> None:
    """Write an mmaction2 video list (paths relative to root, `/`-separated) and its class names,
    refusing anything read_video_list would not read back identically."""
    root = Path(root)
    names = annotations.class_names
    for name in names:
        if not name or name != name.strip() or "\n" in name or "\r" in name:
            raise ValueError(f"class name {name!r} cannot be written one per line")
    if len(set(names)) != len(names):
        raise ValueError("duplicate class names")
    lines = []
    for sample in annotations.samples:
        try:
            rel = Path(sample.path).relative_to(root).as_posix()
        except ValueError:
            raise ValueError(f"{sample.path} is not under {root}") from None
        if rel != rel.strip() or rel.startswith("#") or any(c in rel for c in "\r\n"):
            raise ValueError(f"path {rel!r} cannot be written to a video list")
        if not 0 <= sample.label < len(names):
            raise ValueError(f"label {sample.label} out of range for {len(names)} classes")
        lines.append(f"{rel} {sample.label}\n")
    for file, text in ((list_file, "".join(lines)), (class_names_file, "\n".join(names) + "\n")):
        Path(file).parent.mkdir(parents=True, exist_ok=True)
        Path(file).write_text(text, encoding="utf-8")


# ---------------------------------------------------------------------------------------------
# Kinetics


def kinetics_clip_id(youtube_id: str, time_start: int, time_end: int) -> str:
    """The standard Kinetics file stem, e.g. `---QUuC4vJs_000084_000094`."""
    return f"{youtube_id}_{time_start:06d}_{time_end:06d}"


class DirIndex:
    """File names per directory, listed once: a stat per candidate name would cost ~24 system
    calls per missing clip, and Kinetics has hundreds of thousands of clips."""

    def __init__(self):
        self._names: dict[Path, frozenset[str]] = {}

    def find(self, dirs: Iterable[Path], stems: Iterable[str]) -> Path | None:
        stems = list(stems)
        for d in dirs:
            if d not in self._names:
                try:
                    self._names[d] = frozenset(os.listdir(d))
                except OSError:
                    self._names[d] = frozenset()
            for stem in stems:
                for ext in KINETICS_EXTENSIONS:
                    if stem + ext in self._names[d]:
                        return d / (stem + ext)
        return None


def _kinetics_time(file, line: int, text: str, what: str) -> int:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value.is_integer() or value < 0:
        raise annotation_error(file, line, f"{what} {text!r} is not a whole number of seconds")
    return int(value)


def read_kinetics_csv(
    csv_file: str | os.PathLike,
    root: str | os.PathLike,
    split: str | None = None,
    class_names: Sequence[str] | None = None,
) -> Annotations:
    """A Kinetics CSV (`label,youtube_id,time_start,time_end,split[,is_cc]`).

    `split` keeps only rows of that split. Class names are the sorted labels of the kept rows
    unless given: pass the train split's names when reading val so the indices agree. A row
    without a label (the test split of the original releases) is an error.

    Each clip's file is looked for under root/<label>/, root/<label with _ for spaces>/ and
    root/, in that order, as `{youtube_id}_{start:06d}_{end:06d}` and then `{youtube_id}`, with
    each of KINETICS_EXTENSIONS; the first match wins. Clips with no file are listed in
    `missing` by their standard stem (see kinetics_clip_id), not silently dropped.
    """
    root = Path(root)
    reader = csv.reader(io.StringIO(read_text(csv_file)))
    header = [h.strip() for h in next(reader)]
    absent = [c for c in ("youtube_id", "time_start", "time_end") if c not in header]
    if absent:
        raise annotation_error(csv_file, 1, f"header lacks {', '.join(absent)}: {','.join(header)}")
    if "label" not in header:
        raise annotation_error(
            csv_file, 1, "no 'label' column: this split has no labels (Kinetics test?)"
        )
    if split is not None and "split" not in header:
        raise annotation_error(csv_file, 1, f"no 'split' column to select split {split!r} from")

    rows = []  # (line, label, youtube_id, start, end)
    splits_seen = set()
    for row in reader:
        n = reader.line_num
        if not any(c.strip() for c in row):
            continue
        if len(row) != len(header):
            raise annotation_error(csv_file, n, f"expected {len(header)} columns, got {len(row)}")
        record = {k: v.strip() for k, v in zip(header, row, strict=True)}
        if split is not None:
            splits_seen.add(record["split"])
            if record["split"] != split:
                continue
        if not record["label"]:
            raise annotation_error(
                csv_file, n, "empty label: this split has no labels (Kinetics test?)"
            )
        if not record["youtube_id"]:
            raise annotation_error(csv_file, n, "empty youtube_id")
        start = _kinetics_time(csv_file, n, record["time_start"], "time_start")
        end = _kinetics_time(csv_file, n, record["time_end"], "time_end")
        rows.append((n, record["label"], record["youtube_id"], start, end))
    if not rows:
        if split is not None:
            raise annotation_error(
                csv_file, None, f"no rows of split {split!r} (has {sorted(splits_seen)})"
            )
        raise annotation_error(csv_file, None, "no rows")

    if class_names is None:
        names = sorted({label for _, label, *_ in rows})
    else:
        names = list(class_names)
        check_unique(names, "class_names", [f"index {i}" for i in range(len(names))])
    index = {name: i for i, name in enumerate(names)}

    files = DirIndex()
    samples, missing = [], []
    for n, label, youtube_id, start, end in rows:
        if label not in index:
            raise annotation_error(
                csv_file, n, f"unknown class name {label!r} (not in the class names)"
            )
        clip = kinetics_clip_id(youtube_id, start, end)
        dirs = dict.fromkeys([root / label, root / label.replace(" ", "_"), root])
        path = files.find(dirs, [clip, youtube_id])
        if path is None:
            missing.append(clip)
        else:
            samples.append(Sample(path, index[label]))
    return Annotations(samples, names, missing)


# ---------------------------------------------------------------------------------------------
# Something-Something v2


def _read_json(file: str | os.PathLike, object_pairs_hook=None):
    try:
        return json.loads(read_text(file), object_pairs_hook=object_pairs_hook)
    except json.JSONDecodeError as e:
        raise annotation_error(
            file, e.lineno, f"invalid JSON: {e.msg} (column {e.colno})"
        ) from None


def _ssv2_class_names(labels_json: str | os.PathLike) -> list[str]:
    pairs = _read_json(labels_json, object_pairs_hook=list)
    if not isinstance(pairs, list) or not pairs or not all(isinstance(p, tuple) for p in pairs):
        raise annotation_error(
            labels_json, None, 'expected a non-empty object {"template": "index", ...}'
        )
    names, indices = [], []
    for name, value in pairs:
        where = f"entry {name!r}"
        if not isinstance(value, (str, int)) or isinstance(value, bool):
            raise annotation_error(labels_json, where, f"index {value!r} is not an integer")
        names.append(name)
        indices.append(parse_int(labels_json, where, str(value), "index"))
    check_unique(names, labels_json, [f"entry {i}" for i in range(len(names))])
    by_index = dict(zip(indices, names, strict=True))
    if len(by_index) != len(names):
        dup = next(i for i in indices if indices.count(i) > 1)
        raise annotation_error(labels_json, None, f"index {dup} is used by more than one template")
    if sorted(by_index) != list(range(len(names))):
        gaps = sorted(set(range(len(names))) - set(by_index))
        raise annotation_error(
            labels_json, None, f"indices are not 0..{len(names) - 1}: missing {gaps}"
        )
    return [by_index[i] for i in range(len(names))]


def read_ssv2(
    labels_json: str | os.PathLike, split_json: str | os.PathLike, root: str | os.PathLike
) -> Annotations:
    """Something-Something v2: labels.json maps template -> index string; train.json and
    validation.json list {"id", "label", "template", "placeholders"}. The class is the template
    with its brackets removed; the video is root/{id}.webm."""
    root = Path(root)
    names = _ssv2_class_names(labels_json)
    index = {name: i for i, name in enumerate(names)}
    entries = _read_json(split_json)
    if not isinstance(entries, list) or not entries:
        raise annotation_error(split_json, None, "expected a non-empty list of videos")
    samples = []
    for i, entry in enumerate(entries):
        where = f"entry {i}"
        if not isinstance(entry, dict):
            raise annotation_error(split_json, where, "expected an object")
        video_id = entry.get("id")
        if not isinstance(video_id, (str, int)) or isinstance(video_id, bool) or video_id == "":
            raise annotation_error(split_json, where, f"bad or missing 'id': {video_id!r}")
        where += f" (id {video_id})"
        template = entry.get("template")
        if template is None:
            raise annotation_error(
                split_json, where, "no 'template': this split has no labels (SSv2 test?)"
            )
        if not isinstance(template, str):
            raise annotation_error(split_json, where, f"'template' is not a string: {template!r}")
        name = template.replace("[", "").replace("]", "")
        if name not in index:
            raise annotation_error(split_json, where, f"template {name!r} is not in {labels_json}")
        samples.append(Sample(root / f"{video_id}.webm", index[name]))
    return Annotations(samples, names)


# ---------------------------------------------------------------------------------------------
# UCF101


def _ucf101_class_names(class_ind_file: str | os.PathLike) -> list[str]:
    by_index: dict[int, tuple[str, int]] = {}
    for n, line in numbered_lines(class_ind_file):
        parts = line.split(maxsplit=1)
        if len(parts) != 2:
            raise annotation_error(class_ind_file, n, f"expected 'index ClassName', got {line!r}")
        i = parse_int(class_ind_file, n, parts[0], "class index")
        if i in by_index:
            raise annotation_error(
                class_ind_file, n, f"class index {i} repeats line {by_index[i][1]}"
            )
        by_index[i] = (parts[1].strip(), n)
    if sorted(by_index) != list(range(1, len(by_index) + 1)):
        raise annotation_error(class_ind_file, None, f"class indices are not 1..{len(by_index)}")
    rows = [by_index[i] for i in sorted(by_index)]
    check_unique([name for name, _ in rows], class_ind_file, [n for _, n in rows])
    return [name for name, _ in rows]


def read_ucf101(
    split_file: str | os.PathLike, root: str | os.PathLike, class_ind_file: str | os.PathLike
) -> Annotations:
    """UCF101: classInd.txt (`1 ApplyEyeMakeup`, 1-based), trainlistNN.txt
    (`ApplyEyeMakeup/v_..._c01.avi 1`, 1-based label) or testlistNN.txt (path only: the label
    comes from the class folder). Where both are given they must agree."""
    root = Path(root)
    names = _ucf101_class_names(class_ind_file)
    by_folder = {name: i for i, name in enumerate(names)}
    # Case-insensitive fallback: UCF101 spells HandstandPushups/HandStandPushups both ways.
    by_folder_lower = {name.lower(): i for i, name in enumerate(names)}
    samples = []
    for n, line in numbered_lines(split_file):
        parts = line.split()
        if len(parts) not in (1, 2):
            raise annotation_error(
                split_file, n, f"expected 'Class/video.avi [label]', got {line!r}"
            )
        path = parts[0]
        folder = path.split("/")[0] if "/" in path else None
        from_folder = None
        if folder is not None:
            from_folder = by_folder.get(folder, by_folder_lower.get(folder.lower()))
        if len(parts) == 2:
            label = parse_int(split_file, n, parts[1], "label") - 1
            if not 0 <= label < len(names):
                raise annotation_error(
                    split_file,
                    n,
                    f"label {label + 1} out of range 1..{len(names)} ({class_ind_file})",
                )
            if from_folder is not None and from_folder != label:
                raise annotation_error(
                    split_file, n, f"label {label + 1} ({names[label]}) disagrees with {folder}/"
                )
        elif from_folder is None:
            raise annotation_error(split_file, n, f"no label and no known class folder in {path!r}")
        else:
            label = from_folder
        samples.append(Sample(root / path, label))
    return Annotations(samples, names)


# ---------------------------------------------------------------------------------------------
# HMDB51


def read_hmdb51(
    splits_dir: str | os.PathLike, root: str | os.PathLike, split: int = 1, subset: str = "train"
) -> Annotations:
    """HMDB51: splits_dir holds `<action>_test_split<k>.txt` with lines `<video>.avi <id>`, id 1
    for train, 2 for test, 0 unused. Videos are root/<action>/<video>.avi; classes are the
    sorted actions. Video names may start with `#`, so nothing is a comment here."""
    if split not in (1, 2, 3):
        raise ValueError(f"HMDB51 split must be 1, 2 or 3, not {split!r}")
    if subset not in ("train", "test"):
        raise ValueError(f"subset must be 'train' or 'test', not {subset!r}")
    splits_dir, root = Path(splits_dir), Path(root)
    if not splits_dir.is_dir():
        raise AnnotationError(f"{splits_dir}: split directory not found")
    suffix = f"_test_split{split}.txt"
    actions = sorted(
        p.name[: -len(suffix)] for p in splits_dir.iterdir() if p.name.endswith(suffix)
    )
    if not actions:
        raise AnnotationError(f"{splits_dir}: no *{suffix} files")
    if "" in actions:
        raise AnnotationError(f"{splits_dir / suffix}: no action name before {suffix}")
    wanted = 1 if subset == "train" else 2
    samples = []
    for label, action in enumerate(actions):
        file = splits_dir / f"{action}{suffix}"
        for n, line in numbered_lines(file):
            parts = line.rsplit(maxsplit=1)
            if len(parts) != 2:
                raise annotation_error(file, n, f"expected 'video.avi id', got {line!r}")
            video, id_text = parts
            split_id = parse_int(file, n, id_text, "split id")
            if split_id not in (0, 1, 2):
                raise annotation_error(file, n, f"split id {split_id} is not 0, 1 or 2")
            if split_id == wanted:
                samples.append(Sample(root / action / video, label))
    if not samples:
        raise AnnotationError(f"{splits_dir}: no {subset} videos in split {split}")
    return Annotations(samples, actions)
