"""report.html and compare.html (model/report.py): built by model.evaluate and by the Beam job
from the same per-image records, and checked in a real browser (headless Chromium from the
system's packages, driven by Selenium).

The worst-first order the browser must show is computed here from image_scores*.jsonl with
the rule written in model/image_scores.py (ascending score, no score last, ties by name), not
by the code under test."""
from __future__ import annotations

import contextlib
import io
import json
import os
import pathlib
import shutil
import tempfile

import numpy as np
import pytest
from PIL import Image

from model import image_scores, report
from tests.tiny_models import balance_road

IMAGE_SIZE = (64, 128)
KITTI_CONFIG = {"dataset": "kitti", "task": "road", "class_names": ["non-road", "road"],
                "colours": [[0, 0, 0], [255, 0, 255]], "image_size": list(IMAGE_SIZE),
                "num_classes": 2, "fc_width": 16, "normalization": "caffe",
                "label_format": "kitti"}
CATEGORIES = ("um", "umm", "uu")
CHROMIUM = os.environ.get("FCNSEG_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("FCNSEG_CHROMEDRIVER", "/usr/bin/chromedriver")


def _small_kitti_root(kitti_root: pathlib.Path, root: pathlib.Path, names) -> pathlib.Path:
    """A data_road folder with copies of some of the shared pairs (the Beam job does not
    follow links out of its input folder)."""
    for folder, pattern in (("image_2", "{}.png"), ("calib", "{}.txt"),
                            ("gt_image_2", "{}.png")):
        (root / "training" / folder).mkdir(parents=True)
        for name in names:
            file = pattern.format(name if folder != "gt_image_2"
                                  else name.replace("_", "_road_", 1))
            shutil.copyfile(kitti_root / "training" / folder / file,
                            root / "training" / folder / file)
    return root


def _scores_by_image(folder) -> dict:
    return {r["image"]: r for r in image_scores.read_records(folder)}


def _expected_order(folder) -> list[str]:
    records = image_scores.read_records(folder)
    scored = sorted((r["score"], r["image"]) for r in records if r["score"] is not None)
    return [name for _, name in scored] + sorted(r["image"] for r in records
                                                 if r["score"] is None)


def _road_on_half_the_pixels(model, image_path):
    image = Image.open(image_path).convert("RGB").resize(IMAGE_SIZE[::-1])
    return balance_road(model, np.asarray(image, np.float32))


@pytest.fixture(scope="module")
def kitti_runs(tmp_path_factory, kitti_root):
    """The same six KITTI pairs scored by model.evaluate and by the Beam job, with one
    tiny SavedModel; and a second evaluation on four of them (another image set)."""
    from beam_jobs import segment
    from export.savedmodel import export_saved_model
    from model import evaluate, inference
    from model.data import kitti
    from tests.tiny_models import tiny_fcn

    tmp = tmp_path_factory.mktemp("report")
    # Two real pairs per category (with calibration): real sizes, real bird's-eye views.
    names = [p.stem for c in CATEGORIES
             for p in sorted((kitti_root / "training" / "image_2").glob(f"{c}_*.png"))[:2]]
    root = _small_kitti_root(kitti_root, tmp / "data_road", names)
    model = _road_on_half_the_pixels(tiny_fcn(2, IMAGE_SIZE, seed=3),
                                     root / "training" / "image_2" / f"{names[0]}.png")
    model_dir = export_saved_model(model, KITTI_CONFIG, tmp / "models", "fcn8s", version=1)
    pairs = kitti.list_pairs(root, task="road")
    predictor = inference.saved_model_predictor(model_dir)
    evaluate.evaluate_pairs(predictor, KITTI_CONFIG, pairs, tmp / "eval", overlays=0,
                            source={"saved_model": str(model_dir)})
    evaluate.evaluate_pairs(predictor, KITTI_CONFIG, pairs[:4], tmp / "eval_four", overlays=0,
                            source={"saved_model": str(model_dir)})
    # A dead letter beside the good images: an undecodable PNG in the input folder.
    bad = root / "training" / "image_2" / "um_000099.png"
    bad.write_bytes(b"not a png")
    shutil.copyfile(root / "training" / "calib" / f"{names[0]}.txt",
                    root / "training" / "calib" / "um_000099.txt")
    summary = segment.run(["--input", str(root), "--output", str(tmp / "beam"), "--dataset",
                           "kitti", "--model-dir", str(model_dir), "--batch-size", "4"])
    return {"eval": tmp / "eval", "eval_four": tmp / "eval_four",
            "beam": pathlib.Path(summary["run_dir"]), "tmp": tmp, "names": names}


# --- files ----------------------------------------------------------------------------------

def test_evaluate_and_beam_write_the_same_per_image_scores(kitti_runs):
    ours, beam = _scores_by_image(kitti_runs["eval"]), _scores_by_image(kitti_runs["beam"])
    assert sorted(ours) == sorted(beam) == sorted(kitti_runs["names"])
    for name in kitti_runs["names"]:
        for key in ("category", "score_name", "overlay", "overlay_bev"):
            assert ours[name][key] == beam[name][key], (name, key)
        # The same counts from the same SavedModel: evaluate quantises its float
        # probabilities as the exported confidence PNG does (metrics.quantize_probability).
        for key in ("tp", "fp", "fn", "tp_bev", "fp_bev", "fn_bev"):
            assert ours[name][key] == beam[name][key], (name, key)
        for key in ("F", "PRE", "REC", "IoU", "F_bev"):
            assert ours[name][key] == beam[name][key], (name, key)
    assert [ours[n]["category"] for n in kitti_runs["names"]] == ["um", "um", "umm", "umm",
                                                                   "uu", "uu"]


def test_per_image_counts_add_up_to_the_run_totals(kitti_runs):
    """The overall perspective IoU of metrics.json (pixel totals at p >= 0.5) from the sum of
    the per-image counts: the same pixels, counted image by image."""
    records = image_scores.read_records(kitti_runs["eval"])
    tp, fp, fn = (sum(r[k] for r in records) for k in ("tp", "fp", "fn"))
    overall = json.loads((kitti_runs["eval"] / "metrics.json").read_text())["kitti"]["overall"]
    assert overall["IoU"] == pytest.approx(tp / (tp + fp + fn), abs=1e-12)


def test_every_run_leaves_a_report_and_it_rebuilds_from_the_files(kitti_runs, capsys):
    for run in ("eval", "beam"):
        page = kitti_runs[run] / "report.html"
        assert page.is_file()
        before = page.read_text()
        assert report.main([str(kitti_runs[run])]) == 0
        assert page.read_text() == before
    # A Beam job's --output folder stands for its published run.
    capsys.readouterr()
    assert report.main([str(kitti_runs["beam"].parent.parent)]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {kitti_runs['beam'] / 'report.html'}"
    beam_page = (kitti_runs["beam"] / "report.html").read_text()
    assert "um_000099.png" in beam_page and "1 dead letter" in beam_page
    assert "http://" not in beam_page and "https://" not in beam_page  # nothing from a network


def test_not_a_run_folder_is_one_error_line(tmp_path, capsys):
    assert report.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "metrics.json" in err


def test_compare_refuses_two_image_sets(kitti_runs, tmp_path, capsys):
    status = report.main(["compare", str(kitti_runs["eval"]), str(kitti_runs["eval_four"]),
                          "--output", str(tmp_path / "cmp")])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1 and err.startswith("error: ")
    assert "different images (6 and 4; 2 only in the first" in err
    assert not (tmp_path / "cmp" / "compare.html").exists()


# --- in the browser ------------------------------------------------------------------------

@contextlib.contextmanager
def _browser():
    """Headless Chromium through chromedriver; fails in CI when there is none, skips elsewhere."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not shutil.which(p)]
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        missing.append("the selenium package (requirements-test.txt)")
    if missing:
        why = (f"no browser for the report tests: {', '.join(missing)} not found (apt-get "
               f"install chromium chromium-driver, as .ci/run does)")
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="fcnseg-chromium-")
    # Root in a container needs --no-sandbox; the rest keeps Chromium off the (closed) network.
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                 f"--user-data-dir={profile}", "--window-size=1400,1000"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _open(driver, page: pathlib.Path):
    driver.get(page.resolve().as_uri())
    driver.execute_async_script("""
        const done = arguments[arguments.length - 1];
        Promise.all([...document.images].map((img) => img.complete ? null :
            new Promise((ok) => { img.onload = img.onerror = ok; }))).then(() => done());""")


def _problems(driver) -> tuple[list, list]:
    """(console errors, images that did not load)."""
    errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    broken = driver.execute_script(
        "return [...document.images].filter((i) => !(i.complete && i.naturalWidth > 0))"
        ".map((i) => i.getAttribute('src'));")
    return errors, broken


def _gallery(driver) -> list[str]:
    return driver.execute_script(
        "return [...document.querySelectorAll('#gallery .card')].map((c) => c.dataset.image);")


def _not_blank(png: bytes) -> None:
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    colours = np.unique(pixels.reshape(-1, 3), axis=0)
    assert pixels.std() > 20 and len(colours) > 200, "the screenshot looks blank"


@pytest.mark.parametrize("run", ["eval", "beam"])
def test_report_in_chromium(kitti_runs, run):
    from selenium.webdriver.support.ui import Select

    folder = kitti_runs[run]
    with _browser() as driver:
        _open(driver, folder / "report.html")
        errors, broken = _problems(driver)
        assert errors == [] and broken == []
        images = driver.execute_script("return document.images.length;")
        count = len(kitti_runs["names"])
        assert images == 2 * count + 2  # perspective and BEV per image, two PR curves
        assert _gallery(driver) == _expected_order(folder)
        scores = [r["score"] for r in image_scores.read_records(folder)]
        assert len(set(scores)) == len(scores)  # distinct: the order is the scores', not names'
        Select(driver.find_element("id", "category")).select_by_value("umm")
        assert _gallery(driver) == [n for n in _expected_order(folder) if n.startswith("umm_")]
        assert driver.find_element("id", "count").text == f"2 of {count} images"
        _not_blank(driver.get_screenshot_as_png())
        shot = os.environ.get("FCNSEG_REPORT_SCREENSHOT")
        if shot and run == "eval":
            Select(driver.find_element("id", "category")).select_by_value("")
            driver.execute_script("window.scrollTo(0, 0);")
            driver.save_screenshot(shot)


def test_compare_in_chromium(kitti_runs):
    out = kitti_runs["tmp"] / "compare"
    assert report.main(["compare", str(kitti_runs["eval"]), str(kitti_runs["beam"]),
                        "--output", str(out)]) == 0
    a, b = _scores_by_image(kitti_runs["eval"]), _scores_by_image(kitti_runs["beam"])
    # Largest |B - A| first, ties by name (here all 0: the same model on the same images).
    expected = [n for _, n in sorted((-abs(b[n]["score"] - a[n]["score"]), n) for n in a)]
    with _browser() as driver:
        _open(driver, out / "compare.html")
        errors, broken = _problems(driver)
        assert errors == [] and broken == []
        assert _gallery(driver) == expected
        # Two overlays (perspective and BEV) of each run per image, and the overlaid PR curves.
        assert (driver.execute_script("return document.images.length;")
                == 4 * len(kitti_runs["names"]) + 2)
        _not_blank(driver.get_screenshot_as_png())


def test_paging_shows_every_image_once_in_order(tmp_path):
    """A fake run of 250 images whose scores are known by construction: 3 pages of 100."""
    rng = np.random.default_rng(0)
    (tmp_path / "image_overlays").mkdir()
    Image.fromarray(np.full((8, 16, 3), 90, np.uint8)).save(tmp_path / "image_overlays/x.png")
    scores = rng.permutation(250) / 250
    records = [{"image": f"img_{i:03d}", "score": float(s), "score_name": "mIoU",
                "mIoU": float(s), "pixel_accuracy": 1.0, "overlay": "image_overlays/x.png",
                "category": None} for i, s in enumerate(scores)]
    (tmp_path / "image_scores.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (tmp_path / "metrics.json").write_text(json.dumps({"mean_iou": 0.5}))
    report.build(tmp_path)
    expected = [f"img_{i:03d}" for i in np.argsort(scores)]
    seen = []
    with _browser() as driver:
        _open(driver, tmp_path / "report.html")
        for page in range(3):
            shown = _gallery(driver)
            assert len(shown) == (100 if page < 2 else 50)
            assert driver.find_element("id", "page").text == f"page {page + 1} of 3"
            seen += shown
            if page < 2:
                driver.find_element("id", "next").click()
        assert seen == expected
        driver.find_element("id", "min").send_keys("90")  # scores >= 90 %: 25 images
        assert _gallery(driver) == expected[225:]
        errors, broken = _problems(driver)
        assert errors == [] and broken == []


def test_multi_class_report_from_a_fake_model_with_known_answers(tmp_path):
    """A predictor whose masks are known: image A is predicted exactly (mIoU 1), image B
    gets class 0 on 6 of its 24 class-2 pixels (IoU b 18/24, bg 0/6, "a" absent: mIoU 3/8)."""
    from model import evaluate

    labels = {"a": np.zeros((4, 6), np.uint8), "b": np.full((4, 6), 2, np.uint8)}
    labels["a"][:, :3] = 1
    predicted = {10: labels["a"], 20: labels["b"].copy()}
    predicted[20][:3, :2] = 0  # 3 x 2 = 6 pixels
    pairs = []
    for name, value in (("a", 10), ("b", 20)):
        Image.fromarray(np.full((4, 6, 3), value, np.uint8)).save(tmp_path / f"{name}.png")
        Image.fromarray(labels[name]).save(tmp_path / f"{name}_label.png")
        pairs.append((tmp_path / f"{name}.png", tmp_path / f"{name}_label.png"))

    def predict(images):
        return [np.eye(3, dtype=np.float32)[predicted[int(image[0, 0, 0])]] for image in images]

    config = {"class_names": ["bg", "a", "b"], "colours": [[0, 0, 0], [200, 0, 0], [0, 0, 200]],
              "label_format": "ids", "dataset": "folder"}
    evaluate.evaluate_pairs(predict, config, pairs, tmp_path / "out", overlays=0)
    records = {r["image"]: r for r in image_scores.read_records(tmp_path / "out")}
    assert records["a"]["mIoU"] == 1.0 and records["a"]["pixel_accuracy"] == 1.0
    assert records["b"]["class_iou"] == {"bg": 0.0, "b": 18 / 24}
    assert records["b"]["score"] == 3 / 8 and records["b"]["pixel_accuracy"] == 18 / 24
    with _browser() as driver:
        _open(driver, tmp_path / "out" / "report.html")
        errors, broken = _problems(driver)
        assert errors == [] and broken == []
        assert _gallery(driver) == ["b", "a"]
        # The confusion matrix heat map and one overlay per image; no category filter.
        assert driver.execute_script("return document.images.length;") == 3
        assert not driver.find_element("id", "category").is_displayed()
