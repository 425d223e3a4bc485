"""The dataset registry: a toy dataset registered in this test alone goes through training,
model.evaluate and the Beam job without any of them knowing its name.

Known by construction: every toy label has H x W pixels, row 0 ignored, rows 1..39 class 0
and the rest class 1, so every confusion matrix's row sums are those counts."""
from __future__ import annotations

import json
import pathlib
import posixpath

import numpy as np
import pytest
from PIL import Image

from model.data import Dataset, get_dataset, registry

H, W = 64, 128
NUM_IMAGES = 6
SKY_ROWS = 39            # rows 1..39: class 0; row 0: ignored
GROUND_ROWS = H - 1 - SKY_ROWS


class Toy(Dataset):
    """pics/<n>.png with truth/<n>_gt.png: names no built-in dataset uses."""
    name = "toy"
    default_image_size = (H, W)
    image_folders = ("pics",)

    def list_pairs(self, root, options):
        return sorted((str(p), str(root / "truth" / f"{p.stem}_gt.png"))
                      for p in (root / "pics").glob("*.png"))

    def class_names(self, root, options, pairs=None):
        return ["sky", "ground"]

    def ground_truth_path(self, image_path, task, labels_dir):
        stem = posixpath.splitext(posixpath.basename(image_path))[0]
        return posixpath.join(posixpath.dirname(posixpath.dirname(image_path)), "truth",
                              f"{stem}_gt.png")


@pytest.fixture
def toy(tmp_path):
    root = tmp_path / "toy"
    (root / "pics").mkdir(parents=True)
    (root / "truth").mkdir()
    rng = np.random.default_rng(0)
    for i in range(NUM_IMAGES):
        image = np.empty((H, W, 3), np.uint8)
        image[:1 + SKY_ROWS] = (90, 140, 230)
        image[1 + SKY_ROWS:] = (70, 70, 70)
        image = np.clip(image + rng.integers(-20, 20, image.shape), 0, 255).astype(np.uint8)
        label = np.zeros((H, W), np.uint8)
        label[0] = 255
        label[1 + SKY_ROWS:] = 1
        Image.fromarray(image).save(root / "pics" / f"{i:03d}.png")
        Image.fromarray(label).save(root / "truth" / f"{i:03d}_gt.png")
    registry.register(Toy())
    yield root
    registry.unregister("toy")


def _label_rows(images: int) -> list[int]:
    return [images * SKY_ROWS * W, images * GROUND_ROWS * W]


def test_registry_names_the_built_in_datasets():
    assert {"kitti", "coco", "folder", "synthetic"} <= set(registry.DATASETS)
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'"):
        get_dataset("imagenet")


def test_toy_dataset_trains_evaluates_and_runs_in_beam(toy, tmp_path):
    from beam_jobs import segment
    from export.savedmodel import export_saved_model
    from model import evaluate, runs, train

    run_dir = tmp_path / "run"
    metrics = train.run(["--dataset", "toy", "--data-root", str(toy), "--encoder-weights",
                         "none", "--fc-width", "16", "--batch-size", "2", "--epochs", "1",
                         "--steps-per-epoch", "1", "--val-fraction", "0.34",
                         "--eval-overlays", "0", "--progress", "0", "--run-dir", str(run_dir),
                         "--cache-dir", str(tmp_path / "cache")])
    config = runs.load_run_config(run_dir)
    assert config["dataset"] == "toy" and config["class_names"] == ["sky", "ground"]
    assert config["image_size"] == [H, W] and config["task"] is None
    split = runs.load_split(run_dir)
    listed = Toy().list_pairs(toy, None)
    assert sorted(map(tuple, split["train"] + split["val"])) == listed
    assert len(split["val"]) == 2  # round(6 * 0.34)
    assert metrics["split_size"] == 2
    assert [sum(row) for row in metrics["confusion_matrix"]] == _label_rows(2)

    scored = evaluate.run(["--checkpoint", str(runs.checkpoint_path(run_dir, "best")),
                           "--dataset", "toy", "--data-root", str(toy),
                           "--output", str(tmp_path / "eval")])
    assert scored["split_size"] == NUM_IMAGES and scored["dataset"] == "toy"
    assert [sum(row) for row in scored["confusion_matrix"]] == _label_rows(NUM_IMAGES)
    # a binary dataset without categories: road scores under "overall" only
    assert list(scored["kitti"]) == ["overall"]
    assert scored["kitti"]["overall"]["num_images"] == NUM_IMAGES

    version = export_saved_model(runs.load_checkpoint(runs.checkpoint_path(run_dir, "best")),
                                 config, tmp_path / "models", "toy", version=1)
    summary = segment.run(["--input", str(toy), "--output", str(tmp_path / "beam"),
                           "--dataset", "toy", "--mode", "inprocess",
                           "--model-dir", str(version)])
    assert (summary["ok"], summary["failed"]) == (NUM_IMAGES, 0)
    beam_metrics = summary["metrics"]
    assert beam_metrics["split_size"] == NUM_IMAGES
    assert [sum(row) for row in beam_metrics["confusion_matrix"]] == _label_rows(NUM_IMAGES)
    assert list(beam_metrics["kitti"]) == ["overall"]
    results = pathlib.Path(summary["run_dir"]).glob("results-*.jsonl")
    paths = sorted(json.loads(line)["path"] for f in results for line in f.read_text().splitlines())
    assert paths == [image for image, _ in listed]
