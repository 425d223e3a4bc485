import json
import math

import numpy as np
import pytest

from model import metrics
from model.metrics import RoadCounts


def devkit_style_counts(prob_u8, gt_road, valid):
    """The devkit's own formulation: float32 v/255, histogram over [-inf, t_0..t_255, inf]."""
    prob = prob_u8.astype("f4") / 255
    edges = np.concatenate(([-np.inf], metrics.THRESHOLDS, [np.inf]))
    fn = np.cumsum(np.histogram(prob[gt_road & valid], bins=edges)[0])[:256]
    fp = np.cumsum(np.histogram(prob[~gt_road & valid], bins=edges)[0][::-1])[::-1][1:257]
    return fn, fp, int((gt_road & valid).sum()), int((~gt_road & valid).sum())


def test_counts_match_devkit_histogram_formulation():
    rng = np.random.default_rng(0)
    prob = rng.integers(0, 256, size=(40, 60), dtype=np.uint8)
    label = rng.choice(np.array([0, 1, 255], np.uint8), size=(40, 60), p=[0.5, 0.3, 0.2])
    counts = metrics.road_counts(prob, label)
    fn, fp, pos, neg = devkit_style_counts(prob, label == 1, label != 255)
    np.testing.assert_array_equal(counts.fn, fn)
    np.testing.assert_array_equal(counts.fp, fp)
    assert (counts.pos, counts.neg) == (pos, neg)


def test_perfect_predictor_scores_one():
    label = np.array([[1, 1, 0, 0], [1, 0, 0, 255]], np.uint8)
    prob = (label == 1).astype(np.float32)
    scores = metrics.kitti_scores(metrics.road_counts(prob, label))
    assert scores["MaxF"] == pytest.approx(1.0)
    assert scores["AP"] == pytest.approx(1.0)
    assert scores["PRE"] == 1.0 and scores["REC"] == 1.0
    assert scores["FPR"] == 0.0 and scores["FNR"] == 0.0
    # Thresholds 1/255 .. 1 all separate perfectly; the first maximum wins.
    assert scores["threshold"] == pytest.approx(1 / 255)


def test_constant_predictor_by_hand():
    # 3 road, 5 non-road valid pixels, 2 ignored; every pixel has probability 0.6.
    label = np.array([1, 1, 1, 0, 0, 0, 0, 0, 255, 255], np.uint8).reshape(2, 5)
    prob = np.full(label.shape, 0.6, np.float32)  # quantised to 153
    scores = metrics.kitti_scores(metrics.road_counts(prob, label))
    # Thresholds 0..153: everything is road, P = 3/8, R = 1; above: TP = 0 (dropped).
    precision = 3 / 8
    assert scores["MaxF"] == pytest.approx(2 * precision / (precision + 1))
    assert scores["AP"] == pytest.approx(precision)
    assert scores["PRE"] == pytest.approx(precision)
    assert scores["REC"] == 1.0
    assert scores["FPR"] == 1.0
    assert scores["FNR"] == 0.0
    assert scores["threshold"] == 0.0


def test_partial_predictor_by_hand():
    # road pixels with v = 200, 100; non-road with v = 150, 50.
    prob = np.array([[200, 100, 150, 50]], np.uint8)
    label = np.array([[1, 1, 0, 0]], np.uint8)
    scores = metrics.kitti_scores(metrics.road_counts(prob, label))
    # k <= 50: TP2 FP2 (P .5, R 1, F .667); 51..100: TP2 FP1 (P 2/3, R 1, F .8);
    # 101..150: TP1 FP1 (P .5 R .5); 151..200: TP1 FP0 (P 1 R .5, F .667).
    assert scores["MaxF"] == pytest.approx(0.8)
    assert scores["threshold"] == pytest.approx(51 / 255)
    assert scores["PRE"] == pytest.approx(2 / 3)
    assert scores["REC"] == 1.0
    assert scores["FPR"] == pytest.approx(0.5)
    assert scores["FNR"] == 0.0
    # AP: recall levels 0..0.5 -> max precision 1; 0.6..1.0 -> 2/3.
    assert scores["AP"] == pytest.approx((6 * 1.0 + 5 * (2 / 3)) / 11)
    # IoU at p >= 0.5 (v >= 128): TP 1, FP 1, FN 1.
    assert metrics.road_iou(metrics.road_counts(prob, label)) == pytest.approx(1 / 3)


def test_uint8_and_float_probabilities_agree():
    rng = np.random.default_rng(1)
    values = rng.integers(0, 256, size=(16, 16), dtype=np.uint8)
    label = rng.integers(0, 2, size=(16, 16), dtype=np.uint8)
    assert metrics.road_counts(values, label) == metrics.road_counts(values / 255.0, label)


def test_quantize_rounds_to_nearest_and_clips():
    q = metrics.quantize_probability(np.array([0.0, 0.5, 1 / 255 * 0.49, 1 / 255 * 0.51, 1.2, -1]))
    assert q.tolist() == [0, 128, 0, 1, 255, 0]
    # Exact halves go to even, as tf.round does in the exported confidence output.
    # (0.5, 1.5 and 2.5 / 255 in float32 times 255 give exactly 0.5, 1.5, 2.5.)
    halves = np.array([0.5, 1.5, 2.5], np.float32) / np.float32(255)
    assert metrics.quantize_probability(halves).tolist() == [0, 2, 2]


def test_counts_are_additive_and_json_round_trip():
    rng = np.random.default_rng(2)
    probs = [rng.random((8, 12), dtype=np.float32) for _ in range(3)]
    labels = [rng.choice(np.array([0, 1, 255], np.uint8), size=(8, 12)) for _ in range(3)]
    per_image = sum(metrics.road_counts(p, lab) for p, lab in zip(probs, labels))
    whole = metrics.road_counts(np.concatenate(probs), np.concatenate(labels))
    assert per_image == whole
    again = RoadCounts.from_dict(json.loads(json.dumps(whole.to_dict())))
    assert again == whole
    assert metrics.kitti_scores(again) == metrics.kitti_scores(whole)


def test_ignored_pixels_do_not_count():
    label = np.array([[1, 0, 255, 255]], np.uint8)
    good = np.array([[255, 0, 0, 255]], np.uint8)
    other = np.array([[255, 0, 255, 0]], np.uint8)
    assert metrics.road_counts(good, label) == metrics.road_counts(other, label)
    assert metrics.road_counts(good, label).pos == 1
    assert metrics.road_counts(good, label).neg == 1


def test_no_road_gives_nan_and_bad_labels_raise():
    scores = metrics.kitti_scores(metrics.road_counts(np.zeros((2, 2)), np.zeros((2, 2), np.uint8)))
    assert all(math.isnan(v) for v in scores.values())
    with pytest.raises(ValueError, match="0, 1 or 255"):
        metrics.road_counts(np.zeros((2, 2)), np.full((2, 2), 7, np.uint8))
    with pytest.raises(ValueError, match="shape"):
        metrics.road_counts(np.zeros((2, 3)), np.zeros((2, 2), np.uint8))


def test_confusion_matrix_and_scores_by_hand():
    label = np.array([[0, 0, 1, 1], [2, 2, 255, 255]], np.uint8)
    pred = np.array([[0, 1, 1, 1], [2, 0, 2, 0]], np.uint8)
    cm = metrics.confusion_matrix(pred, label, num_classes=4)
    expected = np.zeros((4, 4), np.int64)
    expected[0, 0] = 1
    expected[0, 1] = 1
    expected[1, 1] = 2
    expected[2, 2] = 1
    expected[2, 0] = 1
    np.testing.assert_array_equal(cm, expected)
    scores = metrics.segmentation_scores(cm, ["a", "b", "c", "d"])
    # IoU a: 1 / (2 + 2 - 1) = 1/3; b: 2 / (2 + 3 - 2) = 2/3; c: 1 / (2 + 1 - 1) = 1/2; d: NaN.
    iou = scores["per_class_iou"]
    assert iou["a"] == pytest.approx(1 / 3)
    assert iou["b"] == pytest.approx(2 / 3)
    assert iou["c"] == pytest.approx(1 / 2)
    assert math.isnan(iou["d"])
    assert scores["mean_iou"] == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)
    assert scores["pixel_accuracy"] == pytest.approx(4 / 6)
    assert scores["mean_accuracy"] == pytest.approx((1 / 2 + 1 + 1 / 2) / 3)
    assert scores["frequency_weighted_iou"] == pytest.approx((2 / 6) * (1 / 3 + 2 / 3 + 1 / 2))


def test_confusion_matrix_is_additive_and_validates():
    rng = np.random.default_rng(3)
    preds = [rng.integers(0, 5, (6, 7)) for _ in range(3)]
    labels = [rng.choice(np.array([0, 1, 2, 3, 4, 255]), (6, 7)) for _ in range(3)]
    total = sum(metrics.confusion_matrix(p, lab, 5) for p, lab in zip(preds, labels))
    whole = metrics.confusion_matrix(np.concatenate(preds), np.concatenate(labels), 5)
    np.testing.assert_array_equal(total, whole)
    assert whole.sum() == sum(int((lab != 255).sum()) for lab in labels)
    # uint8 labels take a fast path; it must agree with the generic one.
    as_uint8 = metrics.confusion_matrix(np.concatenate(preds).astype(np.uint8),
                                        np.concatenate(labels).astype(np.uint8), 5)
    np.testing.assert_array_equal(as_uint8, whole)
    for dtype in (np.int64, np.uint8):
        with pytest.raises(ValueError, match="label values"):
            metrics.confusion_matrix(np.zeros((2, 2), np.uint8), np.full((2, 2), 9, dtype), 5)
    for dtype in (np.int64, np.uint8):
        with pytest.raises(ValueError, match="predicted"):
            metrics.confusion_matrix(np.full((2, 2), 5), np.zeros((2, 2), dtype), 5)


def test_road_iou_from_confusion_matrix():
    cm = np.array([[5, 1], [2, 6]])
    assert metrics.road_iou(cm) == pytest.approx(6 / (6 + 1 + 2))
