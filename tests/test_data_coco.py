"""model.data.coco and coco_explore: masks vs an independent pycocotools computation."""
import json
import os

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from model.data import coco as coco_mod
from model.data import coco_explore, load_dataset
from model.data.image_io import read_image, read_label_png


def _expected_mask(coco, info, cat_id_to_label):
    """Per class union of annToMask; 1 class -> its id, >= 2 -> 255, crowd only -> 255."""
    h, w = info["height"], info["width"]
    per_class = {}
    crowd = np.zeros((h, w), bool)
    for ann in coco.imgToAnns[info["id"]]:
        if ann["category_id"] not in cat_id_to_label:
            continue
        m = coco.annToMask(ann) > 0
        if ann["iscrowd"]:
            crowd |= m
        else:
            lab = cat_id_to_label[ann["category_id"]]
            per_class[lab] = per_class.get(lab, np.zeros((h, w), bool)) | m
    expected = np.zeros((h, w), np.uint8)
    count = np.zeros((h, w), int)
    for lab, m in per_class.items():
        expected[m] = lab
        count += m
    expected[count >= 2] = 255
    expected[(count == 0) & crowd] = 255
    return expected


@pytest.fixture(scope="module")
def val_coco(coco_root):
    return coco_mod.load_coco(coco_root / "annotations" / "instances_val2017_sample.json")


@pytest.mark.parametrize("categories", ["all", "voc", ["person", "cup"]])
def test_masks_match_independent_pycocotools(val_coco, categories):
    cat_ids, names = coco_mod.select_categories(val_coco, categories)
    lut = {c: i + 1 for i, c in enumerate(cat_ids)}
    for info in val_coco.dataset["images"]:
        got = coco_mod.semantic_mask(val_coco, info, lut)
        assert got.shape == (info["height"], info["width"]) and got.dtype == np.uint8
        np.testing.assert_array_equal(got, _expected_mask(val_coco, info, lut),
                                      err_msg=info["file_name"])


def test_crowd_regions_are_ignored(val_coco):
    crowd_anns = [a for a in val_coco.dataset["annotations"] if a["iscrowd"]]
    assert crowd_anns, "the sample holds crowd annotations"
    cat_ids, _ = coco_mod.select_categories(val_coco, "all")
    lut = {c: i + 1 for i, c in enumerate(cat_ids)}
    for ann in crowd_anns:
        info = val_coco.imgs[ann["image_id"]]
        got = coco_mod.semantic_mask(val_coco, info, lut)
        region = val_coco.annToMask(ann) > 0
        assert (got[region] == 255).any()
        assert not (got[region] == 0).any()  # crowd never counts as background


def test_select_categories(val_coco):
    ids, names = coco_mod.select_categories(val_coco, "voc")
    assert ids == list(coco_mod.VOC_CATEGORY_IDS) and len(names) == 21
    assert names[0] == "background" and names[1] == "airplane" and names[-1] == "tv"
    ids, names = coco_mod.select_categories(val_coco, "all")
    assert len(ids) == 80 and ids == sorted(ids) and names[1] == "person"
    ids, names = coco_mod.select_categories(val_coco, ["dog", "person"])
    assert ids == [18, 1] and names == ["background", "dog", "person"]
    with pytest.raises(ValueError, match="did you mean person"):
        coco_mod.select_categories(val_coco, ["persons"])


def _tiny_coco(tmp_path, with_missing=True):
    """4 images: overlap of two classes, overlap of one class, crowd, empty."""
    img_dir = tmp_path / "images"
    img_dir.mkdir()
    images, anns = [], []

    def square(x0, y0, x1, y1):
        return [[x0, y0, x1, y0, x1, y1, x0, y1]]

    for i in range(4):
        images.append({"id": i + 1, "file_name": f"{i:03d}.jpg", "height": 20, "width": 30})
        Image.fromarray(np.full((20, 30, 3), 40 * i, np.uint8)).save(img_dir / f"{i:03d}.jpg")
    anns += [
        {"id": 1, "image_id": 1, "category_id": 1, "segmentation": square(0, 0, 10, 10), "iscrowd": 0},
        {"id": 2, "image_id": 1, "category_id": 3, "segmentation": square(5, 5, 15, 15), "iscrowd": 0},
        {"id": 3, "image_id": 2, "category_id": 1, "segmentation": square(0, 0, 10, 10), "iscrowd": 0},
        {"id": 4, "image_id": 2, "category_id": 1, "segmentation": square(5, 5, 15, 15), "iscrowd": 0},
    ]
    crowd = np.zeros((20, 30), np.uint8, order="F")
    crowd[0:10, 0:20] = 1
    rle = mask_utils.encode(np.asfortranarray(crowd))
    rle["counts"] = rle["counts"].decode()
    anns += [
        {"id": 5, "image_id": 3, "category_id": 1, "segmentation": rle, "iscrowd": 1},
        {"id": 6, "image_id": 3, "category_id": 1, "segmentation": square(2, 2, 6, 6), "iscrowd": 0},
    ]
    if with_missing:
        images.append({"id": 9, "file_name": "gone.jpg", "height": 20, "width": 30})
    for a in anns:
        a.setdefault("area", 1.0)
        a.setdefault("bbox", [0, 0, 1, 1])
    cats = [{"id": 1, "name": "person", "supercategory": "x"},
            {"id": 3, "name": "car", "supercategory": "x"},
            {"id": 4, "name": "dog", "supercategory": "x"}]
    ann_file = tmp_path / "instances_tiny.json"
    ann_file.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return ann_file, img_dir


def test_overlap_and_crowd_rules(tmp_path):
    ann_file, _ = _tiny_coco(tmp_path)
    coco = coco_mod.load_coco(ann_file)
    lut = {1: 1, 3: 2}
    m1 = coco_mod.semantic_mask(coco, coco.imgs[1], lut)
    # Polygon rasterisation: interiors are clear of the edges.
    assert m1[2, 2] == 1 and m1[12, 12] == 2 and m1[7, 7] == 255 and m1[18, 28] == 0
    m2 = coco_mod.semantic_mask(coco, coco.imgs[2], lut)
    assert m2[7, 7] == 1  # same class overlapping: still that class
    m3 = coco_mod.semantic_mask(coco, coco.imgs[3], lut)
    assert m3[4, 4] == 1        # a real instance inside the crowd region keeps its class
    assert m3[8, 15] == 255     # crowd elsewhere: ignore
    assert m3[15, 15] == 0
    # Unselected categories are background.
    m1_person_only = coco_mod.semantic_mask(coco, coco.imgs[1], {1: 1})
    assert m1_person_only[7, 7] == 1 and m1_person_only[12, 12] == 0


def test_render_masks_cache_missing_and_area(tmp_path, monkeypatch):
    ann_file, img_dir = _tiny_coco(tmp_path)
    cache = tmp_path / "cache"
    with pytest.warns(UserWarning, match=r"1 of 5 images are missing .*gone\.jpg"):
        pairs = coco_mod.render_masks(ann_file, img_dir, cache, categories=["person", "car"],
                                      progress=False)
    assert [os.path.basename(i) for i, _ in pairs] == ["000.jpg", "001.jpg", "002.jpg", "003.jpg"]
    for image, mask in pairs:
        assert read_label_png(mask).shape == read_image(image).shape[:2]
    assert read_label_png(pairs[0][1])[7, 7] == 255
    stamp = os.stat(pairs[0][1]).st_mtime_ns

    # Rerun: served from the cache without parsing the JSON again.
    def boom(*a, **k):
        raise AssertionError("annotation file parsed again")
    monkeypatch.setattr(coco_mod, "load_coco", boom)
    with pytest.warns(UserWarning, match="missing"):
        some = coco_mod.render_masks(ann_file, img_dir, cache, categories=["person", "car"],
                                     min_area_fraction=0.01, progress=False)
        most = coco_mod.render_masks(ann_file, img_dir, cache, categories=["person", "car"],
                                     min_area_fraction=0.31, progress=False)
    assert os.stat(pairs[0][1]).st_mtime_ns == stamp
    # Labelled fractions: 000 and 001 ~0.29 (two squares), 002 0.33 (crowd), 003 nothing.
    assert [os.path.basename(i) for i, _ in some] == ["000.jpg", "001.jpg", "002.jpg"]
    assert [os.path.basename(i) for i, _ in most] == ["002.jpg"]
    assert coco_mod.cached_class_names(ann_file, cache, ["person", "car"]) == ["background", "person", "car"]
    monkeypatch.undo()

    # Another selection gets its own cache folder and its own labels.
    with pytest.warns(UserWarning, match="missing"):
        dog = coco_mod.render_masks(ann_file, img_dir, cache, categories=["car"], progress=False)
    assert len(list(cache.iterdir())) == 2
    assert read_label_png(dog[0][1])[12, 12] == 1 and read_label_png(dog[0][1])[2, 2] == 0


def test_render_masks_errors(tmp_path):
    ann_file, img_dir = _tiny_coco(tmp_path, with_missing=False)
    with pytest.raises(FileNotFoundError, match="annotation file not found"):
        coco_mod.render_masks(tmp_path / "nope.json", img_dir, tmp_path / "c")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match=r"bad\.json: not a valid COCO"):
        coco_mod.render_masks(bad, img_dir, tmp_path / "c")
    with pytest.raises(FileNotFoundError, match="image folder not found"):
        coco_mod.render_masks(ann_file, tmp_path / "noimages", tmp_path / "c")


def test_load_dataset_coco(coco_root, tmp_path):
    data = load_dataset("coco", coco_root, categories="voc", cache_dir=tmp_path, progress=False)
    assert data.label_format == "ids" and data.num_classes == 21 and len(data.colours) == 21
    assert len(data.train) == 40 and len(data.val) == 40
    assert all("train2017" in i for i, _ in data.train) and all("val2017" in i for i, _ in data.val)
    labels = np.unique(np.concatenate([np.unique(read_label_png(m)) for _, m in data.train]))
    assert labels.max() <= 255 and set(labels) - {255} <= set(range(21))


def test_explore_counts_and_images(coco_root, capsys):
    ann = str(coco_root / "annotations" / "instances_val2017_sample.json")
    assert coco_explore.main(["counts", "--annotations", ann]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1].split()[0] == "person"  # most instances first
    assert "378 annotations" in out[-1]
    assert coco_explore.main(["images", "--annotations", ann, "--categories", "person", "dog",
                              "--all"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1].startswith("1 images hold all of") and "dog=1" in out[0] and "person=1" in out[0]
    assert coco_explore.main(["images", "--annotations", ann, "--categories", "persn"]) == 2
    assert "did you mean person" in capsys.readouterr().err


def test_explore_grid_png(coco_root, tmp_path, capsys):
    ann = str(coco_root / "annotations" / "instances_val2017_sample.json")
    out = tmp_path / "grid.png"
    assert coco_explore.main(["grid", "--annotations", ann, "--images",
                              str(coco_root / "val2017"), "--categories", "person", "dog",
                              "--output", str(out), "--n", "6"]) == 0
    img = read_image(out)
    assert img.shape[1] == 4 * 320 and img.shape[0] > 2 * 240
    assert str(out) in capsys.readouterr().out


def test_malformed_polygon_is_skipped_with_warning(tmp_path):
    ann_file = tmp_path / "instances_bad.json"
    ann_file.write_text(json.dumps({
        "images": [{"id": 1, "file_name": "a.jpg", "height": 10, "width": 10}],
        "annotations": [
            {"id": 7, "image_id": 1, "category_id": 1, "segmentation": [[1, 2]], "iscrowd": 0,
             "area": 1, "bbox": [0, 0, 1, 1]},
            {"id": 8, "image_id": 1, "category_id": 1, "iscrowd": 0, "area": 1, "bbox": [0, 0, 1, 1],
             "segmentation": [[5, 5, 9, 5, 9, 9, 5, 9]]}],
        "categories": [{"id": 1, "name": "person"}]}))
    coco = coco_mod.load_coco(ann_file)
    with pytest.warns(UserWarning, match=r"annotation 7 of a\.jpg: unusable segmentation"):
        mask = coco_mod.semantic_mask(coco, coco.imgs[1], {1: 1})
    assert mask[7, 7] == 1 and mask[1, 1] == 0


# --- the torchvision protocol -----------------------------------------------------------------
# Reference: pytorch/vision references/segmentation/coco_utils.py. Spelled out here with
# pycocotools.mask and numpy (no torch): FilterAndRemapCocoCategories keeps annotations of the
# selected categories; convert_coco_poly_to_mask decodes frPyObjects(segmentation, h, w) of
# each one (crowd RLEs included) and ORs its parts; ConvertCocoPolysToMask takes the largest
# label over the instances and sets 255 where masks.sum(0) > 1; get_coco filters the train
# set only with _coco_remove_images_without_annotations (an annotation of the selected
# categories, and the sum of their "area" > 1000).

def _torchvision_reference(coco_json: dict, image_dir, info: dict, cat_id_to_label: dict):
    w, h = Image.open(image_dir / info["file_name"]).size  # torchvision: image.size
    anns = [a for a in coco_json["annotations"]
            if a["image_id"] == info["id"] and a["category_id"] in cat_id_to_label]
    masks, cats = [], []
    for a in anns:
        decoded = mask_utils.decode(mask_utils.frPyObjects(a["segmentation"], h, w))
        if decoded.ndim < 3:
            decoded = decoded[..., None]
        masks.append(decoded.any(axis=2))
        cats.append(cat_id_to_label[a["category_id"]])
    if not masks:
        return np.zeros((h, w), np.uint8), anns
    masks = np.stack(masks).astype(np.uint8)
    target = (masks * np.array(cats, np.uint8)[:, None, None]).max(axis=0)
    target[masks.astype(np.int64).sum(axis=0) > 1] = 255
    return target, anns


def _torchvision_keeps(anns) -> bool:
    return len(anns) > 0 and sum(a["area"] for a in anns) > 1000


@pytest.mark.parametrize("split", ["val2017", "train2017"])
@pytest.mark.parametrize("categories", ["voc", "all"])
def test_torchvision_protocol_equals_pycocotools_reference(coco_root, split, categories):
    ann_file = coco_root / "annotations" / f"instances_{split}_sample.json"
    coco_json = json.loads(ann_file.read_text())
    coco = coco_mod.load_coco(ann_file)
    cat_ids, _ = coco_mod.select_categories(coco, categories)
    lut = {c: i + 1 for i, c in enumerate(cat_ids)}
    differ_from_fcnseg = 0
    for info in coco_json["images"]:
        expected, anns = _torchvision_reference(coco_json, coco_root / split, info, lut)
        got = coco_mod.semantic_mask(coco, info, lut, protocol="torchvision")
        np.testing.assert_array_equal(got, expected, err_msg=info["file_name"])
        assert coco_mod.torchvision_keeps(coco, info, cat_ids) == _torchvision_keeps(anns)
        ours = coco_mod.semantic_mask(coco, info, lut)  # the fcnseg rules, same image
        np.testing.assert_array_equal(ours, _expected_mask(coco, info, lut),
                                      err_msg=info["file_name"])
        differ_from_fcnseg += bool((ours != got).any())
    assert len(coco_json["images"]) == 40
    assert differ_from_fcnseg > 0  # the protocols are really different on this sample


def test_torchvision_filters_training_images_only(coco_root, tmp_path):
    """31 of the 40 training images survive torchvision's filter with its VOC categories
    (counted with torchvision's own functions), and all 40 validation images."""
    data = load_dataset("coco", coco_root, categories="voc", cache_dir=tmp_path,
                        progress=False, coco_protocol="torchvision")
    train_json = json.loads((coco_root / "annotations" /
                             "instances_train2017_sample.json").read_text())
    lut = {c: i + 1 for i, c in enumerate(coco_mod.VOC_CATEGORY_IDS)}
    kept = sorted(i["file_name"] for i in train_json["images"]
                  if _torchvision_keeps(_torchvision_reference(
                      train_json, coco_root / "train2017", i, lut)[1]))
    assert len(kept) == 31
    assert sorted(os.path.basename(i) for i, _ in data.train) == kept
    assert len(data.val) == 40
    # the masks in the cache are the torchvision ones, not the fcnseg ones
    val_json = json.loads((coco_root / "annotations" / "instances_val2017_sample.json").read_text())
    by_name = {i["file_name"]: i for i in val_json["images"]}
    for image, mask in data.val[:10]:
        info = by_name[os.path.basename(image)]
        expected, _ = _torchvision_reference(val_json, coco_root / "val2017", info, lut)
        np.testing.assert_array_equal(read_label_png(mask), expected)
    fcnseg = load_dataset("coco", coco_root, categories="voc", cache_dir=tmp_path,
                          progress=False)
    assert len(fcnseg.train) == 40 and fcnseg.train[0][1] != data.train[0][1]


def test_torchvision_rules_on_generated_overlaps(tmp_path):
    ann_file, img_dir = _tiny_coco(tmp_path)
    coco = coco_mod.load_coco(ann_file)
    lut = {1: 1, 3: 2}
    m1 = coco_mod.semantic_mask(coco, coco.imgs[1], lut, protocol="torchvision")
    assert m1[2, 2] == 1 and m1[12, 12] == 2 and m1[7, 7] == 255
    m2 = coco_mod.semantic_mask(coco, coco.imgs[2], lut, protocol="torchvision")
    assert m2[7, 7] == 255  # two people overlapping: 255 as well
    m3 = coco_mod.semantic_mask(coco, coco.imgs[3], lut, protocol="torchvision")
    assert m3[8, 15] == 1   # crowd keeps its class
    assert m3[4, 4] == 255  # a person inside the crowd is covered twice
    with pytest.raises(ValueError, match="min_area_fraction belongs to the fcnseg"):
        coco_mod.render_masks(ann_file, img_dir, tmp_path / "c", protocol="torchvision",
                              min_area_fraction=0.1)
    with pytest.raises(ValueError, match="protocol must be one of"):
        coco_mod.semantic_mask(coco, coco.imgs[1], lut, protocol="voc")


def test_evaluate_scores_against_masks_of_another_protocol(coco_root, tmp_path):
    """model.evaluate --coco-protocol torchvision on a run trained with the fcnseg rules:
    the same validation images (torchvision never filters them), masks re-rendered."""
    import argparse

    from model import evaluate

    data = load_dataset("coco", coco_root, categories="voc", cache_dir=tmp_path / "a",
                        progress=False)
    config = {"dataset": "coco", "data_root": str(coco_root), "coco_protocol": "fcnseg",
              "categories": list(data.class_names[1:])}  # as model.train records them
    args = argparse.Namespace(coco_protocol="torchvision", data_root=None, split="val",
                              cache_dir=tmp_path / "b")
    scored, pairs = evaluate._coco_protocol_pairs(config, data.val, args)
    assert scored["coco_protocol"] == "torchvision"
    assert [image for image, _ in pairs] == [image for image, _ in data.val]
    val_json = json.loads((coco_root / "annotations" / "instances_val2017_sample.json").read_text())
    by_name = {i["file_name"]: i for i in val_json["images"]}
    lut = {c: i + 1 for i, c in enumerate(coco_mod.VOC_CATEGORY_IDS)}
    for image, mask in pairs[:8]:
        expected, _ = _torchvision_reference(val_json, coco_root / "val2017",
                                             by_name[os.path.basename(image)], lut)
        np.testing.assert_array_equal(read_label_png(mask), expected)
    same, same_pairs = evaluate._coco_protocol_pairs(
        config, data.val, argparse.Namespace(coco_protocol=None, data_root=None, split="val",
                                             cache_dir=tmp_path / "b"))
    assert same["coco_protocol"] == "fcnseg" and same_pairs == data.val
