"""model.scoreboard: every expected value below is computed by hand from the devkit's rules
(docs/evaluation.md) on images of a few pixels; merges are checked against one board."""
import itertools

import numpy as np
import pytest

from model.data import kitti_bev
from model.metrics import OVERALL
from model.scoreboard import Scoreboard

ROAD = ["non-road", "road"]

# Image A (2x2): labels road, non-road / ignored, road; confidences 200, 100 / 50, 10.
LABEL_A = np.array([[1, 0], [255, 1]], np.uint8)
PRED_A = np.array([[1, 1], [0, 0]], np.uint8)
CONF_A = np.array([[200, 100], [50, 10]], np.uint8)


def test_one_binary_image_by_hand():
    board = Scoreboard(ROAD).add(PRED_A, LABEL_A, CONF_A)
    # rows ground truth, columns prediction; the ignored pixel is not counted
    assert board.confusion.tolist() == [[0, 1], [1, 1]]
    counts = board.road[OVERALL]
    assert (counts.pos, counts.neg) == (2, 1)
    # FN[k]: road pixels with v < k (v = 10 and 200); FP[k]: non-road with v >= k (v = 100)
    assert counts.fn[0] == 0 and counts.fn[10] == 0 and counts.fn[11] == 1
    assert counts.fn[200] == 1 and counts.fn[201] == 2
    assert counts.fp[100] == 1 and counts.fp[101] == 0
    result = board.result(task="road")
    overall = result["kitti"][OVERALL]
    # k <= 10: TP 2, FP 1 -> P 2/3, R 1, F 0.8 (the max, first on ties, threshold 0)
    assert overall["MaxF"] == pytest.approx(0.8)
    assert overall["threshold"] == 0.0
    assert overall["PRE"] == pytest.approx(2 / 3)
    assert overall["REC"] == 1.0 and overall["FPR"] == 1.0 and overall["FNR"] == 0.0
    # recall levels 0..0.5 reach precision 1 (k 101..200), 0.6..1.0 only 2/3: (6 + 5 * 2/3) / 11
    assert overall["AP"] == pytest.approx(28 / 33)
    # p >= 0.5 means v >= 128: TP 1 (v = 200), FN 1 (v = 10), FP 0
    assert overall["IoU"] == pytest.approx(0.5)
    assert overall["num_images"] == 1
    # IoU from the confusion matrix: class 0: 0 / 2, class 1: 1 / 3
    assert result["per_class_iou"] == {"non-road": 0.0, "road": pytest.approx(1 / 3)}
    assert result["mean_iou"] == pytest.approx(1 / 6)
    assert result["pixel_accuracy"] == pytest.approx(1 / 3)
    assert result["split_size"] == 1 and result["task"] == "road"
    assert "kitti_bev" not in result


def test_kitti_categories_and_overall():
    board = Scoreboard(ROAD, by_category=True)
    board.add(PRED_A, LABEL_A, CONF_A, category="um")
    board.add(PRED_A, LABEL_A, CONF_A, category="uu")
    board.add(PRED_A, LABEL_A, CONF_A, category=None)  # a name without a category
    assert sorted(board.road) == ["other", OVERALL, "um", "uu"]
    assert board.images == {"um": 1, "uu": 1, "other": 1, OVERALL: 3}
    assert (board.road[OVERALL].pos, board.road[OVERALL].neg) == (6, 3)
    table = board.result()["kitti"]
    assert list(table) == ["other", "um", "uu", OVERALL]  # categories sorted, overall last
    assert table[OVERALL]["num_images"] == 3
    # three copies of one image: every rate is the single image's
    assert table[OVERALL]["MaxF"] == pytest.approx(0.8)


def test_bird_eye_view_counts_through_the_table():
    # A hand-made table: BEV cell 0 takes pixel (0, 0), cell 1 pixel (1, 1), others out of view
    table = kitti_bev.BevLookup((2, 2), np.array([0, 1]), np.array([0, 3]))
    board = Scoreboard(ROAD).add(PRED_A, LABEL_A, CONF_A, bev_table=table)
    bev = board.road_bev[OVERALL]
    # two road cells (v 200 and 10), no non-road cell: out of view is not evaluated
    assert (bev.pos, bev.neg) == (2, 0)
    assert bev.fn[11] == 1 and bev.fn[201] == 2 and not bev.fp.any()
    assert board.result()["kitti_bev"][OVERALL]["REC"] == 1.0


def test_multiclass_per_class_iou_by_hand():
    label = np.array([[0, 1, 2], [2, 2, 255]], np.uint8)
    pred = np.array([[0, 2, 2], [2, 1, 0]], np.uint8)
    board = Scoreboard(["background", "person", "dog"]).add(pred, label)
    assert board.confusion.tolist() == [[1, 0, 0], [0, 0, 1], [0, 1, 2]]
    result = board.result(coco_protocol="fcnseg")
    # background 1/1, person 0/2, dog 2/(3 + 3 - 2)
    assert result["per_class_iou"] == {"background": 1.0, "person": 0.0, "dog": 0.5}
    assert result["mean_iou"] == pytest.approx(0.5)
    assert "kitti" not in result and not board.road
    assert [name for name, *_ in board.figures()] == ["confusion_matrix.png"]


def test_a_bad_label_adds_nothing():
    board = Scoreboard(ROAD).add(PRED_A, LABEL_A, CONF_A)
    before = Scoreboard(ROAD).add(PRED_A, LABEL_A, CONF_A)
    with pytest.raises(ValueError, match=r"found \[7\]"):
        board.check_label(np.array([[7, 1]], np.uint8))
    with pytest.raises(ValueError):
        board.add(np.zeros((1, 2), np.uint8), np.array([[7, 1]], np.uint8),
                  np.zeros((1, 2), np.uint8))
    assert board == before


def _random_images(count, seed=0):
    rng = np.random.default_rng(seed)
    images = []
    for i in range(count):
        shape = (3 + i % 3, 4 + i % 2)
        label = rng.choice(np.array([0, 1, 255], np.uint8), size=shape)
        confidence = rng.integers(0, 256, size=shape).astype(np.uint8)
        images.append(((confidence >= 128).astype(np.uint8), label, confidence,
                       ("um", "umm", "uu")[i % 3]))
    return images


def _board_of(images):
    board = Scoreboard(ROAD, by_category=True)
    for pred, label, conf, category in images:
        board.add(pred, label, conf, category=category)
    return board


@pytest.mark.parametrize("order", list(itertools.permutations(range(3))))
def test_merge_in_any_order_equals_one_board(order):
    images = _random_images(7)
    whole = _board_of(images)
    parts = [_board_of(images[:2]), _board_of(images[2:3]), _board_of(images[3:])]
    merged = Scoreboard(ROAD, by_category=True).merge(parts[i] for i in order)
    assert merged == whole
    assert merged.result() == whole.result()
    # merging into a non-empty board, and an empty board in between, changes nothing either
    first, *rest = (parts[i] for i in order)
    again = _board_of(images[:0]).merge([first])
    assert again.merge([Scoreboard(ROAD, by_category=True), *rest]) == whole


def test_merge_refuses_other_classes():
    with pytest.raises(ValueError, match="cannot merge"):
        Scoreboard(ROAD).merge([Scoreboard(["a", "b", "c"])])
