"""Synthetic scenes, folder datasets and the load_dataset entry point."""
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from common.cli import UserError
from model.data import load_dataset, palette, random_split
from model.data import folder, synthetic
from model.data.image_io import read_image, read_label_png


def test_render_scene_shapes_and_labels():
    for i in range(20):
        image, label = synthetic.render_scene(np.random.default_rng(i), 96, 160)
        assert image.shape == (96, 160, 3) and image.dtype == np.uint8
        assert label.shape == (96, 160) and label.dtype == np.uint8
        assert set(np.unique(label)) <= {0, 1}
        road = label.mean()
        assert 0.02 < road < 0.6, road
        assert label[: int(0.3 * 96)].sum() == 0  # nothing above the horizon band is road
        assert image.std() > 10                  # not a flat image


def test_scene_deterministic_and_varied():
    a = synthetic.render_scene(np.random.default_rng([0, 5]), 64, 96)
    b = synthetic.render_scene(np.random.default_rng([0, 5]), 64, 96)
    c = synthetic.render_scene(np.random.default_rng([0, 6]), 64, 96)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])


def test_road_is_darker_grey_than_sky_on_average():
    # Road pixels look like asphalt: low saturation compared with the blue sky.
    sat_road, sat_sky = [], []
    for i in range(10):
        image, label = synthetic.render_scene(np.random.default_rng(i), 96, 160)
        f = image.astype(float)
        sat = f.max(axis=2) - f.min(axis=2)
        sat_road.append(sat[label == 1].mean())
        sat_sky.append(sat[:10].mean())
    assert np.mean(sat_road) < np.mean(sat_sky)


def test_generate_writes_reuses_and_is_deterministic(tmp_path):
    pairs = synthetic.generate(tmp_path / "a", 6, height=48, width=80, seed=1, progress=False)
    assert len(pairs) == 6
    for image, label in pairs:
        assert read_image(image).shape == (48, 80, 3)
        assert read_label_png(label).shape == (48, 80)
    again = synthetic.generate(tmp_path / "b", 6, height=48, width=80, seed=1, progress=False)
    for (i1, l1), (i2, l2) in zip(pairs, again):
        np.testing.assert_array_equal(read_image(i1), read_image(i2))
        np.testing.assert_array_equal(read_label_png(l1), read_label_png(l2))
    first = read_image(pairs[0][0])
    stamp = [(tmp_path / "a" / "images" / "scene_00000.png").stat().st_mtime_ns]
    synthetic.generate(tmp_path / "a", 6, height=48, width=80, seed=1, progress=False)
    assert (tmp_path / "a" / "images" / "scene_00000.png").stat().st_mtime_ns == stamp[0]
    # Other settings in the same folder: regenerated, never mixed with the old scenes.
    other = synthetic.generate(tmp_path / "a", 3, height=48, width=80, seed=2, progress=False)
    assert not np.array_equal(read_image(other[0][0]), first)
    assert len(list((tmp_path / "a" / "images").glob("*.png"))) == 3


def test_random_split():
    pairs = [(f"i{k}", f"l{k}") for k in range(10)]
    train, val = random_split(pairs, 0.3, seed=4)
    assert len(val) == 3 and len(train) == 7 and not set(train) & set(val)
    assert random_split(pairs[::-1], 0.3, seed=4) == (train, val)
    with pytest.raises(ValueError):
        random_split(pairs, 1.0)


def test_load_dataset_synthetic(tmp_path):
    data = load_dataset("synthetic", None, cache_dir=tmp_path, num_synthetic=10,
                        image_size=(32, 64), progress=False)
    assert data.label_format == "ids" and data.class_names == ["not road", "road"]
    assert len(data.train) == 8 and len(data.val) == 2
    assert read_image(data.train[0][0]).shape == (32, 64, 3)


def _folder_dataset(root, stems=("a", "b", "c", "d", "e"), classes=None):
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for k, s in enumerate(stems):
        Image.fromarray(np.full((8, 8, 3), 20 * k, np.uint8)).save(root / "images" / f"{s}.jpg")
        lab = np.zeros((8, 8), np.uint8)
        lab[:2] = k % 3
        lab[7] = 255
        Image.fromarray(lab).save(root / "labels" / f"{s}.png")
    if classes:
        (root / "classes.txt").write_text("\n".join(classes) + "\n")
    return root


def test_folder_pairs(tmp_path):
    root = _folder_dataset(tmp_path / "ds")
    pairs = folder.list_pairs(root / "images", root / "labels")
    assert [p[0].rsplit("/", 1)[1] for p in pairs] == ["a.jpg", "b.jpg", "c.jpg", "d.jpg", "e.jpg"]
    assert all(p[1].endswith(".png") for p in pairs)


def test_folder_unmatched_files_are_named(tmp_path):
    root = _folder_dataset(tmp_path / "ds")
    (root / "labels" / "c.png").unlink()
    with pytest.raises(ValueError, match=r"1 images have no label PNG.*c\.jpg"):
        folder.list_pairs(root / "images", root / "labels")
    assert len(folder.list_pairs(root / "images", root / "labels", allow_unlabelled=True)) == 4
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "labels" / "zz.png")
    with pytest.raises(ValueError, match=r"label files have no image.*zz\.png"):
        folder.list_pairs(root / "images", root / "labels", allow_unlabelled=True)


def test_folder_duplicate_stems_and_empty(tmp_path):
    root = _folder_dataset(tmp_path / "ds")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "images" / "a.png")
    with pytest.raises(ValueError, match=r"share the name 'a'"):
        folder.list_pairs(root / "images", root / "labels")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no image files"):
        folder.list_pairs(tmp_path / "empty", root / "labels")


def test_load_dataset_folder(tmp_path):
    root = _folder_dataset(tmp_path / "named", classes=["bg", "cat", "dog"])
    data = load_dataset("folder", root, val_fraction=0.2, seed=1, progress=False)
    assert data.class_names == ["bg", "cat", "dog"] and data.label_format == "ids"
    assert len(data.train) == 4 and len(data.val) == 1
    assert data.colours == palette(3)
    (root / "classes.txt").write_text("bg\ncat\n")
    with pytest.raises(ValueError, match=r"c\.png: class id 2, but .*classes\.txt names only 2 classes"):
        load_dataset("folder", root, progress=False)
    root = _folder_dataset(tmp_path / "unnamed")
    data = load_dataset("folder", root, progress=False)
    assert data.class_names == ["class_0", "class_1", "class_2"]  # max id 2, 255 ignored


def test_load_dataset_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("imagenet", tmp_path)
    with pytest.raises(UserError, match="needs a root"):
        load_dataset("kitti", None)
    with pytest.raises(UserError, match="nothing: folder dataset folder not found"):
        load_dataset("folder", tmp_path / "nothing")


def test_import_is_light():
    code = ("import sys, model.data; from model.data import kitti, coco, folder, synthetic; "
            "bad = [m for m in ('tensorflow', 'keras', 'pycocotools') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_synthetic_cli_writes_grid(tmp_path, capsys):
    assert synthetic.main(["--output", str(tmp_path / "s"), "--n", "3", "--height", "32",
                           "--width", "64", "--grid", str(tmp_path / "grid.png")]) == 0
    assert "3 scenes 32x64" in capsys.readouterr().out
    assert read_image(tmp_path / "grid.png").shape == (3 * 32, 2 * 64, 3)


def test_folder_palette_labels_become_plain_ids(tmp_path):
    root = _folder_dataset(tmp_path / "pal", stems=("a", "b"), classes=["bg", "x", "y"])
    ids = np.array([[0, 1], [2, 255]], np.uint8).repeat(4, 0).repeat(4, 1)
    pal = Image.fromarray(ids, mode="L").convert("P")
    pal.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [255, 255, 255] * 253)  # VOC-like colours
    pal.save(root / "labels" / "b.png")
    assert Image.open(root / "labels" / "b.png").mode == "P"
    data = load_dataset("folder", root, val_fraction=0.0, cache_dir=tmp_path / "cache",
                        progress=False)
    label_path = dict(data.train)[str(root / "images" / "b.jpg")]
    assert str(tmp_path / "cache") in label_path
    with Image.open(label_path) as im:
        assert im.mode == "L"
        np.testing.assert_array_equal(np.asarray(im), ids)
    assert str(root / "labels" / "a.png") in [lab for _, lab in data.train]  # L kept as is


def test_palette_is_the_voc_colour_map():
    colours = palette(21)
    assert colours[0] == (0, 0, 0) and colours[1] == (128, 0, 0) and colours[2] == (0, 128, 0)
    assert len(set(colours)) == 21
