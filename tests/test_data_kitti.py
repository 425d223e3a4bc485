"""model.data.kitti on the real KITTI road samples and on small generated layouts."""
import pathlib

import numpy as np
import pytest
from PIL import Image

from model.data import kitti, load_dataset
from model.data.image_io import ImageReadError


def _devkit_reference(rgb) -> np.ndarray:
    """Independent decoding: raw RGB values with numpy, the devkit's rule spelled out."""
    road = rgb[:, :, 2] > 0          # devkit: BGR channel 0 (blue) > 0
    valid = rgb[:, :, 0] > 0         # devkit: BGR channel 2 (red) > 0
    return np.where(valid, road.astype(np.uint8), np.uint8(255))


def _images_by_category(kitti_root, split="training"):
    """Counts from the folder itself (the sample grows: 36 images once, 136 now)."""
    names = [p.name for p in (kitti_root / split / "image_2").glob("*.png")]
    return {cat: sum(n.startswith(f"{cat}_") for n in names) for cat in ("um", "umm", "uu")}


def test_decode_gt_matches_devkit_on_all_samples(kitti_root):
    counts = _images_by_category(kitti_root)
    gt_files = sorted((kitti_root / "training" / "gt_image_2").glob("*.png"))
    # road for every image, lane for every um image
    assert len(gt_files) == sum(counts.values()) + counts["um"]
    blue_only_total = 0
    for path in gt_files:
        label = kitti.read_gt(path)
        rgb = np.asarray(Image.open(path).convert("RGB"))
        ref = _devkit_reference(rgb)
        assert label.dtype == np.uint8 and label.shape == ref.shape
        np.testing.assert_array_equal(label, ref, err_msg=str(path))
        black = (rgb == 0).all(axis=2)
        assert (label[black] == 255).all()                           # don't care
        assert (label[(rgb == [255, 0, 255]).all(axis=2)] == 1).all()  # road
        assert (label[(rgb == [255, 0, 0]).all(axis=2)] == 0).all()    # non-road
        blue_only = (rgb[..., 2] > 0) & (rgb[..., 0] == 0)
        assert (label[blue_only] == 255).all()  # road outside the evaluated area
        blue_only_total += int(blue_only.sum())
        assert set(np.unique(label)) <= {0, 1, 255}
    # The samples hold pure-blue pixels (data README: 10 of the road files): the rule above
    # is exercised.
    assert blue_only_total > 0


def test_decode_gt_synthetic_colours():
    rgb = np.array([[[255, 0, 255], [255, 0, 0], [0, 0, 0], [0, 0, 255], [200, 10, 1]]], np.uint8)
    np.testing.assert_array_equal(kitti.decode_gt(rgb), [[1, 0, 255, 255, 1]])
    with pytest.raises(ValueError, match="RGB"):
        kitti.decode_gt(np.zeros((4, 4), np.uint8))


def test_pairs_road_lane_testing(kitti_root):
    counts = _images_by_category(kitti_root)
    road = kitti.list_pairs(kitti_root)
    assert len(road) == sum(counts.values())
    for image, gt in road:
        assert pathlib.Path(gt).name == pathlib.Path(image).name.replace("_", "_road_", 1)
        assert kitti.category_of(image) == kitti.category_of(gt)
        assert kitti.gt_path_for(image) == gt
    assert {kitti.category_of(i) for i, _ in road} == {"um", "umm", "uu"}
    lane = kitti.list_pairs(kitti_root, task="lane")
    assert len(lane) == counts["um"]
    assert all(pathlib.Path(g).name.startswith("um_lane_") for _, g in lane)
    testing = kitti.list_pairs(kitti_root, split="testing")
    assert len(testing) == sum(_images_by_category(kitti_root, "testing").values())
    assert all(g is None for _, g in testing)
    assert kitti.gt_path_for(testing[0][0]) is None


def test_category_of():
    assert kitti.category_of("a/b/umm_000012.png") == "umm"
    assert kitti.category_of("uu_road_000001.png") == "uu"
    assert kitti.category_of("um_lane_000001.png") == "um"
    with pytest.raises(ValueError, match="not a KITTI"):
        kitti.category_of("cat.png")


def test_stratified_split_deterministic(kitti_root):
    pairs = kitti.list_pairs(kitti_root)
    train, val = kitti.stratified_split(pairs, 0.25, seed=3)
    # Stratified: a quarter of each category, rounded (45, 45, 46 -> 11, 11, 12 here).
    expected = {cat: round(n * 0.25) for cat, n in _images_by_category(kitti_root).items()}
    assert len(val) == sum(expected.values()) and len(train) == len(pairs) - len(val)
    assert not set(train) & set(val)
    cats = [kitti.category_of(i) for i, _ in val]
    assert {cat: cats.count(cat) for cat in expected} == expected
    assert kitti.stratified_split(list(reversed(pairs)), 0.25, seed=3) == (train, val)
    other = [kitti.stratified_split(pairs, 0.25, seed=s)[1] for s in range(4, 8)]
    assert any(o != val for o in other)  # the seed matters


def test_read_calib(kitti_root):
    calib = kitti.read_calib(kitti_root / "training" / "calib" / "um_000006.txt")
    assert calib["P2"].shape == (3, 4) and calib["R0_rect"].shape == (3, 3)
    assert calib["Tr_velo_to_cam"].shape == (3, 4) and calib["Tr_cam_to_road"].shape == (3, 4)
    assert calib["P2"][0, 0] == pytest.approx(721.5377)


def test_read_calib_bad(tmp_path):
    (tmp_path / "c.txt").write_text("P2: 1 2 3\n")
    with pytest.raises(ValueError, match=r"c\.txt:1"):
        kitti.read_calib(tmp_path / "c.txt")


def _layout(tmp_path, names=("um_000001", "umm_000002", "uu_000003")):
    root = tmp_path / "data_road"
    (root / "training" / "image_2").mkdir(parents=True)
    (root / "training" / "gt_image_2").mkdir()
    gt = np.zeros((4, 6, 3), np.uint8)
    gt[2:, :, 0] = 255
    gt[3:, :, 2] = 255
    for n in names:
        Image.fromarray(np.full((4, 6, 3), 90, np.uint8)).save(root / "training" / "image_2" / f"{n}.png")
        cat, num = n.split("_")
        Image.fromarray(gt).save(root / "training" / "gt_image_2" / f"{cat}_road_{num}.png")
    return root


def test_missing_gt_is_clear_error(tmp_path):
    root = _layout(tmp_path)
    (root / "training" / "gt_image_2" / "umm_road_000002.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"umm_road_000002\.png"):
        kitti.list_pairs(root)
    with pytest.raises(FileNotFoundError, match=r"no um_ images|um_lane_000001\.png"):
        kitti.list_pairs(root, task="lane")


def test_corrupt_gt_names_file(tmp_path):
    root = _layout(tmp_path)
    bad = root / "training" / "gt_image_2" / "uu_road_000003.png"
    bad.write_bytes(bad.read_bytes()[:30])
    with pytest.raises(ImageReadError, match=r"uu_road_000003\.png"):
        kitti.read_gt(bad)
    label = kitti.read_gt(root / "training" / "gt_image_2" / "um_road_000001.png")
    np.testing.assert_array_equal(label[:, 0], [255, 255, 0, 1])


def test_missing_root_is_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="image_2"):
        kitti.list_pairs(tmp_path)


def test_load_dataset_kitti(kitti_root):
    data = load_dataset("kitti", kitti_root, val_fraction=0.2, seed=0)
    assert data.label_format == "kitti" and data.class_names == ["not road", "road"]
    counts = _images_by_category(kitti_root)
    assert len(data.train) + len(data.val) == sum(counts.values())
    assert len(data.val) == sum(round(n * 0.2) for n in counts.values())
    assert data.colours[1] == (255, 0, 255)
