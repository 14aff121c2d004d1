import re
from pathlib import Path

import pytest

from training.formats.annotations import AnnotationError
from training.formats.ava import (
    Actor,
    Detection,
    Proposal,
    read_annotations,
    read_detections,
    read_exclusions,
    read_label_map,
    read_proposals,
    write_annotations,
    write_detections,
    write_exclusions,
    write_label_map,
    write_proposals,
)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def raises_at(where: str):
    """An AnnotationError whose message contains `where` (a file name and line)."""
    return pytest.raises(AnnotationError, match=re.escape(where))


# The start of the official ava_action_list_v2.2_for_activitynet_2019.pbtxt, and the other
# form (ava_action_list_v2.2.pbtxt): `label` blocks with label_id and label_type.
OFFICIAL_PBTXT = """\
item {
  name: "bend/bow (at the waist)"
  id: 1
}
item {
  name: "crouch/kneel"
  id: 3
}
item {
  name: "dance"
  id: 4
}
"""
FULL_PBTXT = """\
label {
  name: "crawl"
  label_id: 2
  label_type: PERSON_MOVEMENT
}
label {
  name: "bend/bow (at the waist)"
  label_id: 1
  label_type: PERSON_MOVEMENT
}
# a comment
label { name: "answer phone" label_id: 80 label_type: OBJECT_MANIPULATION }
"""

# Rows as in ava_val_v2.2.csv: leading-zero timestamps, one row per (person, action).
ANNOTATIONS = """\
-5KQ66BBWC4,0902,0.077,0.151,0.283,0.811,80,1
-5KQ66BBWC4,0902,0.077,0.151,0.283,0.811,4,1
-5KQ66BBWC4,0902,0.332,0.194,0.481,0.891,12,0

-5KQ66BBWC4,0902,0.077,0.1515,0.2835,0.811,4,1
-5KQ66BBWC4,0903,0.000,0.000,1.000,1.0005,3,0
1j20qq1JyX4,1798,0.5,0.5,0.6,0.6,17,4
"""


# ------------------------------------------------------------------------------ label map


def test_label_map_official_forms(tmp_path):
    names = read_label_map(write(tmp_path / "actions.pbtxt", OFFICIAL_PBTXT))
    assert names == {1: "bend/bow (at the waist)", 3: "crouch/kneel", 4: "dance"}
    full = read_label_map(write(tmp_path / "full.pbtxt", FULL_PBTXT))
    assert list(full.items()) == [
        (1, "bend/bow (at the waist)"),
        (2, "crawl"),
        (80, "answer phone"),
    ]


def test_label_map_round_trip(tmp_path):
    names = {7: 'say "hi" \\ wave', 2: "sit", 30: "get up"}
    write_label_map(tmp_path / "m.pbtxt", names)
    assert read_label_map(tmp_path / "m.pbtxt") == dict(sorted(names.items()))
    assert (tmp_path / "m.pbtxt").read_text().startswith('item {\n  name: "sit"\n  id: 2\n}\n')


@pytest.mark.parametrize(
    ("text", "where", "message"),
    [
        ('item {\n  name: "a"\n}\n', "m.pbtxt:1", "item has no id"),
        ("item {\n  id: 4\n}\n", "m.pbtxt:1", "item has no name"),
        ('item {\n name: "a"\n id: 1\n}\nitem {\n name: "b"\n id: 1\n}\n', "m.pbtxt:7",
         "duplicate id 1 (first at 3)"),
        ('item { name: "a" id: 1 }\nitem { name: "a" id: 2 }\n', "m.pbtxt:2",
         "duplicate class name 'a'"),
        ('junk\nitem { name: "a" id: 1 }\n', "m.pbtxt:1", "unexpected 'junk'"),
        ('item { name: "a" id: 1 }\nid: 2\n', "m.pbtxt:2", "field 'id' outside an item"),
        ('item { name: "a" id: 1 }\n}\n', "m.pbtxt:2", "`}` outside an item"),
        ('\n\nitem { name: "a"\n id: 1\n', "m.pbtxt:3", "item not closed"),
        ('item { name: "a" id: x }\n', "m.pbtxt:1", "id 'x' is not an integer"),
        ('item { name: "a" id: 0 }\n', "m.pbtxt:1", "id 0 is not positive"),
        ('item {\n name: "a"\n id: 1\n label_id: 2\n}\n', "m.pbtxt:4", "second 'id'"),
        ('item {\n name: "a"\n colour: 1\n}\n', "m.pbtxt:3", "unknown field 'colour'"),
        ("item {\n name: a\n id: 1\n}\n", "m.pbtxt:2", "not a quoted string"),
        ("# only a comment\n", "m.pbtxt", "no items"),
        ("", "m.pbtxt", "empty file"),
    ],
)  # fmt: skip
def test_label_map_errors(tmp_path, text, where, message):
    with pytest.raises(AnnotationError, match=re.escape(message)) as err:
        read_label_map(write(tmp_path / "m.pbtxt", text))
    assert str(err.value).startswith(f"{tmp_path / where}:")


# ---------------------------------------------------------------------------- annotations


def test_annotations_group_rows_by_person(tmp_path):
    actors = read_annotations(write(tmp_path / "ava_val_v2.2.csv", ANNOTATIONS))
    assert list(actors) == [("-5KQ66BBWC4", 902), ("-5KQ66BBWC4", 903), ("1j20qq1JyX4", 1798)]
    assert actors[("-5KQ66BBWC4", 902)] == [
        # The box of the person's first row; the repeated (person 1, action 4) row is kept once.
        Actor((0.077, 0.151, 0.283, 0.811), (4, 80), 1),
        Actor((0.332, 0.194, 0.481, 0.891), (12,), 0),
    ]
    # 1.0005 is rounding in the file: clamped into [0, 1].
    assert actors[("-5KQ66BBWC4", 903)] == [Actor((0.0, 0.0, 1.0, 1.0), (3,), 0)]
    assert actors[("1j20qq1JyX4", 1798)] == [Actor((0.5, 0.5, 0.6, 0.6), (17,), 4)]


def test_annotations_without_person_ids(tmp_path):
    text = (
        "vid,0910,0.1,0.1,0.4,0.9,5\n"
        "vid,0910,0.5,0.1,0.9,0.9,5\n"
        "vid,0910,0.1004,0.1,0.4,0.9,11\n"  # the first person again, up to the 3 decimals
        "vid,0911,0.5,0.1,0.9,0.9,8\n"
    )
    actors = read_annotations(write(tmp_path / "seven.csv", text))
    assert actors == {
        ("vid", 910): [
            Actor((0.1, 0.1, 0.4, 0.9), (5, 11), 0),
            Actor((0.5, 0.1, 0.9, 0.9), (5,), 1),
        ],
        ("vid", 911): [Actor((0.5, 0.1, 0.9, 0.9), (8,), 0)],
    }


def test_annotations_with_label_map(tmp_path):
    label_map = read_label_map(write(tmp_path / "m.pbtxt", OFFICIAL_PBTXT))
    csv = write(tmp_path / "a.csv", "v,0902,0.1,0.1,0.2,0.2,3,0\nv,0902,0.1,0.1,0.2,0.2,4,0\n")
    assert read_annotations(csv, label_map) == {
        ("v", 902): [Actor((0.1, 0.1, 0.2, 0.2), (3, 4), 0)]
    }
    csv = write(tmp_path / "a.csv", "v,0902,0.1,0.1,0.2,0.2,3,0\nv,0902,0.1,0.1,0.2,0.2,2,0\n")
    with raises_at("a.csv:2: action_id 2 is not in the label map"):
        read_annotations(csv, label_map)


def test_annotations_round_trip(tmp_path):
    actors = {
        ("-5KQ66BBWC4", 902): [
            Actor((0.077, 0.151, 0.283, 0.811), (4, 80), 1),
            Actor((0.0, 0.194, 0.481, 1.0), (12,), 0),
        ],
        ("x", 7): [Actor((0.5, 0.5, 0.6, 0.6), (17,), 3)],
    }
    path = tmp_path / "out" / "a.csv"
    write_annotations(path, actors)
    lines = path.read_text().splitlines()
    assert lines[0] == "-5KQ66BBWC4,0902,0.077,0.151,0.283,0.811,4,1"
    assert lines[-1] == "x,0007,0.500,0.500,0.600,0.600,17,3"
    assert read_annotations(path) == actors


def test_write_annotations_refuses_what_cannot_be_read_back(tmp_path):
    def attempt(actors):
        write_annotations(tmp_path / "a.csv", actors)

    with pytest.raises(ValueError, match="no actions"):
        attempt({("v", 1): [Actor((0.1, 0.1, 0.2, 0.2), (), 0)]})
    with pytest.raises(ValueError, match="two actors with person_id 0"):
        box = (0.1, 0.1, 0.2, 0.2)
        attempt({("v", 1): [Actor(box, (1,), 0), Actor(box, (2,), 0)]})
    with pytest.raises(ValueError, match="at 3 decimals"):
        attempt({("v", 1): [Actor((0.1, 0.1, 0.1002, 0.2), (1,), 0)]})
    with pytest.raises(ValueError, match="cannot be written"):
        attempt({("a,b", 1): [Actor((0.1, 0.1, 0.2, 0.2), (1,), 0)]})
    with pytest.raises(ValueError, match="timestamp -1"):
        attempt({("v", -1): [Actor((0.1, 0.1, 0.2, 0.2), (1,), 0)]})
    with pytest.raises(ValueError, match="empty file"):
        attempt({})


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("v,0902,0.1,0.1,0.2,0.2,1,0\nv,0902,0.1,0.1,0.2,0.2,1\n", 2,
         "7 columns where earlier rows have 8"),
        ("v,0902,0.1,0.1,0.2,0.2\n", 1, "expected video_id,timestamp,x1,y1,x2,y2,action_id"),
        ("v,0902,0.1,0.1,0.2,0.2,1,0,9\n", 1, "got 9"),
        ("v,0902,0.1,abc,0.2,0.2,1,0\n", 1, "y1 'abc' is not a number"),
        ("v,0902,0.1,0.1,0.2,0.2,one,0\n", 1, "action_id 'one' is not an integer"),
        ("v,09.5,0.1,0.1,0.2,0.2,1,0\n", 1, "timestamp '09.5' is not an integer"),
        ("v,-1,0.1,0.1,0.2,0.2,1,0\n", 1, "negative timestamp -1"),
        (",0902,0.1,0.1,0.2,0.2,1,0\n", 1, "empty video_id"),
        ("v,0902,0.1,0.1,0.2,0.2,1,-3\n", 1, "negative person_id -3"),
        ("v,0902,0.1,0.1,0.2,0.2,0,0\n", 1, "action_id 0 is not positive"),
        ("\nv,0902,0.1,0.1,0.2,0.2,1,0\nv,0903,0.3,0.1,0.2,0.2,1,0\n", 3, "inverted box"),
        ("v,0902,0.1,0.1,0.1,0.2,1,0\n", 1, "empty or inverted box"),
        ("v,0902,0.1,0.1,0.2,1.2,1,0\n", 1, "y2 1.2 is outside [0, 1]"),
        ("v,0902,-0.01,0.1,0.2,0.2,1,0\n", 1, "x1 -0.01 is outside [0, 1]"),
        ("v,0902,nan,0.1,0.2,0.2,1,0\n", 1, "x1 nan is outside [0, 1]"),
        ("v,0902,0.1,0.1,0.2,0.2,1,0\nv,0902,0.1,0.1,0.3,0.2,2,0\n", 2,
         "person 0 at v,0902 has box (0.1, 0.1, 0.3, 0.2), but (0.1, 0.1, 0.2, 0.2) at line 1"),
    ],
)  # fmt: skip
def test_annotation_errors(tmp_path, text, line, message):
    with pytest.raises(AnnotationError, match=re.escape(message)) as err:
        read_annotations(write(tmp_path / "ava_val_v2.2.csv", text))
    assert str(err.value).startswith(f"{tmp_path / 'ava_val_v2.2.csv'}:{line}: ")


def test_empty_and_missing_files(tmp_path):
    for reader in (read_annotations, read_exclusions, read_proposals, read_detections):
        with raises_at("e.csv: empty file"):
            reader(write(tmp_path / "e.csv", "\n \n"))
        with raises_at("nope.csv: file not found"):
            reader(tmp_path / "nope.csv")


# ------------------------------------------------------------- exclusions, proposals, results


def test_exclusions_round_trip(tmp_path):
    path = write(tmp_path / "ava_val_excluded_timestamps_v2.2.csv", "-FaXLcSFjUI,0996\nb,1798\n")
    assert read_exclusions(path) == {("-FaXLcSFjUI", 996), ("b", 1798)}
    write_exclusions(tmp_path / "ex.csv", [("b", 1798), ("-FaXLcSFjUI", 996), ("b", 1798)])
    assert (tmp_path / "ex.csv").read_text() == "-FaXLcSFjUI,0996\nb,1798\n"
    with raises_at("ex.csv:2: expected video_id,timestamp (2 columns), got 3"):
        read_exclusions(write(tmp_path / "ex.csv", "a,0902\na,0903,1\n"))
    with raises_at("ex.csv:1: timestamp 'x' is not an integer"):
        read_exclusions(write(tmp_path / "ex.csv", "a,x\n"))


def test_proposals_round_trip(tmp_path):
    proposals = {
        ("v", 902): [Proposal((0.1, 0.2, 0.3, 0.4), 0.9876543210123), Proposal((0, 0, 1, 1), 1.0)],
        ("w", 1000): [Proposal((0.5, 0.5, 0.75, 0.875), 0.0)],
    }
    write_proposals(tmp_path / "p.csv", proposals)
    assert (tmp_path / "p.csv").read_text().startswith("v,0902,0.100,0.200,0.300,0.400,0.98765")
    assert read_proposals(tmp_path / "p.csv") == proposals
    with raises_at("p.csv:1: score 1.5 is outside [0, 1]"):
        read_proposals(write(tmp_path / "p.csv", "v,0902,0.1,0.2,0.3,0.4,1.5\n"))
    with raises_at("p.csv:1: expected video_id,timestamp,x1,y1,x2,y2,score (7 columns), got 8"):
        read_proposals(write(tmp_path / "p.csv", "v,0902,0.1,0.2,0.3,0.4,1,0.5\n"))
    with pytest.raises(ValueError, match="not in \\[0, 1\\]"):
        write_proposals(tmp_path / "p.csv", {("v", 1): [Proposal((0.1, 0.1, 0.2, 0.2), 2.0)]})


def test_detections_round_trip(tmp_path):
    detections = {
        ("v", 902): [
            Detection((0.1, 0.2, 0.3, 0.4), 12, 0.25),
            Detection((0.1, 0.2, 0.3, 0.4), 80, 1e-07),
        ],
        ("v", 903): [Detection((0.0, 0.0, 1.0, 1.0), 1, -3.5)],  # a logit: any finite score
    }
    write_detections(tmp_path / "results.csv", detections)
    assert (tmp_path / "results.csv").read_text().splitlines()[1] == (
        "v,0902,0.100,0.200,0.300,0.400,80,1e-07"
    )
    assert read_detections(tmp_path / "results.csv") == detections
    with raises_at("r.csv:2: score inf is not finite"):
        read_detections(write(tmp_path / "r.csv", "v,0902,0,0,1,1,1,0.5\nv,0902,0,0,1,1,1,inf\n"))
    with raises_at("r.csv:1: action_id '1.0' is not an integer"):
        read_detections(write(tmp_path / "r.csv", "v,0902,0,0,1,1,1.0,0.5\n"))
    with raises_at("r.csv:1: expected video_id,timestamp,x1,y1,x2,y2,action_id,score"):
        read_detections(write(tmp_path / "r.csv", "v,0902,0,0,1,1,0.5\n"))
    with pytest.raises(ValueError, match="not finite"):
        write_detections(tmp_path / "r.csv", {("v", 1): [Detection((0, 0, 1, 1), 1, float("nan"))]})
