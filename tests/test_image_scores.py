"""Per-image scores (model/image_scores.py): every expected value is counted by hand from the
tiny arrays below."""
import io
import json

import numpy as np
import pytest
from PIL import Image

from model import image_scores
from model.data import kitti_bev

# Road confidence (v / 255) and KITTI labels (1 road, 0 not, 255 not evaluated):
#   (0,0) 200 road,   label 1 -> TP      (0,1) 128 road,  label 0 -> FP (128 is the decision)
#   (0,2) 127 not,    label 1 -> FN      (1,0)   0 not,   label 0 -> TN
#   (1,1) 255 road,   label 255 -> not counted               (1,2)  10 not, label 1 -> FN
CONFIDENCE = np.array([[200, 128, 127], [0, 255, 10]], np.uint8)
ROAD_LABEL = np.array([[1, 0, 1], [0, 255, 1]], np.uint8)
GREY = np.full((2, 3, 3), 100, np.uint8)


def test_binary_scores_by_hand():
    scores, outcome = image_scores.binary_scores(CONFIDENCE, ROAD_LABEL)
    assert (scores["tp"], scores["fp"], scores["fn"]) == (1, 1, 2)
    assert scores["PRE"] == 1 / 2
    assert scores["REC"] == 1 / 3
    assert scores["F"] == 2 / 5        # 2 TP / (2 TP + FP + FN) = 2 / 5
    assert scores["IoU"] == 1 / 4      # TP / (TP + FP + FN)
    tp, fp, fn, none = image_scores.TP, image_scores.FP, image_scores.FN, 255
    assert outcome.tolist() == [[tp, fp, fn], [none, none, fn]]


def test_binary_float_probability_is_quantised_as_the_devkit_reads_it():
    # p = 0.5 -> round(127.5) = 128 (halves to even): road; 0.498 -> 127: not road.
    record, _ = image_scores.score_image(
        "x", GREY[:1, :2], np.array([[1, 1]], np.uint8), ["not road", "road"],
        confidence=np.array([[0.5, 0.498]], np.float32))
    assert (record["tp"], record["fn"]) == (1, 1)


def test_nothing_to_find_and_nothing_claimed_has_no_score():
    scores, _ = image_scores.binary_scores(np.zeros((2, 2), np.uint8), np.zeros((2, 2), np.uint8))
    assert scores["F"] is None and scores["PRE"] is None and scores["REC"] is None


def test_class_scores_by_hand():
    # valid pixels (gt, pred): (0,0) (1,1) (1,2) (2,2) (2,0); (1,1) of the image is ignored.
    pred = np.array([[0, 1, 2], [2, 1, 0]], np.uint8)
    label = np.array([[0, 1, 1], [2, 255, 2]], np.uint8)
    scores, outcome = image_scores.class_scores(pred, label, ["bg", "a", "b", "absent"])
    # IoU: bg 1/(1+2-1) = 1/2, a 1/(2+1-1) = 1/2, b 1/(2+2-1) = 1/3; "absent" is left out.
    assert scores["class_iou"] == pytest.approx({"bg": 1 / 2, "a": 1 / 2, "b": 1 / 3})
    assert scores["mIoU"] == pytest.approx(4 / 9)
    assert scores["pixel_accuracy"] == 3 / 5
    tp, fp, fn, none = image_scores.TP, image_scores.FP, image_scores.FN, 255
    assert outcome.tolist() == [[none, tp, fp], [tp, none, fn]]


def test_bird_eye_view_scores_through_a_known_table():
    # Cell 0 takes pixel (0,0) (200, road: TP), cell 1 pixel (0,2) (127, road: FN).
    table = kitti_bev.BevLookup((2, 3), np.array([0, 1]), np.array([0, 2]))
    record, files = image_scores.score_image("um_000001", GREY, ROAD_LABEL,
                                             ["not road", "road"], confidence=CONFIDENCE,
                                             bev_table=table, category="um")
    assert (record["tp_bev"], record["fp_bev"], record["fn_bev"]) == (1, 0, 1)
    assert record["F_bev"] == 2 / 3 and record["PRE_bev"] == 1.0 and record["REC_bev"] == 0.5
    assert record["score"] == record["F"] == 2 / 5 and record["score_name"] == "F"
    assert set(files) == {record["overlay"], record["overlay_bev"]}
    bev = Image.open(io.BytesIO(files[record["overlay_bev"]]))
    assert bev.size == (400 // 2, 800 // 2)  # the 800x400 grid, halved for the page


def test_overlay_colours_are_half_blends_of_the_outcome_colours():
    _, outcome = image_scores.binary_scores(CONFIDENCE, ROAD_LABEL)
    picture = image_scores.overlay_picture(GREY, outcome, max_width=640)
    # 100 * 0.5 + colour * 0.5, rounded: green (0,190,60) -> (50,145,80), red (235,40,40) ->
    # (168,70,70) (167.5 rounds to even), blue (40,110,255) -> (70,105,178) (177.5 -> 178).
    assert picture[0, 0].tolist() == [50, 145, 80]
    assert picture[0, 1].tolist() == [168, 70, 70]
    assert picture[0, 2].tolist() == [70, 105, 178]
    assert picture[1, 0].tolist() == [100, 100, 100]  # true negative: the image itself
    assert picture[1, 1].tolist() == [100, 100, 100]  # not evaluated: the image itself


def test_overlays_are_reduced_by_an_integer_factor():
    # 1242 columns -> factor ceil(1242 / 640) = 2 -> 621 x 188 (375 / 2 rounded up by PIL).
    image = np.zeros((375, 1242, 3), np.uint8)
    outcome = np.full((375, 1242), 255, np.uint8)
    outcome[0, 0] = image_scores.FP      # kept: row 0, column 0 is sampled
    outcome[1, 1] = image_scores.FN      # dropped: odd row and column
    picture = image_scores.overlay_picture(image, outcome, max_width=640)
    assert picture.shape == (188, 621, 3)
    assert picture[0, 0].tolist() == [118, 20, 20] and picture[0, 1].tolist() == [0, 0, 0]
    record, files = image_scores.score_image("k", image, np.zeros((375, 1242), np.uint8),
                                             ["not road", "road"],
                                             confidence=np.zeros((375, 1242), np.uint8))
    assert Image.open(io.BytesIO(files[record["overlay"]])).size == (621, 188)


def test_worst_first_and_the_json_lines_file(tmp_path):
    writer = image_scores.Writer(tmp_path)
    for name, score in (("b", 0.5), ("n", None), ("c", 0.1), ("a", 0.5)):
        writer.add({"image": name, "score": score}, {f"image_overlays/{name}.png": b"x"})
    writer.close()
    lines = (tmp_path / "image_scores.jsonl").read_text().splitlines()
    assert [json.loads(line)["image"] for line in lines] == ["b", "n", "c", "a"]
    ordered = image_scores.worst_first(image_scores.read_records(tmp_path))
    assert [r["image"] for r in ordered] == ["c", "a", "b", "n"]
    assert (tmp_path / "image_overlays" / "n.png").read_bytes() == b"x"
