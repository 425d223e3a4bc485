"""Paths taken from data (a COCO file_name, a folder entry, a label path) stay inside their
root: outside it they are a dead letter (Beam) or a clear error (training data), and the file
is never opened. Each escaping path points at a valid image, so a job that opened it would
segment it instead of refusing it."""
from __future__ import annotations

import json
import os
import pathlib

import numpy as np
import pytest

from common.files import OutsideRootError
from model.data.image_io import write_png

IMAGE_SIZE = (64, 64)
CONFIG = {"dataset": "folder", "class_names": ["background", "thing"],
          "colours": [[0, 0, 0], [255, 0, 0]], "image_size": list(IMAGE_SIZE),
          "num_classes": 2, "fc_width": 16, "normalization": "caffe", "label_format": "ids"}


def _image(path: pathlib.Path, seed: int = 0) -> pathlib.Path:
    write_png(path, np.random.default_rng(seed).integers(0, 256, (24, 32, 3), dtype=np.uint8))
    return path


def _label(path: pathlib.Path) -> pathlib.Path:
    label = np.zeros((24, 32), np.uint8)
    label[12:, :10] = 1
    write_png(path, label)
    return path


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> pathlib.Path:
    from export.savedmodel import export_saved_model
    from tests.tiny_models import tiny_fcn

    return export_saved_model(tiny_fcn(2, IMAGE_SIZE), {**CONFIG, "categories": ["thing"]},
                              tmp_path_factory.mktemp("models"), "fcn8s", version=1)


def _rows(out: pathlib.Path, prefix: str) -> dict:
    out = out / "latest"  # the published run folder
    rows = [json.loads(line) for f in sorted(out.glob(f"{prefix}-*.jsonl"))
            for line in f.read_text().splitlines() if line.strip()]
    return {pathlib.Path(r["path"]).name: r for r in rows}


def _run(*args) -> dict:
    from beam_jobs import segment
    return segment.run([str(a) for a in args])


def test_resolve_inside_hand_cases(tmp_path):
    from common.files import resolve_inside

    assert resolve_inside(tmp_path, "a/b.png") == str((tmp_path / "a/b.png").resolve())
    assert resolve_inside("gs://bucket/coco", "val/x.jpg") == "gs://bucket/coco/val/x.jpg"
    for bad in ("../x.png", "a/../../x.png", "/etc/passwd", "../../../../etc/passwd"):
        with pytest.raises(OutsideRootError):
            resolve_inside(tmp_path, bad)
    with pytest.raises(OutsideRootError):
        resolve_inside("gs://bucket/coco", "../other/x.jpg")


def test_beam_folder_entry_and_label_outside_are_dead_letters(tmp_path, model):
    images, labels = tmp_path / "images", tmp_path / "labels"
    _image(images / "good.png")
    _label(labels / "good.png")
    secret = _image(tmp_path / "elsewhere" / "secret.png", seed=1)
    os.symlink(secret, images / "link.png")  # an image entry that leads out of images/
    _image(images / "stolen.png", seed=2)
    os.symlink(_label(tmp_path / "elsewhere" / "stolen_label.png"), labels / "stolen.png")
    out = tmp_path / "out"
    summary = _run("--input", images, "--labels-dir", labels, "--output", out,
                   "--dataset", "folder", "--model-dir", model)
    results, dead = _rows(out, "results"), _rows(out, "dead_letter")
    assert set(results) == {"good.png"}
    assert set(dead) == {"link.png", "stolen.png"}
    assert dead["link.png"]["stage"] == "read"
    assert "outside" in dead["link.png"]["reason"] and "not opened" in dead["link.png"]["reason"]
    assert dead["stolen.png"]["stage"] == "ground_truth"
    assert "outside" in dead["stolen.png"]["reason"]
    assert summary["ok"] == 1 and summary["failed"] == 2
    assert sorted(p.name for p in (out / "latest" / "masks").iterdir()) == ["good.png"]


def test_beam_coco_file_name_outside_is_a_dead_letter(tmp_path, model):
    image_dir = tmp_path / "coco" / "val"
    _image(image_dir / "good.png")
    _image(tmp_path / "secret.png", seed=1)  # what ../../secret.png points at
    ann = {"categories": [{"id": 7, "name": "thing", "supercategory": "x"}],
           "images": [{"id": 1, "file_name": "good.png", "height": 24, "width": 32},
                      {"id": 2, "file_name": "../../secret.png", "height": 24, "width": 32},
                      {"id": 3, "file_name": "../../../../etc/passwd", "height": 1, "width": 1}],
           "annotations": [{"id": 1, "image_id": 1, "category_id": 7, "iscrowd": 0,
                            "area": 50.0, "bbox": [0, 0, 10, 10],
                            "segmentation": [[0, 0, 10, 0, 10, 10, 0, 10]]}]}
    ann_file = tmp_path / "instances.json"
    ann_file.write_text(json.dumps(ann))
    out = tmp_path / "out"
    summary = _run("--input", image_dir, "--annotations", ann_file, "--output", out,
                   "--dataset", "coco", "--model-dir", model)
    dead = _rows(out, "dead_letter")
    assert set(_rows(out, "results")) == {"good.png"}
    assert set(dead) == {"secret.png", "passwd"}
    for row in dead.values():
        assert row["stage"] == "read"
        assert "outside" in row["reason"] and str(ann_file) in row["reason"], row
    assert summary["ok"] == 1 and summary["failed_by_stage"] == {"read": 2}


def test_training_coco_file_name_outside_is_an_error(tmp_path):
    from model.data.coco import render_masks

    image_dir = tmp_path / "train2017"
    _image(image_dir / "good.png")
    _image(tmp_path / "secret.png", seed=1)
    ann = {"categories": [{"id": 7, "name": "thing", "supercategory": "x"}],
           "images": [{"id": 1, "file_name": "good.png", "height": 24, "width": 32},
                      {"id": 2, "file_name": "../secret.png", "height": 24, "width": 32}],
           "annotations": []}
    ann_file = tmp_path / "instances_train2017.json"
    ann_file.write_text(json.dumps(ann))
    with pytest.raises(OutsideRootError, match=r"instances_train2017\.json.*'\.\./secret\.png'"):
        render_masks(ann_file, image_dir, tmp_path / "cache", progress=False)
    assert not (tmp_path / "cache").exists()  # nothing rendered, nothing cached


def test_training_folder_entry_outside_is_an_error(tmp_path):
    from model.data.folder import list_pairs

    images, labels = tmp_path / "images", tmp_path / "labels"
    _image(images / "a.png")
    _label(labels / "a.png")
    os.symlink(_label(tmp_path / "elsewhere.png"), labels / "b.png")
    _image(images / "b.png")
    with pytest.raises(OutsideRootError, match=r"labels: label PNG entry 'b\.png' resolves outside"):
        list_pairs(images, labels)
    os.unlink(labels / "b.png")
    os.symlink(_image(tmp_path / "far.png"), images / "c.png")
    with pytest.raises(OutsideRootError, match=r"images: image entry 'c\.png' resolves outside"):
        list_pairs(images, labels, allow_unlabelled=True)
