import numpy as np
import pytest
from PIL import Image

from model import metrics, plots

COLOURS = [[0, 0, 0], [255, 0, 255], [0, 255, 0]]


def png_size(path):
    with Image.open(path) as img:
        assert img.format == "PNG"
        return img.size  # (width, height)


def test_colourise_maps_ids_and_ignore_to_black():
    ids = np.array([[0, 1], [2, 255]], np.uint8)
    rgb = plots.colourise(ids, COLOURS)
    assert rgb.dtype == np.uint8 and rgb.shape == (2, 2, 3)
    assert rgb[0, 1].tolist() == [255, 0, 255]
    assert rgb[1, 0].tolist() == [0, 255, 0]
    assert rgb[1, 1].tolist() == [0, 0, 0]
    with pytest.raises(ValueError, match="no colour"):
        plots.colourise(np.array([[3]], np.uint8), COLOURS)


def test_overlay_blends_and_keeps_ignored_pixels():
    image = np.full((2, 2, 3), 100, np.uint8)
    ids = np.array([[1, 2], [0, 255]], np.uint8)
    out = plots.overlay(image, ids, COLOURS, alpha=0.5)
    assert out.dtype == np.uint8
    assert out[0, 0].tolist() == [178, 50, 178]  # (100 + 255) / 2 rounds half to even
    assert out[0, 1].tolist() == [50, 178, 50]
    assert out[1, 0].tolist() == [50, 50, 50]
    assert out[1, 1].tolist() == [100, 100, 100]
    with pytest.raises(ValueError, match="differ in size"):
        plots.overlay(image, np.zeros((3, 2), np.uint8), COLOURS)


def test_save_overlay_has_image_size(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (48, 80, 3), dtype=np.uint8)
    ids = rng.integers(0, 3, (48, 80), dtype=np.uint8)
    plots.save_overlay(tmp_path / "a.png", image, ids, COLOURS)
    assert png_size(tmp_path / "a.png") == (80, 48)
    plots.save_overlay(tmp_path / "b.png", image, ids, COLOURS, ground_truth=ids)
    assert png_size(tmp_path / "b.png") == (80, 96)


def test_save_pr_curve(tmp_path):
    rng = np.random.default_rng(1)
    label = rng.integers(0, 2, (32, 32), dtype=np.uint8)
    prob = np.clip(label * 0.6 + rng.random((32, 32)) * 0.5, 0, 1)
    counts = metrics.road_counts(prob, label)
    empty = metrics.RoadCounts()  # no road at all: skipped, not an error
    plots.save_pr_curve(tmp_path / "pr.png", {"um": counts, "overall": counts + counts,
                                              "none": empty})
    assert png_size(tmp_path / "pr.png") == (700, 600)


# figsize (side + 1.2, side) inches at 100 dpi, side = min(max(5, 2.5 + 0.2 n), 22):
# n = 2: side 5; n = 21: side 6.7; n = 81: side 18.7
@pytest.mark.parametrize("n, size", [(2, (620, 500)), (21, (790, 670)), (81, (1990, 1870))])
def test_save_confusion_matrix_sizes(tmp_path, n, size):
    rng = np.random.default_rng(n)
    cm = rng.integers(0, 50, (n, n))
    cm[0] = 0  # a class absent from the ground truth
    names = [f"class_{i}" for i in range(n)]
    plots.save_confusion_matrix(tmp_path / "cm.png", cm, names)
    assert png_size(tmp_path / "cm.png") == size
    with pytest.raises(ValueError, match="class names"):
        plots.save_confusion_matrix(tmp_path / "bad.png", cm, names[:-1])


def test_save_training_curves(tmp_path):
    history = tmp_path / "history.csv"
    history.write_text("epoch,learning_rate,loss,mean_iou,val_loss,val_mean_iou\n"
                       "0,0.001,1.0,0.2,1.1,0.15\n1,0.001,0.8,0.3,0.9,0.25\n"
                       "2,0.0005,0.6,0.4,0.85,0.3\n")
    plots.save_training_curves(tmp_path / "curves.png", history)
    assert png_size(tmp_path / "curves.png") == (1350, 330)
    (tmp_path / "empty.csv").write_text("epoch,loss\n")
    with pytest.raises(ValueError, match="empty.csv"):
        plots.save_training_curves(tmp_path / "x.png", tmp_path / "empty.csv")
