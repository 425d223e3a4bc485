"""The KITTI bird's-eye view (model.data.kitti_bev) against the devkit's definition.

Reference: devkit_road/python/BirdsEyeView.py of the KITTI road devkit (BevParams,
KittiCalibration.setup, BirdsEyeView.computeBEVLookUpTable / transformImage2BEV): a grid of
X in [-10, 10] m, Z in [6, 46] m at 0.05 m, 800 rows (far first) x 400 columns (left first),
cell centres in float32, road-to-image map = columns (X, Z, 1) of
P2 * R0_rect * inv(Tr_cam_to_road), a cell is in view when 1 <= u <= W and 1 <= v <= H and
takes pixel [int(v) - 1, int(u) - 1]; out of view is 0.

The expected values below are derived by hand for training/calib/um_000000.txt, without the
code under test: a road point p = (X, 0, Z) (X, Z the float32 cell centre) is taken to the
camera by solving Tr_cam_to_road [c; 1] = [p; 1], i.e. R c = p - t for Tr_cam_to_road = [R | t]
(the devkit inverts the matrix; R is orthonormal only to 1e-7 here, so R^T would be off by
1e-4 pixel); rectified, r = R0_rect c; projected, h = P2 [r; 1]; u = h0 / h2, v = h1 / h2.
"""
from __future__ import annotations

import pathlib

import numpy as np
import pytest
from PIL import Image

from model.data import kitti, kitti_bev

UM0_P2 = np.array([7.215377e+02, 0, 6.095593e+02, 4.485728e+01,
                   0, 7.215377e+02, 1.728540e+02, 2.163791e-01,
                   0, 0, 1, 2.745884e-03]).reshape(3, 4)


def _reference_uv(calib: dict, x, z):
    """Independent projection (solve per point, no 4x4 inverse, no homography)."""
    rot, t = calib["Tr_cam_to_road"][:, :3], calib["Tr_cam_to_road"][:, 3]
    road = np.stack([np.asarray(x, np.float64).ravel(), np.zeros(np.size(x)),
                     np.asarray(z, np.float64).ravel()])
    # R c = p - t is linear in (X, Z): solve it for the origin and the two axes, then combine
    origin = np.linalg.solve(rot, -t)
    axis_x = np.linalg.solve(rot, np.array([1.0, 0.0, 0.0]))
    axis_z = np.linalg.solve(rot, np.array([0.0, 0.0, 1.0]))
    cam = origin[:, None] + axis_x[:, None] * road[0] + axis_z[:, None] * road[2]
    rect = calib["R0_rect"] @ cam
    h = calib["P2"][:, :3] @ rect + calib["P2"][:, 3:4]
    return (h[0] / h[2]).reshape(np.shape(x)), (h[1] / h[2]).reshape(np.shape(x))


def _reference_table(calib, shape):
    """Per-cell forward projection written here from the devkit's definition: for each of the
    800 x 400 cells, the flat image index it takes (-1 out of view), and the cells whose
    projected centre lies within 1e-6 pixel of a pixel border, where float rounding may
    legitimately go either way."""
    h, w = shape
    x = (-10.0 + 0.025 + 0.05 * np.arange(400)).astype(np.float32)
    z = (46.0 - 0.025 - 0.05 * np.arange(800)).astype(np.float32)
    xx, zz = np.meshgrid(x, z)
    u, v = _reference_uv(calib, xx, zz)
    inside = (u >= 1) & (u <= w) & (v >= 1) & (v <= h)
    index = np.full((800, 400), -1, np.int64)
    index[inside] = (np.floor(v[inside]).astype(int) - 1) * w + np.floor(u[inside]).astype(int) - 1
    near = lambda a: np.abs(a - np.round(a)) < 1e-6  # noqa: E731
    return index, near(u) | near(v)


@pytest.fixture(scope="module")
def um0_calib(kitti_root):
    return kitti.read_calib(kitti_root / "training" / "calib" / "um_000000.txt")


def test_grid_is_the_devkits():
    assert kitti_bev.BEV_SHAPE == (800, 400)
    x, z = kitti_bev.cell_centres()
    assert x.dtype == np.float32 and z.dtype == np.float32
    assert x[0] == np.float32(-9.975) and x[-1] == pytest.approx(9.975, abs=1e-5)
    assert z[0] == np.float32(45.975) and z[-1] == pytest.approx(6.025, abs=1e-5)
    assert np.all(np.diff(z) < 0) and np.all(np.diff(x) > 0)  # far first, left first


def test_calibration_is_read_as_written(um0_calib):
    np.testing.assert_array_equal(um0_calib["P2"], UM0_P2)


@pytest.mark.parametrize("col,row,u,v", [
    # (X, Z) = (0.025, 20.025) m: camera (0.17242, 1.81560, 19.72650), 1.8 m above the road
    (200, 519, 613.3337817816, 236.0611614212),
    # (X, Z) = (-4.975, 30.025) m: left of the car, further away
    (100, 319, 490.8054804318, 218.2985689306),
    # (X, Z) = (-9.975, 45.975) m: the far left corner of the grid
    (0, 0, 453.3536065864, 205.3383116453),
    # (X, Z) = (2.525, 10.875) m and (5.025, 13.475) m: fractions above .5, so truncation
    # (pixel [282, 785], [259, 887]) and rounding would differ
    (250, 702, 786.8362813089, 283.8796088413),
    (300, 650, 888.6820019551, 260.8492755902),
    # (X, Z) = (0.025, 6.025) m: below the image's bottom edge (v > 375)
    (200, 799, 622.2302264112, 378.4422870273),
    # (X, Z) = (9.975, 6.025) m: right of the image (u > 1242)
    (399, 799, 1873.4274448518, 359.2658402805),
])
def test_hand_derived_points(um0_calib, col, row, u, v):
    x, z = kitti_bev.cell_centres()
    got_u, got_v = kitti_bev.project(kitti_bev.road_homography(um0_calib), x[col], z[row])
    assert float(got_u) == pytest.approx(u, abs=1e-7)
    assert float(got_v) == pytest.approx(v, abs=1e-7)
    # Which pixel the cell takes: an image whose values are their own flat index.
    height, width = 375, 1242
    index_image = np.arange(height * width, dtype=np.int64).reshape(height, width)
    table = kitti_bev.lookup(um0_calib, (height, width))
    bev = kitti_bev.to_bev(index_image, table, fill=-1)
    inside = 1 <= u <= width and 1 <= v <= height
    expected = (int(v) - 1) * width + (int(u) - 1) if inside else -1
    assert bev[row, col] == expected


def test_perspective_road_region_maps_onto_its_bev_region(um0_calib):
    """A road patch X in [-2, 3] m, Z in [10, 30] m drawn in the image (each pixel back-
    projected onto the road plane by the reference) comes out as that patch in BEV."""
    height, width = 375, 1242
    table = kitti_bev.lookup(um0_calib, (height, width))
    # Back-project pixel centres (devkit convention: pixel [r, c] covers u in [c+1, c+2)).
    # The reference projection is h = A [X, Z, 1] for a 3x3 A (affine, then P2): read A off
    # from three road points and invert it; a pixel sees the road ahead when p[2] > 0.
    def h_of(x, z):
        u, v = _reference_uv(um0_calib, np.array([x]), np.array([z]))
        rot, t = um0_calib["Tr_cam_to_road"][:, :3], um0_calib["Tr_cam_to_road"][:, 3]
        depth = (um0_calib["P2"] @ np.append(um0_calib["R0_rect"] @ (rot.T @ (np.array([x, 0, z]) - t)), 1))[2]
        return np.array([u[0] * depth, v[0] * depth, depth])
    origin = h_of(0.0, 0.0)
    a = np.stack([h_of(1.0, 0.0) - origin, h_of(0.0, 1.0) - origin, origin], axis=1)
    vv, uu = np.mgrid[0:height, 0:width]
    p = np.linalg.inv(a) @ np.stack([uu.ravel() + 1.5, vv.ravel() + 1.5, np.ones(uu.size)])
    ground_x = (p[0] / p[2]).reshape(uu.shape)
    ground_z = (p[1] / p[2]).reshape(uu.shape)
    below_horizon = (p[2] > 0).reshape(uu.shape)
    road = (below_horizon & (ground_x >= -2) & (ground_x <= 3)
            & (ground_z >= 10) & (ground_z <= 30)).astype(np.uint8)
    assert road.sum() > 10_000

    bev = kitti_bev.confidence_to_bev(road * 255, table)
    x, z = kitti_bev.cell_centres()
    xx, zz = np.meshgrid(x, z)
    # A cell is one BEV cell (5 cm) but a far pixel spans several cells: keep a margin of
    # one pixel's footprint (about 0.2 m across and 1 m deep at 30 m).
    inner = (xx > -1.8) & (xx < 2.8) & (zz > 11) & (zz < 29)
    outer = (xx < -2.3) | (xx > 3.3) | (zz < 9.5) | (zz > 31.5)
    assert (bev[inner] == 255).all()
    assert (bev[outer & table.valid] == 0).all()
    # and the patch sits where the grid says: rows of Z 10..30 m, columns of X -2..3 m
    rows = np.flatnonzero((bev == 255).any(axis=1))
    cols = np.flatnonzero((bev == 255).any(axis=0))
    assert 45.975 - 0.05 * rows.max() == pytest.approx(10, abs=0.3)
    assert 45.975 - 0.05 * rows.min() == pytest.approx(30, abs=1.2)
    assert -9.975 + 0.05 * cols.min() == pytest.approx(-2, abs=0.3)
    assert -9.975 + 0.05 * cols.max() == pytest.approx(3, abs=0.3)


def test_bev_of_every_training_ground_truth(kitti_root):
    """All road and lane files: the BEV of the decoded labels equals the devkit route
    (transform the colour PNG with black outside, then decode) and the reference projection,
    and every ground truth keeps road in view."""
    training = kitti_root / "training"
    gt_files = sorted((training / "gt_image_2").glob("*.png"))
    assert len(gt_files) == 136 + 45
    tables = {}
    for path in gt_files:
        category, _task, number = path.stem.split("_")
        calib_path = training / "calib" / f"{category}_{number}.txt"
        rgb = np.asarray(Image.open(path).convert("RGB"))
        label = kitti.decode_gt(rgb)
        key = (calib_path, label.shape)
        if key not in tables:  # um road and lane files share a calibration
            tables[key] = (kitti_bev.lookup_for_file(calib_path, label.shape),
                           *_reference_table(kitti.read_calib(calib_path), label.shape))
        table, ref_index, ambiguous = tables[key]
        bev = kitti_bev.label_to_bev(label, table)
        assert bev.shape == (800, 400) and bev.dtype == np.uint8
        # the devkit transforms the colour image (out of view = black = not evaluated)
        devkit_route = kitti.decode_gt(kitti_bev.to_bev(rgb, table, fill=0))
        np.testing.assert_array_equal(bev, devkit_route, err_msg=str(path))
        reference = np.where(ref_index >= 0, label.ravel()[np.maximum(ref_index, 0)], 255)
        differ = bev != reference
        assert not (differ & ~ambiguous).any(), f"{path}: {int(differ.sum())} cells differ"
        assert (bev == 1).sum() > 1000, f"{path}: no road in view"
        assert set(np.unique(bev)) <= {0, 1, 255}


def test_read_calib_needs_cam_to_road_not_velo(tmp_path, kitti_root):
    text = (kitti_root / "training" / "calib" / "um_000000.txt").read_text().splitlines()
    no_velo = tmp_path / "um_000000.txt"
    no_velo.write_text("\n".join(ln for ln in text if not ln.startswith("Tr_velo_to_cam")))
    calib = kitti.read_calib(no_velo)
    assert "Tr_velo_to_cam" not in calib
    kitti_bev.lookup(calib, (375, 1242))
    no_road = tmp_path / "uu_000001.txt"
    no_road.write_text("\n".join(ln for ln in text if not ln.startswith("Tr_cam_to_road")))
    with pytest.raises(ValueError, match=r"uu_000001\.txt: calibration lacks Tr_cam_to_road"):
        kitti.read_calib(no_road)


def test_to_bev_checks_the_image_size(um0_calib):
    table = kitti_bev.lookup(um0_calib, (375, 1242))
    with pytest.raises(ValueError, match="1241x376"):
        kitti_bev.to_bev(np.zeros((376, 1241), np.uint8), table, 0)


def test_calib_path_for(kitti_root):
    image = kitti_root / "training" / "image_2" / "umm_000012.png"
    assert kitti.calib_path_for(image) == kitti_root / "training" / "calib" / "umm_000012.txt"
    assert isinstance(kitti.calib_path_for(image), pathlib.Path)


def _devkit_style_predictor(seed=0):
    """Road probabilities k / 255 (exact after quantisation) made from the ground truth plus
    noise: non-trivial scores, and the reference can use the integers k directly."""
    rng = np.random.default_rng(seed)

    def predict(images, labels):
        out = []
        for image, label in zip(images, labels):
            k = np.clip(np.where(label == 1, 150, 60) + rng.integers(-90, 90, label.shape),
                        0, 255)
            road = (k / 255.0).astype(np.float32)
            out.append(np.stack([1 - road, road], axis=-1))
        return out, None
    return predict


def _three_pairs(kitti_root):
    training = kitti_root / "training"
    names = ("um_000000", "umm_000000", "uu_000004")
    return [(training / "image_2" / f"{n}.png",
             training / "gt_image_2" / f"{n.replace('_', '_road_')}.png") for n in names]


def test_evaluate_scores_the_birds_eye_view(kitti_root, tmp_path):
    from model import evaluate, metrics

    pairs = _three_pairs(kitti_root)
    labels = {str(image): kitti.read_gt(gt) for image, gt in pairs}
    make = _devkit_style_predictor()
    made = {}

    def predictor(images):
        # evaluate_pairs reads images in pair order; hand back the matching probabilities
        keys = list(labels)[len(made):len(made) + len(images)]
        probs, _ = make(images, [labels[k] for k in keys])
        made.update(zip(keys, probs))
        return probs

    config = {"dataset": "kitti", "class_names": ["not road", "road"], "label_format": "kitti", "task": "road",
              "image_size": [64, 192]}
    result = evaluate.evaluate_pairs(predictor, config, pairs, tmp_path / "eval", overlays=0,
                                     batch_size=1)
    assert result["task"] == "road"
    assert set(result["kitti_bev"]) == {"um", "umm", "uu", "overall"}
    assert (tmp_path / "eval" / "pr_curve_bev.png").is_file()
    total = metrics.RoadCounts()
    for image, gt in pairs:
        label = labels[str(image)]
        calib = kitti.read_calib(kitti_root / "training" / "calib" / f"{image.stem}.txt")
        index, _ = _reference_table(calib, label.shape)
        k = np.rint(made[str(image)][..., 1] * 255).astype(np.uint8)
        bev_k = np.where(index >= 0, k.ravel()[np.maximum(index, 0)], 0).astype(np.uint8)
        bev_gt = np.where(index >= 0, label.ravel()[np.maximum(index, 0)], 255).astype(np.uint8)
        counts = metrics.road_counts(bev_k, bev_gt)
        total = total + counts
        expected = metrics.kitti_scores(counts)
        for key in ("MaxF", "AP", "PRE", "REC", "FPR", "FNR"):
            assert result["kitti_bev"][kitti.category_of(image)][key] == pytest.approx(expected[key])
    expected = metrics.kitti_scores(total)
    for key in ("MaxF", "AP", "PRE", "REC", "FPR", "FNR"):
        assert result["kitti_bev"]["overall"][key] == pytest.approx(expected[key])
    # BEV and perspective differ: BEV weights far pixels up (one pixel covers many cells)
    assert result["kitti_bev"]["overall"]["MaxF"] != pytest.approx(result["kitti"]["overall"]["MaxF"])
    text = evaluate.format_summary(result)
    assert "perspective view" in text and "bird's-eye view" in text


def test_evaluate_without_calibration_stops_before_work(kitti_root, tmp_path):
    import shutil

    from model import evaluate

    root = tmp_path / "data_road" / "training"
    (root / "image_2").mkdir(parents=True)
    (root / "gt_image_2").mkdir()
    (root / "calib").mkdir()
    pairs = []
    for image, gt in _three_pairs(kitti_root):
        shutil.copy(image, root / "image_2")
        shutil.copy(gt, root / "gt_image_2")
        if not image.name.startswith("umm"):
            shutil.copy(kitti_root / "training" / "calib" / f"{image.stem}.txt", root / "calib")
        pairs.append((root / "image_2" / image.name, root / "gt_image_2" / gt.name))
    config = {"dataset": "kitti", "class_names": ["not road", "road"], "label_format": "kitti",
              "image_size": [64, 192]}
    calls = []
    with pytest.raises(FileNotFoundError, match=r"calib/umm_000000\.txt"):
        evaluate.evaluate_pairs(lambda images: calls.append(1), config, pairs, tmp_path / "e")
    assert not calls  # nothing was run
    predictor = _devkit_style_predictor()
    labels = [kitti.read_gt(gt) for _, gt in pairs]
    it = iter(labels)
    result = evaluate.evaluate_pairs(
        lambda images: predictor(images, [next(it) for _ in images])[0], config, pairs,
        tmp_path / "e", overlays=0, bev=False)
    assert "kitti_bev" not in result and "kitti" in result


def test_client_writes_birds_eye_view_submission(kitti_root, tmp_path, capsys):
    """serving.client's submission writer: BEV maps named as the benchmark wants, made with
    each image's calibration (checked against the reference table), one image without its
    calibration reported by name while the others go on, and the flat zip."""
    import argparse
    import io
    import shutil
    import zipfile

    from serving import client

    rng = np.random.default_rng(3)
    out = tmp_path / "out"
    writer = client.KittiSubmission(out, "road", None)
    notes = {}
    images = [kitti_root / "training" / "image_2" / n for n in ("um_000000.png", "uu_000004.png")]
    lost = tmp_path / "copy" / "image_2" / "umm_000000.png"  # no calib/ beside it
    lost.parent.mkdir(parents=True)
    shutil.copy(kitti_root / "training" / "image_2" / "umm_000000.png", lost)
    confidences = {}
    for path in images + [lost]:
        h, w = np.asarray(Image.open(path)).shape[:2]
        confidences[path] = rng.integers(0, 256, (h, w), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(confidences[path]).save(buf, format="PNG")
        notes[path] = writer.add(path, buf.getvalue())
    assert writer.failed == 1 and notes[lost] == ""
    assert "copy/calib/umm_000000.txt" in capsys.readouterr().err
    for path in images:
        name = path.name.replace("_", "_road_")
        bev = np.asarray(Image.open(out / "kitti_submission" / name))
        index, _ = _reference_table(kitti.read_calib(kitti.calib_path_for(path)),
                                    confidences[path].shape)
        expected = np.where(index >= 0, confidences[path].ravel()[np.maximum(index, 0)], 0)
        np.testing.assert_array_equal(bev, expected)
        np.testing.assert_array_equal(np.asarray(Image.open(out / "confidence" / name)),
                                      confidences[path])
    with zipfile.ZipFile(writer.write_zip()) as archive:
        assert sorted(archive.namelist()) == ["um_road_000000.png", "uu_road_000004.png"]
    # a lane model's metadata refuses road maps
    from contract import layout
    from contract.records import ExportMetadata, RecordError

    version = tmp_path / "lane_model" / "1"  # an export's version folder, metadata only
    version.mkdir(parents=True)
    (version / layout.SAVED_MODEL_FILE).write_bytes(b"")
    ExportMetadata(model_name="lane_model", version=1, class_names=["not lane", "lane"],
                   image_size=[64, 128], dataset="kitti", task="lane").write(
        version / layout.METADATA_PATH)
    with pytest.raises(RecordError, match="trained for the KITTI 'lane' task, not 'road'"):
        client._submission_task(argparse.Namespace(model_dir=str(version.parent), task="road"))
    assert client._submission_task(argparse.Namespace(model_dir=str(version.parent),
                                                      task=None)) == "lane"
    lane = client.KittiSubmission(tmp_path / "lane", "lane", None)
    assert lane.add(images[1], b"") == "" and lane.failed == 1  # uu has no lane task
