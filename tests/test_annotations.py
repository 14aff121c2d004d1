import json
import re
from pathlib import Path

import pytest

from training.formats.annotations import (
    AnnotationError,
    Annotations,
    Sample,
    read_class_names,
    read_hmdb51,
    read_kinetics_csv,
    read_ssv2,
    read_ucf101,
    read_video_list,
    write_video_list,
)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()
    return path


def raises_at(where: str):
    """An AnnotationError whose message contains `where` (a file name and line)."""
    return pytest.raises(AnnotationError, match=re.escape(where))


# ------------------------------------------------------------------ mmaction2 video list


def test_video_list_with_class_names(tmp_path):
    lst = write(
        tmp_path / "train.txt",
        "# comment\nwalk/a.mp4 0\n\n  run/b.mp4   1\nwith space/c d.mp4 2\n",
    )
    names = write(tmp_path / "classes.txt", "walk\nrun\njump\n\n")
    ann = read_video_list(lst, tmp_path / "data", names)
    assert ann.class_names == ["walk", "run", "jump"]
    assert ann.samples == [
        Sample(tmp_path / "data/walk/a.mp4", 0),
        Sample(tmp_path / "data/run/b.mp4", 1),
        Sample(tmp_path / "data/with space/c d.mp4", 2),
    ]
    assert ann.missing == []


def test_video_list_without_class_names_counts_to_max_label(tmp_path):
    ann = read_video_list(write(tmp_path / "l.txt", "a.mp4 4\nb.mp4 1\n"), tmp_path)
    assert ann.class_names == ["0", "1", "2", "3", "4"]


@pytest.mark.parametrize(
    ("text", "where", "message"),
    [
        ("a.mp4 0\nb.mp4\n", "l.txt:2", "expected 'path label'"),
        ("a.mp4 0\n\nb.mp4 x\n", "l.txt:3", "is not an integer"),
        ("a.mp4 -1\n", "l.txt:1", "negative label"),
        ("# only a comment\n", "l.txt", "no samples"),
        ("\n  \n", "l.txt", "empty file"),
    ],
)
def test_video_list_errors(tmp_path, text, where, message):
    with pytest.raises(AnnotationError, match=message) as err:
        read_video_list(write(tmp_path / "l.txt", text), tmp_path)
    assert where in str(err.value)


def test_video_list_label_out_of_range_of_class_names(tmp_path):
    lst = write(tmp_path / "l.txt", "a.mp4 0\nb.mp4 2\n")
    names = write(tmp_path / "names.txt", "x\ny\n")
    with raises_at("l.txt:2: label 2 out of range: 2 class names in"):
        read_video_list(lst, tmp_path, names)


def test_missing_list_and_class_name_files(tmp_path):
    with raises_at("nope.txt: file not found"):
        read_video_list(tmp_path / "nope.txt", tmp_path)
    lst = write(tmp_path / "l.txt", "a.mp4 0\n")
    with raises_at("names.txt: file not found"):
        read_video_list(lst, tmp_path, tmp_path / "names.txt")


def test_class_names_errors(tmp_path):
    with raises_at("n.txt:3: duplicate class name 'a' (first at 1)"):
        read_class_names(write(tmp_path / "n.txt", "a\nb\na\n"))
    with raises_at("n.txt:2: blank line between class names"):
        read_class_names(write(tmp_path / "n.txt", "a\n\nb\n"))
    with raises_at("n.txt: empty file"):
        read_class_names(write(tmp_path / "n.txt", ""))


def test_write_video_list_round_trips(tmp_path):
    root = tmp_path / "ds"
    ann = Annotations(
        [Sample(root / "videos/x y.mp4", 1), Sample(root / "a/b.mp4", 0)], ["first", "second"]
    )
    write_video_list(ann, tmp_path / "out/train.txt", tmp_path / "out/classes.txt", root)
    assert (tmp_path / "out/train.txt").read_text() == "videos/x y.mp4 1\na/b.mp4 0\n"
    back = read_video_list(tmp_path / "out/train.txt", root, tmp_path / "out/classes.txt")
    assert back == ann


def test_write_video_list_refuses_what_cannot_be_read_back(tmp_path):
    def attempt(samples, names=("a",)):
        write_video_list(
            Annotations(samples, list(names)), tmp_path / "l", tmp_path / "n", tmp_path
        )

    with pytest.raises(ValueError, match="not under"):
        attempt([Sample(Path("/elsewhere/a.mp4"), 0)])
    with pytest.raises(ValueError, match="out of range"):
        attempt([Sample(tmp_path / "a.mp4", 1)])
    with pytest.raises(ValueError, match="cannot be written"):
        attempt([Sample(tmp_path / "#a.mp4", 0)])
    with pytest.raises(ValueError, match="duplicate"):
        attempt([Sample(tmp_path / "a.mp4", 0)], ("a", "a"))


# ------------------------------------------------------------------ Kinetics

KINETICS = """label,youtube_id,time_start,time_end,split,is_cc
abseiling,---QUuC4vJs,84,94,train,0
air drumming,--nQbRBEz2s,104,114,train,0
abseiling,-01xaXpOOgI,10,20,val,0
air drumming,-0FbUNwr4i8,0,10,val,0
abseiling,-0aaaaaaaaa,5,15,train,0
"""


@pytest.fixture
def kinetics(tmp_path):
    root = tmp_path / "k400"
    touch(root / "abseiling/---QUuC4vJs_000084_000094.mp4")  # standard name, class folder
    touch(root / "air_drumming/--nQbRBEz2s.mkv")  # bare id, folder with underscores
    touch(root / "-01xaXpOOgI_000010_000020.webm")  # flat layout
    touch(root / "air drumming/-0FbUNwr4i8_000000_000010.avi")
    # -0aaaaaaaaa has no file
    return write(tmp_path / "k400.csv", KINETICS), root


def test_kinetics_train_split(kinetics):
    csv_file, root = kinetics
    ann = read_kinetics_csv(csv_file, root, split="train")
    assert ann.class_names == ["abseiling", "air drumming"]
    assert ann.samples == [
        Sample(root / "abseiling/---QUuC4vJs_000084_000094.mp4", 0),
        Sample(root / "air_drumming/--nQbRBEz2s.mkv", 1),
    ]
    assert ann.missing == ["-0aaaaaaaaa_000005_000015"]


def test_kinetics_val_with_train_class_names(kinetics):
    csv_file, root = kinetics
    ann = read_kinetics_csv(csv_file, root, "val", class_names=["air drumming", "abseiling"])
    assert ann.samples == [
        Sample(root / "-01xaXpOOgI_000010_000020.webm", 1),
        Sample(root / "air drumming/-0FbUNwr4i8_000000_000010.avi", 0),
    ]
    assert ann.missing == []
    assert len(read_kinetics_csv(csv_file, root).samples) == 4  # no split: every row


def test_kinetics_errors(tmp_path, kinetics):
    csv_file, root = kinetics
    with raises_at("k400.csv:3: unknown class name 'air drumming'"):
        read_kinetics_csv(csv_file, root, "train", class_names=["abseiling"])
    with raises_at("k400.csv: no rows of split 'test'"):
        read_kinetics_csv(csv_file, root, "test")
    with raises_at("class_names: index 1: duplicate class name"):
        read_kinetics_csv(csv_file, root, "train", class_names=["abseiling", "abseiling"])

    test_csv = write(tmp_path / "test.csv", "youtube_id,time_start,time_end,split\nabc,1,11,test\n")
    with raises_at("test.csv:1: no 'label' column: this split has no labels"):
        read_kinetics_csv(test_csv, root, "test")
    empty_labels = write(
        tmp_path / "t.csv", "label,youtube_id,time_start,time_end,split\n,a,1,2,test\n"
    )
    with raises_at("t.csv:2: empty label: this split has no labels"):
        read_kinetics_csv(empty_labels, root, "test")

    header = "label,youtube_id,time_start,time_end,split\n"
    with raises_at("bad.csv:3: expected 5 columns, got 4"):
        read_kinetics_csv(write(tmp_path / "bad.csv", header + "a,b,1,2,train\na,b,1,2\n"), root)
    with raises_at("bad.csv:2: time_start 'x' is not a whole number"):
        read_kinetics_csv(write(tmp_path / "bad.csv", header + "a,b,x,2,train\n"), root)
    with raises_at("bad.csv:1: header lacks youtube_id"):
        read_kinetics_csv(write(tmp_path / "bad.csv", "label,id,time_start,time_end\n"), root)
    with raises_at("bad.csv: empty file"):
        read_kinetics_csv(write(tmp_path / "bad.csv", ""), root)
    with raises_at("none.csv: file not found"):
        read_kinetics_csv(tmp_path / "none.csv", root)


# ------------------------------------------------------------------ Something-Something v2

SSV2_LABELS = {
    "Approaching something with your camera": "0",
    "Holding something next to something": "2",
    "Pushing something from left to right": "1",
}


@pytest.fixture
def ssv2(tmp_path):
    labels = write(tmp_path / "labels.json", json.dumps(SSV2_LABELS, indent=1))
    entries = [
        {
            "id": "78687",
            "label": "holding potato next to vicks vaporub bottle",
            "template": "Holding [something] next to [something]",
            "placeholders": ["potato", "vicks vaporub bottle"],
        },
        {
            "id": "42326",
            "label": "pushing a pen from left to right",
            "template": "Pushing [something] from left to right",
            "placeholders": ["a pen"],
        },
    ]
    return labels, write(tmp_path / "train.json", json.dumps(entries))


def test_ssv2(tmp_path, ssv2):
    labels, train = ssv2
    ann = read_ssv2(labels, train, tmp_path / "videos")
    assert ann.class_names == [
        "Approaching something with your camera",
        "Pushing something from left to right",
        "Holding something next to something",
    ]
    assert ann.samples == [
        Sample(tmp_path / "videos/78687.webm", 2),
        Sample(tmp_path / "videos/42326.webm", 1),
    ]


def test_ssv2_errors(tmp_path, ssv2):
    labels, train = ssv2
    test = write(tmp_path / "test.json", json.dumps([{"id": "1420"}]))
    with raises_at("test.json: entry 0 (id 1420): no 'template': this split has no labels"):
        read_ssv2(labels, test, tmp_path)
    unknown = write(tmp_path / "u.json", json.dumps([{"id": "7", "template": "Eating [x]"}]))
    with raises_at("u.json: entry 0 (id 7): template 'Eating x' is not in"):
        read_ssv2(labels, unknown, tmp_path)
    with raises_at("broken.json:2: invalid JSON"):
        read_ssv2(labels, write(tmp_path / "broken.json", '[\n{"id": }]'), tmp_path)
    dup = write(tmp_path / "l.json", '{"A": "0", "B": "1", "A": "2"}')
    with raises_at("l.json: entry 2: duplicate class name 'A'"):
        read_ssv2(dup, train, tmp_path)
    gap = write(tmp_path / "l.json", '{"A": "0", "B": "2"}')
    with raises_at("l.json: indices are not 0..1: missing [1]"):
        read_ssv2(gap, train, tmp_path)
    bad = write(tmp_path / "l.json", '{"A": "zero"}')
    with raises_at("l.json: entry 'A': index 'zero' is not an integer"):
        read_ssv2(bad, train, tmp_path)


# ------------------------------------------------------------------ UCF101


@pytest.fixture
def ucf(tmp_path):
    # Official files use CRLF line endings.
    class_ind = write(tmp_path / "classInd.txt", "1 ApplyEyeMakeup\r\n2 HandstandPushups\r\n")
    train = write(
        tmp_path / "trainlist01.txt",
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1\r\n"
        "HandstandPushups/v_HandStandPushups_g08_c01.avi 2\r\n",
    )
    test = write(
        tmp_path / "testlist01.txt",
        "HandstandPushups/v_HandStandPushups_g01_c01.avi\r\n"
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi\r\n",
    )
    return class_ind, train, test


def test_ucf101(tmp_path, ucf):
    class_ind, train, test = ucf
    root = tmp_path / "UCF-101"
    ann = read_ucf101(train, root, class_ind)
    assert ann.class_names == ["ApplyEyeMakeup", "HandstandPushups"]
    assert ann.samples[1] == Sample(root / "HandstandPushups/v_HandStandPushups_g08_c01.avi", 1)
    assert [s.label for s in read_ucf101(test, root, class_ind).samples] == [1, 0]


def test_ucf101_errors(tmp_path, ucf):
    class_ind, _, _ = ucf
    cases = [
        ("ApplyEyeMakeup/a.avi 3\n", "s.txt:1: label 3 out of range"),
        ("ApplyEyeMakeup/a.avi 2\n", "s.txt:1: label 2 (HandstandPushups) disagrees"),
        ("ApplyEyeMakeup/a.avi one\n", "s.txt:1: label 'one' is not an integer"),
        ("ApplyEyeMakeup/a.avi\nSurfing/b.avi\n", "s.txt:2: no label and no known class folder"),
        ("a.avi 1 2\n", "s.txt:1: expected 'Class/video.avi [label]'"),
    ]
    for text, where in cases:
        with raises_at(where):
            read_ucf101(write(tmp_path / "s.txt", text), tmp_path, class_ind)
    split = write(tmp_path / "s.txt", "ApplyEyeMakeup/a.avi\n")
    with raises_at("ci.txt:2: class index 1 repeats line 1"):
        read_ucf101(split, tmp_path, write(tmp_path / "ci.txt", "1 A\n1 B\n"))
    with raises_at("ci.txt: class indices are not 1..2"):
        read_ucf101(split, tmp_path, write(tmp_path / "ci.txt", "1 A\n3 B\n"))
    with raises_at("ci.txt:2: duplicate class name 'A'"):
        read_ucf101(split, tmp_path, write(tmp_path / "ci.txt", "1 A\n2 A\n"))


# ------------------------------------------------------------------ HMDB51


@pytest.fixture
def hmdb(tmp_path):
    splits = tmp_path / "testTrainMulti_7030_splits"
    write(
        splits / "brush_hair_test_split1.txt",
        "April_09_brush_hair_u_nm_np1_ba_goo_0.avi 1 \n"
        "Aussie_Brush_hair_brush_hair_h_cm_np1_ri_med_0.avi 2 \n"
        "unused_brush_hair.avi 0 \n",
    )
    write(
        splits / "ride_bike_test_split1.txt",
        "#437_How_To_Ride_A_Bike_ride_bike_f_cm_np1_ba_med_0.avi 1 \n"
        "Bikeride_ride_bike_f_cm_np1_ri_med_1.avi 2 \n",
    )
    write(splits / "brush_hair_test_split2.txt", "other.avi 1\n")
    return splits


def test_hmdb51(tmp_path, hmdb):
    root = tmp_path / "hmdb51"
    train = read_hmdb51(hmdb, root, split=1, subset="train")
    assert train.class_names == ["brush_hair", "ride_bike"]
    assert train.samples == [
        Sample(root / "brush_hair/April_09_brush_hair_u_nm_np1_ba_goo_0.avi", 0),
        Sample(root / "ride_bike/#437_How_To_Ride_A_Bike_ride_bike_f_cm_np1_ba_med_0.avi", 1),
    ]
    test = read_hmdb51(hmdb, root, split=1, subset="test")
    assert [s.path.name for s in test.samples] == [
        "Aussie_Brush_hair_brush_hair_h_cm_np1_ri_med_0.avi",
        "Bikeride_ride_bike_f_cm_np1_ri_med_1.avi",
    ]
    assert read_hmdb51(hmdb, root, split=2).class_names == ["brush_hair"]


def test_hmdb51_errors(tmp_path, hmdb):
    write(hmdb / "ride_bike_test_split1.txt", "a.avi 1\nb.avi 3\n")
    with raises_at("ride_bike_test_split1.txt:2: split id 3 is not 0, 1 or 2"):
        read_hmdb51(hmdb, tmp_path)
    write(hmdb / "ride_bike_test_split1.txt", "a.avi\n")
    with raises_at("ride_bike_test_split1.txt:1: expected 'video.avi id'"):
        read_hmdb51(hmdb, tmp_path)
    write(hmdb / "ride_bike_test_split1.txt", "")
    with raises_at("ride_bike_test_split1.txt: empty file"):
        read_hmdb51(hmdb, tmp_path)
    with raises_at("no *_test_split3.txt files"):
        read_hmdb51(hmdb, tmp_path, split=3)
    with raises_at("missing: split directory not found"):
        read_hmdb51(tmp_path / "missing", tmp_path)
    with pytest.raises(ValueError, match="subset"):
        read_hmdb51(hmdb, tmp_path, subset="val")
