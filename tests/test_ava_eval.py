import json
import random

import pytest

from training.ava_eval import (
    DetectionReport,
    average_precision,
    evaluate_detections,
    frame_ap,
    iou,
    mean_ap,
    write_detection_report,
)
from training.formats.ava import Actor, Detection

LEFT = (0.0, 0.0, 0.5, 0.5)
RIGHT = (0.5, 0.5, 1.0, 1.0)
K1, K2, K3 = ("vid", 902), ("vid", 903), ("other", 1000)


# ------------------------------------------------------------------------------------ IoU


def test_iou_hand_cases():
    assert iou(LEFT, LEFT) == 1.0
    assert iou(LEFT, RIGHT) == 0.0  # touching at a corner
    assert iou((0, 0, 0.5, 1), (0.5, 0, 1, 1)) == 0.0  # sharing an edge
    # Half-overlapping squares: 0.125 / (0.25 + 0.25 - 0.125), no +1 on the sides.
    assert iou((0, 0, 0.5, 0.5), (0.25, 0, 0.75, 0.5)) == pytest.approx(1 / 3)
    assert iou((0, 0, 1, 1), (0.25, 0.25, 0.75, 0.75)) == pytest.approx(0.25)
    a, b = (0.1, 0.2, 0.6, 0.9), (0.3, 0.1, 0.8, 0.5)
    assert iou(a, b) == pytest.approx(0.3 * 0.3 / (0.35 + 0.2 - 0.09))
    assert iou(a, b) == iou(b, a)


# ---------------------------------------------------------------------- average precision


def test_average_precision_hand_cases():
    # TP, FP, TP against 2 positives: precision 1 at recall 1/2, 2/3 at recall 1.
    assert average_precision([0.9, 0.8, 0.7], [True, False, True], 2) == pytest.approx(5 / 6)
    # Ranked by score, not by input order.
    assert average_precision([0.7, 0.9, 0.8], [True, True, False], 2) == pytest.approx(5 / 6)
    # FP, TP, TP: precision rises to 2/3 later, and interpolation credits it at recall 1/2 too
    # (without it: (1/2 + 2/3) / 2).
    assert average_precision([0.9, 0.8, 0.7], [False, True, True], 2) == pytest.approx(2 / 3)
    # Positives never detected are recall the curve does not reach.
    assert average_precision([0.5], [True], 4) == pytest.approx(0.25)
    assert average_precision([0.9, 0.1], [False, False], 3) == 0.0
    assert average_precision([], [], 3) == 0.0


def test_average_precision_ties_keep_input_order():
    assert average_precision([0.5, 0.5], [False, True], 1) == pytest.approx(0.5)
    assert average_precision([0.5, 0.5], [True, False], 1) == 1.0


def test_average_precision_errors():
    with pytest.raises(ValueError, match="2 scores but 1"):
        average_precision([0.1, 0.2], [True], 1)
    with pytest.raises(ValueError, match="num_positives"):
        average_precision([0.1], [False], 0)
    with pytest.raises(ValueError, match="2 true positives but only 1"):
        average_precision([0.1, 0.2], [True, True], 1)
    with pytest.raises(ValueError, match="NaN"):
        average_precision([float("nan")], [True], 1)


def reference_ap(scores, is_tp, num_positives):
    """The definition, step by step: for each recall level j / P, the best precision reached at
    that recall or beyond (0 if never reached), averaged over the P levels."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])  # stable: ties in input order
    points = []  # (true positives so far, precision) after each ranked detection
    hits = 0
    for rank, i in enumerate(order, 1):
        hits += bool(is_tp[i])
        points.append((hits, hits / rank))
    total = 0.0
    for level in range(1, num_positives + 1):
        total += max((p for h, p in points if h >= level), default=0.0)
    return total / num_positives


def test_average_precision_matches_the_definition_on_random_cases():
    rng = random.Random(0)
    for _ in range(500):
        n = rng.randint(0, 12)
        scores = [rng.choice([0.1, 0.3, 0.5, 0.7, 0.9, rng.random()]) for _ in range(n)]
        is_tp = [rng.random() < 0.5 for _ in range(n)]
        positives = sum(is_tp) + rng.randint(0 if any(is_tp) else 1, 3)
        got = average_precision(scores, is_tp, positives)
        assert got == pytest.approx(reference_ap(scores, is_tp, positives), abs=1e-12)


# ------------------------------------------------------------------------------- frame AP


def det(box, action, score):
    return Detection(box, action, score)


def test_perfect_detector_and_class_without_groundtruth():
    groundtruth = {
        K1: [Actor(LEFT, (1, 2), 0), Actor(RIGHT, (1,), 1)],
        K2: [Actor(RIGHT, (2,), 0)],
    }
    detections = {
        K1: [det(LEFT, 1, 0.9), det(LEFT, 2, 0.4), det(RIGHT, 1, 0.3)],
        K2: [det(RIGHT, 2, 0.8)],
    }
    per_class = frame_ap(groundtruth, detections, [1, 2, 3])
    assert per_class == {1: 1.0, 2: 1.0, 3: None}
    assert mean_ap(per_class) == 1.0


def test_multi_label_actor_counts_once_per_class():
    # One person doing actions 1 and 2, detected only as 1: class 2 has a miss, AP 0.
    groundtruth = {K1: [Actor(LEFT, (1, 2), 0)]}
    per_class = frame_ap(groundtruth, {K1: [det(LEFT, 1, 0.9)]}, [1, 2])
    assert per_class == {1: 1.0, 2: 0.0}
    assert mean_ap(per_class) == 0.5
    assert mean_ap({1: 0.5, 2: None, 3: 0.25}) == pytest.approx(0.375)
    with pytest.raises(ValueError, match="no class"):
        mean_ap({1: None})


def test_second_detection_of_a_matched_box_is_a_false_positive():
    groundtruth = {K1: [Actor(LEFT, (1,), 0), Actor(RIGHT, (1,), 1)]}
    detections = {K1: [det(LEFT, 1, 0.9), det(LEFT, 1, 0.8), det(RIGHT, 1, 0.7)]}
    # TP, FP, TP.
    assert frame_ap(groundtruth, detections, [1]) == {1: pytest.approx(5 / 6)}


def test_greedy_match_takes_best_box_even_if_taken():
    # Two overlapping people. The second detection overlaps the free box enough (IoU 2/3), but
    # its best box is the taken one: the VOC rule of the official code makes it a false positive.
    first, second = (0.0, 0.0, 0.4, 1.0), (0.1, 0.0, 0.5, 1.0)
    groundtruth = {K1: [Actor(first, (1,), 0), Actor(second, (1,), 1)]}
    late = (0.02, 0.0, 0.42, 1.0)
    assert iou(late, first) > iou(late, second) >= 0.5
    detections = {K1: [det(first, 1, 0.9), det(late, 1, 0.8)]}
    assert frame_ap(groundtruth, detections, [1]) == {1: pytest.approx(0.5)}


@pytest.mark.parametrize(("x2", "ap"), [(0.49, 0.0), (0.5, 1.0), (0.51, 1.0)])
def test_iou_threshold(x2, ap):
    # A detection inside the ground-truth box: its IoU is its share of the area.
    groundtruth = {K1: [Actor((0.0, 0.0, 1.0, 1.0), (1,), 0)]}
    detections = {K1: [det((0.0, 0.0, x2, 1.0), 1, 0.9)]}
    assert frame_ap(groundtruth, detections, [1]) == {1: ap}
    assert frame_ap(groundtruth, detections, [1], iou_threshold=0.4) == {1: 1.0}


def test_exclusions_drop_groundtruth_and_detections():
    groundtruth = {K1: [Actor(LEFT, (1,), 0)], K2: [Actor(LEFT, (1,), 0), Actor(RIGHT, (1,), 1)]}
    # At K2, a confident false positive and two missed people.
    detections = {K1: [det(LEFT, 1, 0.5)], K2: [det((0.2, 0.6, 0.3, 0.7), 1, 0.9)]}
    assert frame_ap(groundtruth, detections, [1]) == {1: pytest.approx(0.5 / 3)}
    assert frame_ap(groundtruth, detections, [1], exclusions={K2}) == {1: 1.0}
    # Excluding a key frame that holds the only ground truth of a class leaves it without AP.
    assert frame_ap({K2: [Actor(LEFT, (2,), 0)]}, {}, [2], exclusions=[K2]) == {2: None}


def test_detection_at_key_frame_without_groundtruth_is_a_false_positive():
    # The TF evaluator scores such detections against an empty ground truth.
    groundtruth = {K1: [Actor(LEFT, (1,), 0)]}
    detections = {K3: [det(LEFT, 1, 0.9)], K1: [det(LEFT, 1, 0.5)]}
    assert frame_ap(groundtruth, detections, [1]) == {1: pytest.approx(0.5)}
    assert frame_ap(groundtruth, detections, [1], exclusions=[K3]) == {1: 1.0}


def test_classes_outside_class_ids_are_ignored():
    groundtruth = {K1: [Actor(LEFT, (1, 7), 0)]}
    detections = {K1: [det(RIGHT, 7, 0.99), det(LEFT, 1, 0.5)]}
    assert frame_ap(groundtruth, detections, [1]) == {1: 1.0}


def test_max_per_key_keeps_the_best_rows_of_each_key_frame():
    groundtruth = {K1: [Actor(LEFT, (1,), 0), Actor(RIGHT, (2,), 1)]}
    detections = {K1: [det(RIGHT, 2, 0.2), det(LEFT, 1, 0.9), det(RIGHT, 1, 0.5)]}
    assert frame_ap(groundtruth, detections, [1, 2]) == {1: 1.0, 2: 1.0}
    assert frame_ap(groundtruth, detections, [1, 2], max_per_key=2) == {1: 1.0, 2: 0.0}


def test_frame_ap_argument_errors():
    with pytest.raises(ValueError, match="duplicates"):
        frame_ap({}, {}, [1, 1])
    with pytest.raises(ValueError, match="iou_threshold"):
        frame_ap({}, {}, [1], iou_threshold=0)
    with pytest.raises(ValueError, match="max_per_key"):
        frame_ap({}, {}, [1], max_per_key=0)


# --------------------------------------------------------------------------------- report


def test_report_counts_and_files(tmp_path):
    groundtruth = {
        K1: [Actor(LEFT, (1, 2), 0), Actor(RIGHT, (1,), 1)],
        K2: [Actor(LEFT, (1,), 0)],
    }
    detections = {
        K1: [det(LEFT, 1, 0.9), det(RIGHT, 1, 0.2), det(RIGHT, 2, 0.8), det(LEFT, 9, 0.9)],
        K2: [det(LEFT, 1, 0.4)],
        K3: [det(LEFT, 1, 0.6)],
    }
    label_map = {1: "stand", 2: "sit", 3: "fly"}
    report = evaluate_detections(groundtruth, detections, label_map)
    assert isinstance(report, DetectionReport)
    # Class 1 ranked: K1 left (TP), K3 (FP), K2 (TP), K1 right (TP): precisions 1, 1/2, 2/3, 3/4.
    expected = {1: pytest.approx((1 + 3 / 4 + 3 / 4) / 3), 2: 0.0, 3: None}
    assert report.per_class == expected
    assert report.per_class == frame_ap(groundtruth, detections, list(label_map))
    assert report.num_groundtruth == {1: 3, 2: 1, 3: 0}
    assert report.num_detections == {1: 4, 2: 1, 3: 0}
    assert (report.key_frames, report.key_frames_without_groundtruth) == (2, 1)

    paths = write_detection_report(report, tmp_path / "eval")
    assert set(paths) == {"json", "png"}
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert paths["png"].stat().st_size > 1000
    summary = json.loads(paths["json"].read_text())
    assert summary["mAP"] == pytest.approx(report.mAP)
    assert report.mAP == pytest.approx(((1 + 3 / 4 + 3 / 4) / 3 + 0.0) / 2)
    assert summary["classes_with_groundtruth"] == 2
    assert summary["per_class"][2] == {
        "id": 3,
        "name": "fly",
        "ap": None,
        "groundtruth": 0,
        "detections": 0,
    }


def test_report_without_any_groundtruth(tmp_path):
    report = evaluate_detections({}, {K1: [det(LEFT, 1, 0.5)]}, {1: "stand"})
    assert report.mAP is None
    assert report.key_frames_without_groundtruth == 1
    paths = write_detection_report(report, tmp_path, name="empty")
    assert json.loads(paths["json"].read_text())["mAP"] is None
    assert paths["png"].name == "empty_ap.png" and paths["png"].stat().st_size > 0
