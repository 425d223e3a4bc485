import json
import pathlib

import numpy as np
import pytest
from PIL import Image

from model import evaluate, metrics
from model.data import image_io

KITTI_CONFIG = {
    "dataset": "kitti", "task": "road", "categories": ["um", "umm", "uu"],
    "class_names": ["non-road", "road"], "colours": [[0, 0, 0], [255, 0, 255]],
    "label_format": "kitti", "image_size": [64, 192], "normalization": "caffe",
    "fc_width": 16, "num_classes": 2, "encoder_weights": None, "seed": 0,
}


def save_tiny_checkpoint(run_dir, num_classes, image_size):
    """A tiny FCN with random score layers (tests/tiny_models.py) as checkpoints/best.keras."""
    from tests.tiny_models import tiny_fcn

    model = tiny_fcn(num_classes, image_size, seed=0)
    path = run_dir / "checkpoints" / "best.keras"
    path.parent.mkdir(parents=True)
    model.save(path)
    return path


@pytest.fixture(scope="module")
def kitti_run(tmp_path_factory, kitti_root):
    """A hand-made run dir: config, split over 3 real KITTI images (one per category)."""
    run_dir = tmp_path_factory.mktemp("kitti_run")
    training = kitti_root / "training"
    val = []
    for cat in ("um", "umm", "uu"):
        image = sorted((training / "image_2").glob(f"{cat}_0*.png"))[0]
        number = image.stem.split("_")[1]
        val.append([f"training/image_2/{image.name}",
                    f"training/gt_image_2/{cat}_road_{number}.png"])
    (run_dir / "config.json").write_text(json.dumps({**KITTI_CONFIG, "data_root": str(kitti_root)}))
    (run_dir / "split.json").write_text(json.dumps({"train": val[:1], "val": val}))
    checkpoint = save_tiny_checkpoint(run_dir, 2, KITTI_CONFIG["image_size"])
    return run_dir, checkpoint


def test_evaluate_checkpoint_on_kitti(kitti_run, tmp_path, capsys):
    run_dir, checkpoint = kitti_run
    result = evaluate.run(["--checkpoint", str(checkpoint), "--overlays", "--batch-size", "2"])
    out = run_dir / "eval_val"
    written = json.loads((out / "metrics.json").read_text())
    assert written == result
    assert set(written["kitti"]) == {"um", "umm", "uu", "overall"}
    for name, scores in written["kitti"].items():
        assert set(scores) >= {"MaxF", "AP", "PRE", "REC", "FPR", "FNR", "threshold", "IoU",
                               "num_images"}
        assert scores["num_images"] == (3 if name == "overall" else 1)
    assert set(written) >= {"mean_iou", "pixel_accuracy", "per_class_iou", "confusion_matrix"}
    # The devkit scores the pixels whose ground truth has red > 0; counted here from the
    # PNGs themselves, they are every pixel of the confusion matrix.
    split = json.loads((run_dir / "split.json").read_text())
    root = pathlib.Path(json.loads((run_dir / "config.json").read_text())["data_root"])
    valid = sum(int((np.asarray(Image.open(root / gt))[..., 0] > 0).sum())
                for _, gt in split["val"])
    assert np.array(written["confusion_matrix"]).sum() == valid
    with Image.open(out / "pr_curve.png") as figure:  # figsize 7 x 6 inches at 100 dpi
        assert (figure.format, figure.size) == ("PNG", (700, 600))
    overlays = sorted((out / "overlays").glob("*.png"))
    every = [pathlib.Path(image).name for image, _ in split["val"]]
    assert [p.name for p in overlays] == sorted(every)
    # Overlays are at original resolution, prediction stacked above ground truth.
    config = json.loads((run_dir / "config.json").read_text())
    image = image_io.read_image(pathlib.Path(config["data_root"]) / split["val"][0][0])
    overlay = image_io.read_image(overlays[0])
    assert overlay.shape == (2 * image.shape[0], image.shape[1], 3)
    assert "overall" in capsys.readouterr().out


def test_kitti_scores_are_pooled_devkit_scores(kitti_run, tmp_path):
    """The overall entry equals kitti_scores of summed per-image counts at original size."""
    run_dir, checkpoint = kitti_run
    from model import inference, runs
    from model.data import kitti

    config = runs.load_run_config(run_dir)
    pairs = evaluate.resolve_pairs(runs.load_split(run_dir)["val"], config)
    model = runs.load_checkpoint(checkpoint)
    images = [image_io.read_image(p) for p, _ in pairs]
    probs = inference.predict_probabilities(model, images, config["image_size"])
    assert [p.shape for p in probs] == [(*img.shape[:2], 2) for img in images]
    np.testing.assert_allclose(probs[0].sum(axis=-1), 1.0, atol=1e-4)
    total = sum(metrics.road_counts(p[..., 1], kitti.read_gt(gt))
                for p, (_, gt) in zip(probs, pairs))
    result = evaluate.evaluate_pairs(model, config, pairs, tmp_path, overlays=0)
    expected = metrics.kitti_scores(total)
    for key, value in expected.items():
        assert result["kitti"]["overall"][key] == pytest.approx(value)
    assert result["kitti"]["overall"]["IoU"] == pytest.approx(metrics.road_iou(total))
    assert not (tmp_path / "overlays").exists()


def test_evaluate_ids_labels_with_moved_data_root(tmp_path):
    """A folder-style run (ids labels, relative split paths) evaluated with --data-root."""
    rng = np.random.default_rng(0)
    data = tmp_path / "data"
    val = []
    for i, (h, w) in enumerate([(64, 64), (80, 96), (64, 64)]):
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        label = rng.integers(0, 3, (h, w), dtype=np.uint8)
        label[:4] = 255
        image_io.write_png(data / "images" / f"img{i}.png", image)
        image_io.write_png(data / "labels" / f"img{i}.png", label)
        val.append([f"images/img{i}.png", f"labels/img{i}.png"])
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    config = {"dataset": "folder", "data_root": "/somewhere/else", "class_names": ["bg", "a", "b"],
              "colours": [[0, 0, 0], [255, 0, 0], [0, 255, 0]], "label_format": "ids",
              "image_size": [64, 64], "num_classes": 3, "fc_width": 16}
    (run_dir / "config.json").write_text(json.dumps(config))
    (run_dir / "split.json").write_text(json.dumps({"train": val, "val": val}))
    checkpoint = save_tiny_checkpoint(run_dir, 3, (64, 64))
    out = tmp_path / "eval"
    result = evaluate.run(["--checkpoint", str(checkpoint), "--data-root", str(data),
                           "--output", str(out), "--overlays", "--split", "train"])
    assert "kitti" not in result
    assert set(result["per_class_iou"]) == {"bg", "a", "b"}
    cm = np.array(result["confusion_matrix"])
    # The 4 ignored rows of each label are excluded; rows hold the labels' own counts.
    assert cm.sum() == sum((h - 4) * w for h, w in [(64, 64), (80, 96), (64, 64)])
    labels = [np.asarray(Image.open(data / "labels" / f"img{i}.png")) for i in range(3)]
    assert cm.sum(axis=1).tolist() == [sum(int((lab == c).sum()) for lab in labels)
                                       for c in range(3)]
    assert result["pixel_accuracy"] == pytest.approx(np.trace(cm) / cm.sum())
    with Image.open(out / "confusion_matrix.png") as figure:  # 3 classes: 6.2 x 5 inches
        assert (figure.format, figure.size) == ("PNG", (620, 500))
    assert len(list((out / "overlays").glob("*.png"))) == 3


def test_missing_split_file_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "checkpoints").mkdir()
    assert evaluate.main(["--checkpoint", str(tmp_path / "checkpoints" / "best.keras")]) == 2
    assert capsys.readouterr().err == (f"error: {tmp_path / 'config.json'}: not found (is this "
                                       f"a run directory of model.train?)\n")


def test_saved_model_evaluation(kitti_run, tmp_path):
    from export import savedmodel  # pinned dependencies: a broken import fails, never skips

    run_dir, checkpoint = kitti_run
    from model import runs

    version_dir = savedmodel.export_saved_model(
        runs.load_checkpoint(checkpoint), runs.load_run_config(run_dir), tmp_path / "models",
        "fcn8s", version=1, run_dir=run_dir)
    # The run directory comes from the SavedModel's metadata.
    result = evaluate.run(["--model-dir", str(version_dir), "--output", str(tmp_path / "eval")])
    assert result["saved_model"] == str(version_dir)
    reference = evaluate.run(["--checkpoint", str(checkpoint), "--output", str(tmp_path / "ref")])
    # Same network, same resizing: the devkit scores agree closely.
    assert result["kitti"]["overall"]["MaxF"] == pytest.approx(
        reference["kitti"]["overall"]["MaxF"], abs=0.01)
