"""The Beam batch job end to end on DirectRunner: synthetic images with bad files mixed in,
the real KITTI/COCO samples, both inference modes, dead letters, evaluation."""
from __future__ import annotations

import io
import json
import pathlib
import threading
import time

import numpy as np
import pytest
from PIL import Image


IMAGE_SIZE = (64, 128)
KITTI_CONFIG = {"dataset": "kitti", "task": "road", "class_names": ["non-road", "road"],
                "colours": [[0, 0, 0], [255, 0, 255]], "image_size": list(IMAGE_SIZE),
                "num_classes": 2, "fc_width": 16, "normalization": "caffe",
                "label_format": "kitti"}


def _export(base: pathlib.Path, config: dict, seed: int = 0) -> pathlib.Path:
    """A tiny FCN with random score layers (tests/tiny_models.py), as models/fcn8s/1."""
    from export.savedmodel import export_saved_model
    from tests.tiny_models import tiny_fcn

    model = tiny_fcn(len(config["class_names"]), IMAGE_SIZE, seed)
    return export_saved_model(model, config, base, "fcn8s", version=1)


@pytest.fixture(scope="module")
def road_model(tmp_path_factory) -> pathlib.Path:
    """models/fcn8s/1: a tiny binary road FCN (fc_width 16, 64x128), random weights."""
    return _export(tmp_path_factory.mktemp("models"), KITTI_CONFIG)


# --- inputs -----------------------------------------------------------------------------

def _png(array: np.ndarray, **kwargs) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", **kwargs)
    return buf.getvalue()


def _rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def make_mixed_folder(folder: pathlib.Path) -> tuple[dict, dict]:
    """Good images (odd modes and sizes included) and bad files: ({name: (w, h)}, {name: reason
    fragment})."""
    folder.mkdir(parents=True, exist_ok=True)
    good = {}

    def put(name, data, size=None):
        (folder / name).write_bytes(data)
        if size:
            good[name] = size

    put("rgb.png", _png(_rgb(75, 124)), (124, 75))
    buf = io.BytesIO()
    Image.fromarray(_rgb(48, 96, 1)).save(buf, format="JPEG", quality=90)
    put("photo.jpg", buf.getvalue(), (96, 48))
    put("gray.png", _png(_rgb(40, 50, 2)[..., 0]), (50, 40))
    put("rgba.png", _png(np.dstack([_rgb(33, 65, 3), np.full((33, 65), 128, np.uint8)])),
        (65, 33))
    sixteen = (np.arange(30 * 70, dtype=np.uint16).reshape(30, 70) * 31)
    put("sixteen.png", _png(sixteen), (70, 30))  # Pillow writes uint16 as a 16-bit PNG
    put("tiny.png", _png(_rgb(1, 1, 4)), (1, 1))
    bad = {}
    put("empty.png", b"")
    bad["empty.png"] = "empty"
    put("notes.png", b"this is a text file, not a picture\n" * 20)
    bad["notes.png"] = "not an image"
    whole = _png(_rgb(200, 300, 5))
    put("truncated.png", whole[: len(whole) // 2])
    bad["truncated.png"] = "truncated"
    damaged = bytearray(_png(_rgb(64, 64, 6)))
    damaged[200:260] = bytes(60)  # zeros over compressed pixel data: a bad chunk CRC
    put("corrupt.png", bytes(damaged))
    bad["corrupt.png"] = "corrupt"
    put("huge.png", _png(np.zeros((1100, 1000, 3), np.uint8)))  # over --max-pixels below
    bad["huge.png"] = "too large"
    return good, bad


def _read_jsonl(out: pathlib.Path, prefix: str) -> list[dict]:
    rows = []
    for f in sorted(out.glob(f"{prefix}-*.jsonl")):
        rows += [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
    return rows


def _run(*args: str) -> dict:
    from beam_jobs import segment
    return segment.run([str(a) for a in args])


def _published(out: pathlib.Path, summary: dict) -> pathlib.Path:
    """The run folder the job published (and the one the summary names)."""
    run = out / "runs" / (out / "LATEST").read_text().strip()
    assert run == pathlib.Path(summary["run_dir"]) and (out / "latest").resolve() == run
    return run


def _check_mixed(out: pathlib.Path, summary: dict, good: dict, bad: dict) -> None:
    out = _published(out, summary)
    results = {pathlib.Path(r["path"]).name: r for r in _read_jsonl(out, "results")}
    dead = {pathlib.Path(d["path"]).name: d for d in _read_jsonl(out, "dead_letter")}
    assert set(results) == set(good)
    assert set(dead) == set(bad)
    assert summary["images_in"] == len(good) + len(bad)
    assert summary["ok"] == len(good) and summary["failed"] == len(bad)
    for name, fragment in bad.items():
        assert dead[name]["stage"] == "validate"
        assert fragment in dead[name]["reason"], dead[name]
    for name, (w, h) in good.items():
        r = results[name]
        assert (r["width"], r["height"]) == (w, h)
        assert abs(sum(r["class_fractions"].values()) - 1.0) < 1e-3
        mask = np.asarray(Image.open(out / "masks" / (pathlib.Path(name).stem + ".png")))
        assert mask.shape == (h, w) and mask.dtype == np.uint8 and mask.max() <= 1
    saved = json.loads((out / "summary.json").read_text())
    assert saved["ok"] == len(good) and saved["failed_by_stage"] == {"validate": len(bad)}


# --- validation and handler units -------------------------------------------------------

def test_check_image_reasons(tmp_path):
    from beam_jobs.sources import ImageItem
    from beam_jobs.validate import ImageRejected, check_image

    good, bad = make_mixed_folder(tmp_path)
    for name, (w, h) in good.items():
        item = check_image(ImageItem(str(tmp_path / name), (tmp_path / name).read_bytes()))
        assert (item.width, item.height) == (w, h)
        # What reaches the model must be something TensorFlow's decoder reads as 8-bit.
        assert item.format in ("PNG", "JPEG")
    sixteen = check_image(ImageItem("s.png", (tmp_path / "sixteen.png").read_bytes()))
    assert Image.open(io.BytesIO(sixteen.data)).mode == "RGB"  # re-encoded to 8 bits
    for name, fragment in bad.items():
        with pytest.raises(ImageRejected, match=fragment):
            check_image(ImageItem(name, (tmp_path / name).read_bytes()), max_pixels=1_000_000)


def test_grpc_error_classes():
    import grpc

    from beam_jobs.handlers import _calls_within, _is_bad_input, _is_retryable
    from beam_jobs.sources import ImageItem
    from serving.errors import ServingError

    C = grpc.StatusCode
    assert _is_retryable(ServingError(C.UNAVAILABLE, "restarting"))
    assert _is_retryable(ServingError(C.CANCELLED, "dropped in flight"))
    assert not _is_retryable(ServingError(C.INVALID_ARGUMENT, "bad png"))
    assert not _is_retryable(ValueError("x"))
    assert _is_bad_input(ServingError(C.INVALID_ARGUMENT, "bad png"))
    assert not _is_bad_input(ServingError(C.NOT_FOUND, "no model"))
    items = [ImageItem(str(i), b"x" * n) for i, n in enumerate([3, 3, 5, 1, 9])]
    parts = _calls_within(items, 6)
    assert [[it.path for it in p] for p in parts] == [["0", "1"], ["2", "3"], ["4"]]
    assert _calls_within(items, None) == [items]


def test_inprocess_handler_isolates_an_image_the_model_refuses(road_model):
    from beam_jobs.handlers import InferenceFailure, SavedModelHandler, Segmentation
    from beam_jobs.sources import ImageItem

    handler = SavedModelHandler(str(road_model.parent))
    model = handler.load_model()
    # Passes no validation on purpose: the graph fails the whole batch on it.
    batch = [ImageItem("a.png", _png(_rgb(20, 30))), ImageItem("bad.png", b"GIF89a broken"),
             ImageItem("b.png", _png(_rgb(10, 12)))]
    out = handler.run_inference(batch, model)
    assert [type(r.inference) for r in out] == [Segmentation, InferenceFailure, Segmentation]
    assert "InvalidArgument" in out[1].inference.reason
    assert out[0].inference.class_ids.shape == (20, 30)
    assert out[2].inference.class_ids.shape == (10, 12)
    assert out[0].inference.model_name == "fcn8s" and out[0].inference.model_version == 1


def test_inputs_and_model_are_checked_before_the_pipeline(tmp_path, road_model):
    from beam_jobs import segment

    with pytest.raises(FileNotFoundError, match="no files match"):
        _run("--input", tmp_path / "none" / "*.png", "--output", tmp_path / "out",
             "--model-dir", road_model)
    (tmp_path / "a.png").write_bytes(_png(_rgb(8, 8)))
    with pytest.raises(FileNotFoundError, match="no SavedModel"):
        _run("--input", tmp_path, "--output", tmp_path / "out", "--model-dir", tmp_path)
    assert segment.main(["--input", str(tmp_path / "x*.png"), "--output", str(tmp_path / "o"),
                         "--model-dir", str(road_model)]) == 2


# --- pipelines --------------------------------------------------------------------------

def test_inprocess_folder_with_bad_files(tmp_path, road_model):
    good, bad = make_mixed_folder(tmp_path / "in")
    out = tmp_path / "out"
    summary = _run("--input", tmp_path / "in", "--output", out, "--dataset", "folder",
                   "--model-dir", road_model.parent, "--max-pixels", 1_000_000,
                   "--batch-size", 3, "--overlays")
    _check_mixed(out, summary, good, bad)
    run = _published(out, summary)
    assert len(list((run / "overlays").glob("*.png"))) == len(good)
    assert not (run / "metrics.json").exists()  # no ground truth, nothing to score
    # Rerun: a new run folder replaces the first one, no stale files.
    summary2 = _run("--input", tmp_path / "in", "--output", out, "--dataset", "folder",
                    "--model-dir", road_model.parent, "--max-pixels", 1_000_000)
    assert summary2["ok"] == len(good)
    assert [p.name for p in (out / "runs").iterdir()] == [summary2["run_id"]]
    assert not list(out.rglob("*.tmp"))


def test_folder_with_labels_dir(tmp_path, road_model):
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    good = np.zeros((30, 40), np.uint8)
    good[15:] = 1
    good[:, :5] = 255
    for name, label in (("a", good), ("b", np.full((30, 40), 7, np.uint8)), ("c", None)):
        (images / f"{name}.png").write_bytes(_png(_rgb(30, 40)))
        if label is not None:
            (labels / f"{name}.png").write_bytes(_png(label))
    out = tmp_path / "out"
    summary = _run("--input", images, "--labels-dir", labels, "--output", out,
                   "--dataset", "folder", "--model-dir", road_model)
    out = _published(out, summary)
    dead = _read_jsonl(out, "dead_letter")
    assert [(pathlib.Path(d["path"]).name, d["stage"]) for d in dead] == [("b.png", "ground_truth")]
    assert "label values must be in [0, 2)" in dead[0]["reason"]
    assert summary["ok"] == 2
    m = json.loads((out / "metrics.json").read_text())
    assert m["split_size"] == 1 and np.sum(m["confusion_matrix"]) == np.sum(good != 255)
    # A binary model gets the devkit road table and PR curve, as model.evaluate gives it.
    assert m["kitti"]["overall"]["num_images"] == 1 and (out / "pr_curve.png").is_file()


@pytest.fixture()
def grpc_server(road_model):
    from tfserving_dev.server import start_dev_server
    server = start_dev_server(road_model.parent, "fcn8s")
    yield server
    server.stop()


def test_grpc_folder_with_bad_files(tmp_path, grpc_server):
    good, bad = make_mixed_folder(tmp_path / "in")
    out = tmp_path / "out"
    summary = _run("--input", f"{tmp_path / 'in'}/*", "--output", out, "--dataset", "folder",
                   "--mode", "grpc", "--server", grpc_server.address, "--model-name", "fcn8s",
                   "--model-version", 1, "--max-pixels", 1_000_000, "--batch-size", 4)
    _check_mixed(out, summary, good, bad)
    versions = {r["model_version"] for r in _read_jsonl(_published(out, summary), "results")}
    assert versions == {1}


def test_grpc_handler_isolates_an_image_the_server_refuses(grpc_server):
    from beam_jobs.handlers import InferenceFailure, Segmentation, TFServingHandler
    from beam_jobs.sources import ImageItem

    handler = TFServingHandler(grpc_server.address, "fcn8s", timeout=20)
    client = handler.create_client()
    batch = [ImageItem("a.png", _png(_rgb(20, 30))), ImageItem("bad.png", b"\x89PNG broken"),
             ImageItem("b.png", _png(_rgb(10, 12)))]
    out = handler.request(batch, client)
    assert [type(r.inference) for r in out] == [Segmentation, InferenceFailure, Segmentation]
    assert "INVALID_ARGUMENT" in out[1].inference.reason
    assert out[2].inference.class_ids.shape == (10, 12)
    client.close()


# A pinhole camera 1.6 m above a flat road (f = 50 px, principal point (100, 10)): the
# bird's-eye grid (6..46 m ahead, +-10 m) lands in rows 11..24 of these small images.
SMALL_CALIB = ("P2: 50 0 100 0 0 50 10 0 0 0 1 0\n"
               "R0_rect: 1 0 0 0 1 0 0 0 1\n"
               "Tr_cam_to_road: 1 0 0 0 0 1 0 -1.6 0 0 1 0\n")


def _kitti_tree(root: pathlib.Path) -> None:
    """training/image_2 + gt_image_2 + calib: two well-formed pairs, one gt of the wrong
    size, one image without gt (segmented, not scored)."""
    img_dir, gt_dir = root / "training" / "image_2", root / "training" / "gt_image_2"
    img_dir.mkdir(parents=True)
    gt_dir.mkdir(parents=True)
    (root / "training" / "calib").mkdir()

    def gt(h, w):
        # Road (magenta) in the lower left, not road (red) elsewhere, the top rows outside
        # the evaluated area: asymmetric both ways, so a mirrored or flipped ground truth
        # scores differently.
        g = np.zeros((h, w, 3), np.uint8)
        g[h // 6:, :, 0] = 255
        g[h // 2:, : 2 * w // 3, 2] = 255
        return g

    for i, (name, size, gt_size) in enumerate([("um_000000", (60, 200), (60, 200)),
                                               ("uu_000001", (50, 160), (50, 160)),
                                               ("umm_000002", (60, 200), (58, 200)),
                                               ("um_000003", (40, 100), None)]):
        (img_dir / f"{name}.png").write_bytes(_png(_rgb(*size, seed=i)))
        (root / "training" / "calib" / f"{name}.txt").write_text(SMALL_CALIB)
        if gt_size:
            cat, n = name.split("_")
            (gt_dir / f"{cat}_road_{n}.png").write_bytes(_png(gt(*gt_size)))


def test_kitti_layout_gt_mismatch_and_metrics(tmp_path, road_model):
    from contract import names
    from beam_jobs.handlers import SavedModelSegmenter
    from model import metrics
    from model.data import kitti

    _kitti_tree(tmp_path / "kitti")
    out = tmp_path / "out"
    summary = _run("--input", tmp_path / "kitti", "--output", out, "--dataset", "kitti",
                   "--model-dir", road_model, "--batch-size", 2)
    out = _published(out, summary)
    dead = _read_jsonl(out, "dead_letter")
    assert [(pathlib.Path(d["path"]).name, d["stage"]) for d in dead] == [
        ("umm_000002.png", "ground_truth")]
    assert "58" in dead[0]["reason"] and "60" in dead[0]["reason"]
    results = {pathlib.Path(r["path"]).name: r for r in _read_jsonl(out, "results")}
    assert set(results) == {"um_000000.png", "uu_000001.png", "um_000003.png"}
    assert results["um_000003.png"]["evaluated"] is False
    assert sorted(p.name for p in (out / "kitti_submission").iterdir()) == [
        "um_road_000000.png", "um_road_000003.png", "uu_road_000001.png"]
    assert summary["metrics"]["split_size"] == 2
    assert (out / "pr_curve.png").stat().st_size > 0

    # Same numbers as model.metrics over the SavedModel's own outputs for the scored images.
    seg = SavedModelSegmenter(str(road_model))
    cm = np.zeros((2, 2), np.int64)
    road = metrics.RoadCounts()
    for name in ("um_000000", "uu_000001"):
        o = seg.segment([(tmp_path / "kitti/training/image_2" / f"{name}.png").read_bytes()])
        label = kitti.read_gt(kitti.gt_path_for(tmp_path / "kitti/training/image_2" / f"{name}.png"))
        # export format 2 names it confidence_png_bytes (contract.names)
        conf = np.asarray(Image.open(io.BytesIO(o[names.CONFIDENCE_PNG_BYTES][0])))
        road = road + metrics.road_counts(conf, label)
        cm += metrics.confusion_matrix(o["class_ids"][0][: label.shape[0], : label.shape[1]],
                                       label, 2)
    m = json.loads((out / "metrics.json").read_text())
    assert m["confusion_matrix"] == cm.tolist()
    expected = metrics.kitti_scores(road)
    for key in ("MaxF", "AP", "PRE", "REC"):
        assert m["kitti"]["overall"][key] == pytest.approx(expected[key])
    assert m["kitti"]["um"]["num_images"] == 1 and m["kitti"]["uu"]["num_images"] == 1


def test_kitti_real_samples_match_model_evaluate(tmp_path, kitti_root, road_model):
    """The job's metrics.json equals model.evaluate's over the same images and SavedModel."""
    from model import evaluate, inference
    from model.data import kitti

    pattern = kitti_root / "training" / "image_2" / "*_00001[0-9].png"  # 5 images, um/umm/uu
    out = tmp_path / "out"
    summary = _run("--input", pattern, "--output", out, "--dataset", "kitti",
                   "--model-dir", road_model, "--batch-size", 4)
    pairs = [(str(p), kitti.gt_path_for(p)) for p in sorted(pattern.parent.glob(pattern.name))]
    assert summary["ok"] == len(pairs) and summary["failed"] == 0
    expected = evaluate.evaluate_pairs(inference.saved_model_predictor(road_model), KITTI_CONFIG,
                                       pairs, tmp_path / "eval", overlays=0)
    got = json.loads((_published(out, summary) / "metrics.json").read_text())
    # Resizing and rounding happen in the same graph; argmax ties and p = k + 0.5 / 255
    # rounding may differ in a handful of pixels.
    cm_got, cm_exp = np.array(got["confusion_matrix"]), np.array(expected["confusion_matrix"])
    assert np.abs(cm_got - cm_exp).sum() <= 1e-5 * cm_exp.sum()
    for view in ("kitti", "kitti_bev"):  # perspective and bird's-eye view
        for group, scores in expected[view].items():
            for key in ("MaxF", "AP", "PRE", "REC", "IoU"):
                assert got[view][group][key] == pytest.approx(scores[key], abs=1e-4), \
                    (view, group, key)
            assert got[view][group]["num_images"] == scores["num_images"]
    assert got["task"] == "road" and summary["task"] == "road"


def test_kitti_missing_calibration_is_a_dead_letter(tmp_path, road_model):
    _kitti_tree(tmp_path / "kitti")
    (tmp_path / "kitti" / "training" / "calib" / "uu_000001.txt").unlink()
    (tmp_path / "kitti" / "training" / "calib" / "um_000003.txt").write_text("P2: 1 2 3\n")
    out = tmp_path / "out"
    summary = _run("--input", tmp_path / "kitti", "--output", out, "--dataset", "kitti",
                   "--model-dir", road_model)
    out = _published(out, summary)
    dead = {pathlib.Path(d["path"]).name: d for d in _read_jsonl(out, "dead_letter")}
    assert dead["uu_000001.png"]["stage"] == "calibration"
    assert "calib/uu_000001.txt not found" in dead["uu_000001.png"]["reason"]
    assert dead["um_000003.png"]["stage"] == "calibration"
    assert "um_000003.txt:1" in dead["um_000003.png"]["reason"]
    # the others are untouched: um_000000 is written and scored
    results = {pathlib.Path(r["path"]).name: r for r in _read_jsonl(out, "results")}
    assert set(results) == {"um_000000.png"}
    assert summary["failed_by_stage"]["calibration"] == 2
    bev = np.asarray(Image.open(out / "kitti_submission" / "um_road_000000.png"))
    assert bev.shape == (800, 400) and bev.dtype == np.uint8
    assert (out / "confidence" / "um_road_000000.png").is_file()


def test_kitti_task_must_be_the_models(tmp_path, road_model):
    from contract.records import RecordError

    _kitti_tree(tmp_path / "kitti")
    with pytest.raises(RecordError, match="trained for the KITTI 'road' task, not 'lane'"):
        _run("--input", tmp_path / "kitti", "--output", tmp_path / "out", "--dataset", "kitti",
             "--model-dir", road_model, "--task", "lane")
    from beam_jobs import segment
    assert segment.main(["--input", str(tmp_path / "kitti"), "--output", str(tmp_path / "o"),
                         "--dataset", "kitti", "--model-dir", str(road_model),
                         "--task", "lane"]) == 2


def test_kitti_lane_submission_in_birds_eye_view(tmp_path_factory, tmp_path, kitti_root):
    """A lane model on real samples: um images get um_lane_* maps in BEV (the upload) and in
    perspective; umm/uu have no lane task and are segmented only; BEV scores equal
    model.evaluate's on the lane ground truth; the zip holds exactly the maps."""
    import zipfile

    from model import evaluate, inference
    from model.data import kitti, kitti_bev

    lane_model = _export(tmp_path_factory.mktemp("lane"), {**KITTI_CONFIG, "task": "lane"}, 1)
    pattern = kitti_root / "training" / "image_2" / "*_00001[0-9].png"
    out = tmp_path / "out"
    summary = _run("--input", pattern, "--output", out, "--dataset", "kitti",
                   "--model-dir", lane_model, "--submission-zip")
    out = _published(out, summary)
    assert summary["submission_zip"] == str(out / "kitti_submission.zip")
    images = sorted(pattern.parent.glob(pattern.name))
    um = [p for p in images if p.name.startswith("um_")]
    assert um and len(um) < len(images)
    assert summary["ok"] == len(images) and summary["task"] == "lane"
    names = sorted(f"um_lane_{p.stem.split('_')[1]}.png" for p in um)
    assert sorted(p.name for p in (out / "kitti_submission").iterdir()) == names
    assert sorted(p.name for p in (out / "confidence").iterdir()) == names
    results = {pathlib.Path(r["path"]).name: r for r in _read_jsonl(out, "results")}
    for p in images:
        assert results[p.name]["evaluated"] is p.name.startswith("um_")
        assert ("kitti_submission" in results[p.name]) is p.name.startswith("um_")
    # the upload is the perspective map resampled by the image's calibration
    for name in names:
        stem = name.replace("_lane", "")
        conf = np.asarray(Image.open(out / "confidence" / name))
        table = kitti_bev.lookup_for_file(kitti_root / "training" / "calib" /
                                          stem.replace(".png", ".txt"), conf.shape)
        bev = np.asarray(Image.open(out / "kitti_submission" / name))
        np.testing.assert_array_equal(bev, kitti_bev.confidence_to_bev(conf, table))
    with zipfile.ZipFile(out / "kitti_submission.zip") as archive:
        assert sorted(archive.namelist()) == names
        for name in names:
            assert archive.read(name) == (out / "kitti_submission" / name).read_bytes()
    got = json.loads((out / "metrics.json").read_text())
    assert got["task"] == "lane" and set(got["kitti_bev"]) == {"um", "overall"}
    pairs = [(str(p), kitti.gt_path_for(p, "lane")) for p in um]
    expected = evaluate.evaluate_pairs(inference.saved_model_predictor(lane_model),
                                       {**KITTI_CONFIG, "task": "lane"}, pairs,
                                       tmp_path / "eval", overlays=0)
    for key in ("MaxF", "AP", "PRE", "REC"):
        assert got["kitti_bev"]["overall"][key] == pytest.approx(
            expected["kitti_bev"]["overall"][key], abs=1e-4)
        assert got["kitti"]["overall"][key] == pytest.approx(
            expected["kitti"]["overall"][key], abs=1e-4)


def test_coco_missing_images_and_confusion_matrix(tmp_path, coco_root):
    ann = json.loads((coco_root / "annotations" / "instances_val2017_sample.json").read_text())
    # three images with people and cars where the two label protocols differ
    chosen = ("000000060932.jpg", "000000277005.jpg", "000000376322.jpg")
    images = sorted((i for i in ann["images"] if i["file_name"] in chosen),
                    key=lambda i: i["file_name"])
    ghost = {**images[0], "id": 999999999, "file_name": "000000999999.jpg"}
    keep = {i["id"] for i in images}
    small = {**ann, "images": images + [ghost],
             "annotations": [a for a in ann["annotations"] if a["image_id"] in keep]}
    ann_file = tmp_path / "instances.json"
    ann_file.write_text(json.dumps(small))
    config = {**KITTI_CONFIG, "dataset": "coco", "categories": ["person", "car"],
              "class_names": ["background", "person", "car"],
              "colours": [[0, 0, 0], [220, 20, 60], [0, 0, 142]], "num_classes": 3,
              "label_format": "ids"}
    model = _export(tmp_path / "models", config)
    out = tmp_path / "out"
    summary = _run("--input", coco_root / "val2017", "--output", out, "--dataset", "coco",
                   "--annotations", ann_file, "--model-dir", model, "--batch-size", 2)
    out = _published(out, summary)
    dead = _read_jsonl(out, "dead_letter")
    assert [(pathlib.Path(d["path"]).name, d["stage"], d["reason"]) for d in dead] == [
        ("000000999999.jpg", "read", "file not found")]
    assert summary["ok"] == 3
    m = json.loads((out / "metrics.json").read_text())
    assert m["class_names"] == ["background", "person", "car"] and m["split_size"] == 3
    total = sum(i["height"] * i["width"] for i in images)
    assert 0 < np.sum(m["confusion_matrix"]) <= total
    assert (out / "confusion_matrix.png").is_file()
    assert m["coco_protocol"] == "fcnseg"

    # The torchvision protocol: the same predictions scored against torchvision's masks.
    from model import metrics
    from model.data import coco as coco_mod
    out2 = tmp_path / "out_tv"
    out2 = _published(out2, _run("--input", coco_root / "val2017", "--output", out2,
                                 "--dataset", "coco", "--annotations", ann_file,
                                 "--model-dir", model, "--coco-protocol", "torchvision"))
    m2 = json.loads((out2 / "metrics.json").read_text())
    assert m2["coco_protocol"] == "torchvision"
    index = coco_mod.load_coco(ann_file)
    lut = {1: 1, 3: 2}  # person, car
    cm = np.zeros((3, 3), np.int64)
    for info in images:
        pred = np.asarray(Image.open(out2 / "masks" / info["file_name"].replace(".jpg", ".png")))
        label = coco_mod.semantic_mask(index, info, lut, protocol="torchvision")
        cm += metrics.confusion_matrix(pred, label, 3)
    assert m2["confusion_matrix"] == cm.tolist()
    assert m2["confusion_matrix"] != m["confusion_matrix"]


def test_multiprocess_direct_runner(tmp_path, road_model):
    good, bad = make_mixed_folder(tmp_path / "in")
    out = tmp_path / "out"
    summary = _run("--input", tmp_path / "in", "--output", out, "--dataset", "folder",
                   "--model-dir", road_model.parent, "--max-pixels", 1_000_000,
                   "--batch-size", 2, "--direct_num_workers", 2,
                   "--direct_running_mode", "multi_processing")
    _check_mixed(out, summary, good, bad)


def test_grpc_survives_server_restart(tmp_path, road_model):
    """Stop the server while the job runs and start it again on the same port: every image
    still comes out (client retries, then Beam's backoff)."""
    from tfserving_dev.server import start_dev_server

    folder = tmp_path / "in"
    folder.mkdir()
    n = 12  # enough to stop after 3 masks and still have most of the job left
    for i in range(n):
        (folder / f"img_{i:02d}.png").write_bytes(_png(_rgb(120, 300, seed=i)))
    server = start_dev_server(road_model.parent, "fcn8s")
    port = int(server.address.rsplit(":", 1)[1])
    out = tmp_path / "out"
    state = {"masks_at_stop": None, "server": server}

    def restart():
        while len(list(out.glob("runs/*/masks/*.png"))) < 3:
            time.sleep(0.05)
        state["server"].stop(grace=0)
        state["masks_at_stop"] = len(list(out.glob("runs/*/masks/*.png")))
        time.sleep(3)
        state["server"] = start_dev_server(road_model.parent, "fcn8s", port=port)

    t = threading.Thread(target=restart, daemon=True)
    t.start()
    try:
        summary = _run("--input", folder, "--output", out, "--dataset", "folder",
                       "--mode", "grpc", "--server", server.address, "--model-name", "fcn8s",
                       "--batch-size", 1, "--timeout", 10)
    finally:
        t.join(timeout=60)
        state["server"].stop()
    assert state["masks_at_stop"] is not None and state["masks_at_stop"] < n
    assert summary["ok"] == n and summary["failed"] == 0
    assert len(list((_published(out, summary) / "masks").glob("*.png"))) == n
