"""The Beam batch job on known answers: the threshold model (tests/fakes.py) segments by a
rule on each pixel's brightness, so every mask, confusion count and KITTI score below is
written from the rule and the ground truth (by hand, or in numpy from the rule), never from
model.metrics or beam_jobs.evaluation. Pipelines run on TestPipeline with assert_that on the
job's own PCollections (results, dead letters, scores), plus checks of the files it writes."""
from __future__ import annotations

import copy
import io
import itertools
import json
import pathlib
import threading
import time

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import BeamAssertException, assert_that, equal_to
from PIL import Image

from tests import fakes

ROAD_CLASSES = fakes.KITTI_ROAD_CONFIG["class_names"]


# --- inputs -----------------------------------------------------------------------------

def _png(array: np.ndarray, **kwargs) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", **kwargs)
    return buf.getvalue()


def _rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _gray_ramp(h: int, w: int) -> np.ndarray:
    """uint8 [H, W] gray values rising left to right (both classes, asymmetric)."""
    return np.tile(np.linspace(0, 255, w).round().astype(np.uint8), (h, 1))


def make_mixed_folder(folder: pathlib.Path) -> tuple[dict, dict]:
    """Good images (odd modes and sizes included) and bad files.

    Returns ({name: RGB array the model sees}, {name: (stage, reason)}); a reason ending in
    '(' is a prefix (Pillow's own message follows)."""
    folder.mkdir(parents=True, exist_ok=True)
    good, bad = {}, {}

    def put(name, data, rgb=None):
        (folder / name).write_bytes(data)
        if rgb is not None:
            good[name] = rgb

    rgb = _rgb(75, 124)
    put("rgb.png", _png(rgb), rgb)
    # A JPEG of flat blocks: the model decodes as Pillow does (INTEGER_ACCURATE DCT).
    buf = io.BytesIO()
    Image.fromarray(fakes.gray(np.kron(np.array([[40, 220], [230, 30]], np.uint8),
                                       np.ones((24, 48), np.uint8)))).save(
        buf, format="JPEG", quality=90)
    put("photo.jpg", buf.getvalue(), np.asarray(Image.open(io.BytesIO(buf.getvalue()))
                                                 .convert("RGB")))
    ramp = _gray_ramp(40, 50)
    put("gray.png", _png(ramp), fakes.gray(ramp))                      # mode L
    rgba = _rgb(33, 65, 3)
    put("rgba.png", _png(np.dstack([rgba, np.full((33, 65), 128, np.uint8)])), rgba)
    # 16-bit gray v * 257: exactly v once scaled to 8 bits (65535 -> 255).
    ramp16 = _gray_ramp(30, 70)
    put("sixteen.png", _png(ramp16.astype(np.uint16) * 257), fakes.gray(ramp16))
    tiny = np.full((1, 1, 3), 200, np.uint8)
    put("tiny.png", _png(tiny), tiny)
    put("empty.png", b"")
    bad["empty.png"] = ("validate", "empty file (0 bytes)")
    put("notes.png", b"this is a text file, not a picture\n" * 20)
    bad["notes.png"] = ("validate", "not an image (unrecognised format)")
    whole = _png(_rgb(200, 300, 5))
    put("truncated.png", whole[: len(whole) // 2])
    bad["truncated.png"] = ("validate", "truncated PNG (")
    damaged = bytearray(_png(_rgb(64, 64, 6)))
    damaged[200:260] = bytes(60)  # zeros over compressed pixel data: a bad chunk CRC
    put("corrupt.png", bytes(damaged))
    bad["corrupt.png"] = ("validate", "corrupt PNG (")
    put("huge.png", _png(np.zeros((1100, 1000, 3), np.uint8)))  # over --max-pixels below
    bad["huge.png"] = ("validate", "image too large: 1000x1100 = 1100000 pixels, limit "
                                   "1000000 (--max-pixels)")
    return good, bad


def _read_jsonl(out: pathlib.Path, prefix: str) -> list[dict]:
    rows = []
    for f in sorted(out.glob(f"{prefix}-*.jsonl")):
        rows += [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
    return rows


def _name(path: str) -> str:
    return pathlib.PurePath(path).name


def _fractions(ids: np.ndarray, class_names) -> dict:
    """class_fractions of a result record, counted from the expected mask."""
    counts = np.bincount(ids.ravel(), minlength=len(class_names))
    return {class_names[i]: round(int(c) / ids.size, 6) for i, c in enumerate(counts) if c}


def _record_key(row: dict) -> tuple:
    """What a result record must say, without timings and file locations."""
    return (_name(row["path"]), row["width"], row["height"],
            tuple(sorted(row["class_fractions"].items())), row["evaluated"],
            row["model_name"], row["model_version"])


def _expected_record(name: str, rgb: np.ndarray, evaluated: bool = False,
                     class_names=ROAD_CLASSES, model=("fcn8s", 1), **rule) -> tuple:
    ids = fakes.rule_class_ids(rgb, **rule)
    return (name, rgb.shape[1], rgb.shape[0],
            tuple(sorted(_fractions(ids, class_names).items())), evaluated, *model)


def _dead_matcher(expected: dict):
    """assert_that matcher: DeadLetters are exactly {name: (stage, reason)}; a reason ending
    in '(' must start the actual one."""
    def check(actual):
        got = {_name(d.path): (d.stage, d.reason) for d in actual}
        if len(got) != len(actual) or set(got) != set(expected):
            raise BeamAssertException(f"dead letters {sorted(got)} != {sorted(expected)}")
        for name, (stage, reason) in expected.items():
            ok = got[name][0] == stage and (got[name][1].startswith(reason)
                                            if reason.endswith("(") else got[name][1] == reason)
            if not ok:
                raise BeamAssertException(f"{name}: {got[name]} != {(stage, reason)}")
    return check


def _inspect(results=None, dead=None, scores=None):
    """An `inspect` callback for segment.run: assert_that on the named PCollections."""
    def attach(named):
        if results is not None:
            assert_that(named["results"] | "ResultKeys" >> beam.Map(
                lambda line: _record_key(json.loads(line))), equal_to(results),
                label="CheckResults")
        if dead is not None:
            assert_that(named["dead_letters"], _dead_matcher(dead), label="CheckDeadLetters")
        if scores is not None:
            assert_that(named["scores"], scores, label="CheckScores")
    return attach


def _run(*args, pipeline=None, **kwargs) -> dict:
    from beam_jobs import segment
    pipeline = pipeline if pipeline is not None else test_pipeline.TestPipeline()
    return segment.run([str(a) for a in args], test_pipeline=pipeline, **kwargs)


def _published(out: pathlib.Path, summary: dict) -> pathlib.Path:
    """The run folder the job published (and the one the summary names)."""
    run = out / "runs" / (out / "LATEST").read_text().strip()
    assert run == pathlib.Path(summary["run_dir"]) and (out / "latest").resolve() == run
    return run


def _mask(run: pathlib.Path, name: str, folder: str = "masks") -> np.ndarray:
    return np.asarray(Image.open(run / folder / (pathlib.Path(name).stem + ".png")))


def _run_mixed(out: pathlib.Path, folder, good: dict, bad: dict, *args, pipeline=None,
               class_names=ROAD_CLASSES) -> dict:
    """Run the job on a mixed folder, checking results and dead letters with assert_that,
    then every mask against the rule and the summary; returns the summary."""
    summary = _run("--input", folder, "--output", out, "--dataset", "folder",
                   "--max-pixels", 1_000_000, *args, pipeline=pipeline,
                   inspect=_inspect(results=[_expected_record(n, rgb, class_names=class_names)
                                             for n, rgb in good.items()], dead=bad))
    run = _published(out, summary)
    for name, rgb in good.items():
        np.testing.assert_array_equal(_mask(run, name), fakes.rule_class_ids(rgb), name)
    assert summary["images_in"] == len(good) + len(bad)
    assert (summary["ok"], summary["failed"]) == (len(good), len(bad))
    saved = json.loads((run / "summary.json").read_text())
    assert saved["ok"] == len(good) and saved["failed_by_stage"] == {"validate": len(bad)}
    return summary


# --- validation, handler and combiner units ---------------------------------------------

def test_check_image_reasons(tmp_path):
    from beam_jobs.sources import ImageItem
    from beam_jobs.validate import ImageRejected, check_image

    good, bad = make_mixed_folder(tmp_path)
    for name, rgb in good.items():
        item = check_image(ImageItem(str(tmp_path / name), (tmp_path / name).read_bytes()))
        assert (item.width, item.height) == (rgb.shape[1], rgb.shape[0])
        # What reaches the model must be something TensorFlow's decoder reads as 8-bit.
        assert item.format in ("PNG", "JPEG")
    sixteen = check_image(ImageItem("s.png", (tmp_path / "sixteen.png").read_bytes()))
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(sixteen.data))),
                                  good["sixteen.png"])  # re-encoded to 8 bits, v * 257 -> v
    for name, (_, reason) in bad.items():
        with pytest.raises(ImageRejected) as caught:
            check_image(ImageItem(name, (tmp_path / name).read_bytes()), max_pixels=1_000_000)
        assert str(caught.value).startswith(reason) if reason.endswith("(") \
            else str(caught.value) == reason


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


def test_scoreboard_fn_merges_accumulators_to_the_hand_totals():
    """The job's CombineFn (beam_jobs.evaluation.ScoreboardFn, as build_pipeline uses it)
    over three accumulators, one of them empty, merged in every order: the totals are the
    ones counted by hand below (rows = ground truth, columns = prediction)."""
    from beam_jobs import evaluation

    u8 = lambda a: np.array(a, np.uint8)  # noqa: E731
    # A: TP, TN, FP, TP; road confidence > 0 everywhere it is predicted road.
    a = evaluation.ScoredImage(u8([[1, 0], [1, 1]]), u8([[1, 0], [0, 1]]),
                               u8([[200, 10], [180, 255]]))
    # B: FN, then an ignored pixel (its prediction and confidence count nowhere).
    b = evaluation.ScoredImage(u8([[0, 1]]), u8([[1, 255]]), u8([[100, 250]]))
    c = evaluation.ScoredImage(u8([[1]]), u8([[1]]), u8([[255]]))  # TP
    fn = evaluation.ScoreboardFn(["not road", "road"], by_category=False)
    first = fn.add_input(fn.add_input(fn.create_accumulator(), a), b)
    second = fn.add_input(fn.create_accumulator(), c)
    for order in itertools.permutations([0, 1, 2]):
        parts = [first, fn.create_accumulator(), second]
        copies = [copy.deepcopy(parts[i]) for i in order]
        board = fn.extract_output(fn.merge_accumulators(copies))
        assert board.num_images == 3
        np.testing.assert_array_equal(board.confusion, [[1, 1], [1, 3]])
        road = board.road["overall"]
        # 4 road and 2 non-road pixels are scored. At threshold k a pixel is called road
        # when its confidence v >= k: road pixels (v = 100, 200, 255, 255) with v < k are
        # missed, non-road pixels (v = 10, 180) with v >= k are false positives.
        assert (road.pos, road.neg) == (4, 2)
        assert (road.fn[100], road.fn[101], road.fn[200], road.fn[201]) == (0, 1, 1, 2)
        assert (road.fp[10], road.fp[11], road.fp[180], road.fp[181]) == (2, 1, 1, 0)


def test_inprocess_handler_isolates_an_image_the_model_refuses(road_model):
    from beam_jobs.handlers import InferenceFailure, SavedModelHandler, Segmentation
    from beam_jobs.sources import ImageItem

    handler = SavedModelHandler(str(road_model.parent))
    model = handler.load_model()
    a, b = _rgb(20, 30), _rgb(10, 12, 1)
    # Passes no validation on purpose: the graph fails the whole batch on it.
    batch = [ImageItem("a.png", _png(a)), ImageItem("bad.png", b"GIF89a broken"),
             ImageItem("b.png", _png(b))]
    out = handler.run_inference(batch, model)
    assert [type(r.inference) for r in out] == [Segmentation, InferenceFailure, Segmentation]
    assert "InvalidArgument" in out[1].inference.reason
    np.testing.assert_array_equal(out[0].inference.class_ids, fakes.rule_class_ids(a))
    np.testing.assert_array_equal(out[2].inference.class_ids, fakes.rule_class_ids(b))
    conf = np.asarray(Image.open(io.BytesIO(out[0].inference.confidence_png)))
    np.testing.assert_array_equal(conf, fakes.rule_confidence(a))
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
    run = _published(out, _run_mixed(out, tmp_path / "in", good, bad, "--model-dir",
                                     road_model.parent, "--batch-size", 3, "--overlays"))
    assert sorted(p.name for p in (run / "overlays").iterdir()) == sorted(
        pathlib.Path(n).stem + ".png" for n in good)
    assert not (run / "metrics.json").exists()  # no ground truth, nothing to score
    # Rerun: a new run folder replaces the first one, no stale files.
    summary2 = _run("--input", tmp_path / "in", "--output", out, "--dataset", "folder",
                    "--model-dir", road_model.parent, "--max-pixels", 1_000_000)
    assert summary2["ok"] == len(good)
    assert [p.name for p in (out / "runs").iterdir()] == [summary2["run_id"]]
    assert not list(out.rglob("*.tmp"))


def test_fake_handler_refusals_and_failed_batches(tmp_path, road_model):
    """A ModelHandler that refuses one image (InferenceFailure) and raises on another (the
    whole call fails; RunInference dead-letters it): exactly those two are dead letters, at
    the inference stage with their reasons, and the others come out with the rule's masks."""
    folder = tmp_path / "in"
    folder.mkdir()
    images = {f"img_{i}.png": _rgb(12, 20 + i, seed=i) for i in range(5)}
    for name, rgb in images.items():
        (folder / name).write_bytes(_png(rgb))
    handler = fakes.make_fake_handler(refuse={"img_1.png": "refused by the fake"},
                                      raise_on=["img_3.png"], batch_size=1)
    good = {n: rgb for n, rgb in images.items() if n not in ("img_1.png", "img_3.png")}
    out = tmp_path / "out"
    summary = _run("--input", folder, "--output", out, "--dataset", "folder",
                   "--model-dir", road_model, "--batch-size", 1, handler=handler,
                   inspect=_inspect(
                       results=[_expected_record(n, rgb, model=("fake", 0))
                                for n, rgb in good.items()],
                       dead={"img_1.png": ("inference", "refused by the fake"),
                             "img_3.png": ("inference", "RuntimeError: RuntimeError("
                                                        "'fake failure on img_3.png')")}))
    run = _published(out, summary)
    assert summary["failed_by_stage"] == {"inference": 2} and summary["ok"] == 3
    for name, rgb in good.items():
        np.testing.assert_array_equal(_mask(run, name), fakes.rule_class_ids(rgb), name)


def test_folder_with_labels_dir(tmp_path, road_model):
    """Gray images, labels with an ignored strip: the confusion matrix and the road table
    counted by hand."""
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    # 30x40 image: bright (200, road by the rule) in rows 10.., dark (50) above.
    value = np.full((30, 40), 50, np.uint8)
    value[10:] = 200
    # label: road in rows 15.., columns 0..4 ignored (255)
    label = np.zeros((30, 40), np.uint8)
    label[15:] = 1
    label[:, :5] = 255
    for name, lab in (("a", label), ("b", np.full((30, 40), 7, np.uint8)), ("c", None)):
        (images / f"{name}.png").write_bytes(_png(fakes.gray(value)))
        if lab is not None:
            (labels / f"{name}.png").write_bytes(_png(lab))
    # Hand counts over the 30x35 scored pixels (columns 5..39):
    #   TN rows 0..9 = 350, FP rows 10..14 = 175, FN 0, TP rows 15..29 = 525.
    tn, fp, fn, tp = 350, 175, 0, 525

    def scores(actual):
        assert len(actual) == 1
        m = actual[0]
        assert m["confusion_matrix"] == [[tn, fp], [fn, tp]], m["confusion_matrix"]
        overall = m["kitti"]["overall"]
        # Confidence 50 or 200: at thresholds 51..200 (first: 51/255) TP 525, FP 175.
        assert overall["MaxF"] == pytest.approx(2 * tp / (2 * tp + fp + fn), rel=1e-9)
        assert (overall["PRE"], overall["REC"]) == (tp / (tp + fp), 1.0)
        assert overall["threshold"] == pytest.approx(51 / 255)
        assert overall["num_images"] == 1 and m["split_size"] == 1

    out = tmp_path / "out"
    summary = _run("--input", images, "--labels-dir", labels, "--output", out,
                   "--dataset", "folder", "--model-dir", road_model,
                   inspect=_inspect(
                       dead={"b.png": ("ground_truth", f"{labels / 'b.png'}: label values "
                                                       "must be in [0, 2) or 255, found [7]")},
                       scores=scores))
    out = _published(out, summary)
    assert summary["ok"] == 2
    assert (out / "pr_curve.png").is_file()


@pytest.fixture()
def grpc_server(road_model):
    from tfserving_dev.server import start_dev_server
    server = start_dev_server(road_model.parent, "fcn8s")
    yield server
    server.stop()


def test_grpc_folder_with_bad_files(tmp_path, grpc_server):
    good, bad = make_mixed_folder(tmp_path / "in")
    _run_mixed(tmp_path / "out", f"{tmp_path / 'in'}/*", good, bad, "--mode", "grpc",
               "--server", grpc_server.address, "--model-name", "fcn8s",
               "--model-version", 1, "--batch-size", 4,
               class_names=["0", "1"])  # no --model-dir: the job knows ids, not names


def test_grpc_job_checks_the_server_and_the_model_before_it_starts(tmp_path, grpc_server,
                                                                    capsys):
    # On a runner of this machine a wrong address, model name or version is one line and exit
    # 2 before any image is read, not every batch retried and dead-lettered.
    from beam_jobs.segment import main
    from tests.test_cli_errors import closed_port, one_error

    make_mixed_folder(tmp_path / "in")
    # (no retries: without the check the job would end soon, every image a dead letter)
    common = ["--input", f"{tmp_path / 'in'}/*", "--output", str(tmp_path / "out"),
              "--mode", "grpc", "--timeout", "5", "--retries", "0", "--batch-retries", "0"]
    port = closed_port()
    assert one_error(capsys, main, common + ["--server", f"127.0.0.1:{port}",
                                             "--model-name", "fcn8s"]) == \
        f"error: 127.0.0.1:{port}: cannot connect: connection refused"
    for wrong in (["--model-name", "fcn9s"], ["--model-name", "fcn8s", "--model-version", "7"]):
        line = one_error(capsys, main, common + ["--server", grpc_server.address, *wrong])
        assert line.startswith(f"error: {grpc_server.address}: NOT_FOUND: "), line
        assert wrong[1] in line and wrong[-1] in line
    assert not (tmp_path / "out").exists()


def test_grpc_handler_needs_the_segment_encoded_signature(monkeypatch):
    from beam_jobs.handlers import TFServingHandler

    class Client:  # a server whose model has only serving_default
        def get_model_metadata(self):
            return {"signature_def": {"serving_default": {}}}

        def close(self):
            pass
    handler = TFServingHandler("127.0.0.1:1", "plain", timeout=1)
    monkeypatch.setattr(handler, "create_client", Client)
    with pytest.raises(ValueError, match="127.0.0.1:1/plain: the served model has no "
                                         "segment_encoded signature .*serving_default"):
        handler.check_model()


def test_grpc_handler_isolates_an_image_the_server_refuses(grpc_server):
    from beam_jobs.handlers import InferenceFailure, Segmentation, TFServingHandler
    from beam_jobs.sources import ImageItem

    handler = TFServingHandler(grpc_server.address, "fcn8s", timeout=20)
    client = handler.create_client()
    b = _rgb(10, 12, 1)
    batch = [ImageItem("a.png", _png(_rgb(20, 30))), ImageItem("bad.png", b"\x89PNG broken"),
             ImageItem("b.png", _png(b))]
    out = handler.request(batch, client)
    assert [type(r.inference) for r in out] == [Segmentation, InferenceFailure, Segmentation]
    assert "INVALID_ARGUMENT" in out[1].inference.reason
    np.testing.assert_array_equal(out[2].inference.class_ids, fakes.rule_class_ids(b))
    client.close()


def test_grpc_handler_splits_requests_a_message_limit_refuses(road_model, monkeypatch):
    """A server that takes at most 1 MiB per message (gRPC's own limit check, as a proxy or
    a server with gRPC's defaults would apply it): a batch over it is split until it
    passes, later batches stay under it, and an image over it alone is a dead letter."""
    from beam_jobs.handlers import InferenceFailure, TFServingHandler
    from beam_jobs.sources import ImageItem
    from tfserving_dev import server as dev_server

    limit = 1 << 20
    monkeypatch.setattr(dev_server, "MAX_MESSAGE_BYTES", limit)
    server = dev_server.start_dev_server(road_model.parent, "fcn8s")
    try:
        # noise compresses badly: about 405 kB a PNG, so 4 of them are 1.6 MB
        images = [_rgb(300, 450, seed) for seed in range(4)]
        batch = [ImageItem(f"{i}.png", _png(a, compress_level=0)) for i, a in enumerate(images)]
        assert sum(len(item.data) for item in batch) > limit
        handler = TFServingHandler(server.address, "fcn8s", timeout=20)
        client = handler.create_client()
        out = handler.request(batch, client)
        for result, image in zip(out, images):
            np.testing.assert_array_equal(result.inference.class_ids, fakes.rule_class_ids(image))
        assert 0 < handler._max_batch_bytes < limit  # learned: later requests stay under it
        huge = _rgb(700, 700, 9)  # 1.47 MB alone
        out = handler.request([batch[0], ImageItem("huge.png", _png(huge, compress_level=0))],
                              client)
        np.testing.assert_array_equal(out[0].inference.class_ids, fakes.rule_class_ids(images[0]))
        assert isinstance(out[1].inference, InferenceFailure)
        assert "RESOURCE_EXHAUSTED" in out[1].inference.reason
        assert f"over the server's limit of {limit:,} bytes" in out[1].inference.reason
        client.close()
    finally:
        server.stop()


# A pinhole camera 1.6 m above a flat road (f = 50 px, principal point (100, 10)): the
# bird's-eye grid (6..46 m ahead, +-10 m) lands in rows 11..24 of these small images.
SMALL_CALIB = ("P2: 50 0 100 0 0 50 10 0 0 0 1 0\n"
               "R0_rect: 1 0 0 0 1 0 0 0 1\n"
               "Tr_cam_to_road: 1 0 0 0 0 1 0 -1.6 0 0 1 0\n")


def _blocks(h, w, bright_rows, bright_cols) -> np.ndarray:
    """Gray image: 200 (road by the rule) in the given rows x columns, 50 elsewhere."""
    v = np.full((h, w), 50, np.uint8)
    v[bright_rows, bright_cols] = 200
    return fakes.gray(v)


def _kitti_gt(h, w, valid_from, road_rows, road_cols) -> np.ndarray:
    """KITTI ground-truth colours: red = evaluated, red + blue (magenta) = road; rows above
    `valid_from` black (not evaluated)."""
    g = np.zeros((h, w, 3), np.uint8)
    g[valid_from:, :, 0] = 255
    road = np.zeros((h, w), bool)
    road[road_rows, road_cols] = True
    g[road & (g[..., 0] > 0), 2] = 255
    return g


# Two scored KITTI images, counted by hand (TP bright road, FP bright non-road, FN dark road,
# TN dark non-road, among evaluated pixels):
#   um_000000 60x200: evaluated rows 10..59 (10000 px); road rows 30.., columns 0..132
#     (3990); bright rows 20.., columns 0..99 (4000): TP 3000, FP 1000, FN 990, TN 5010.
#   uu_000001 50x160: evaluated rows 5.. (7200); road rows 20.., columns 0..79 (2400);
#     bright rows 15.., columns 0..119 (4200): TP 2400, FP 1800, FN 0, TN 3000.
# The bird's-eye grid sees rows 11..24 of these images: uu's road and both brightnesses.
KITTI_SCENES = {
    "um_000000": (_blocks(60, 200, slice(20, None), slice(0, 100)),
                  _kitti_gt(60, 200, 10, slice(30, None), slice(0, 133))),
    "uu_000001": (_blocks(50, 160, slice(15, None), slice(0, 120)),
                  _kitti_gt(50, 160, 5, slice(20, None), slice(0, 80))),
}
KITTI_HAND = {"um": (3000, 1000, 990, 5010), "uu": (2400, 1800, 0, 3000)}


def _kitti_tree(root: pathlib.Path) -> None:
    """training/image_2 + gt_image_2 + calib: the two scenes above, one ground truth of the
    wrong size (umm_000002), one image without ground truth (um_000003, segmented, not
    scored)."""
    img_dir, gt_dir = root / "training" / "image_2", root / "training" / "gt_image_2"
    img_dir.mkdir(parents=True)
    gt_dir.mkdir(parents=True)
    (root / "training" / "calib").mkdir()
    scenes = {**KITTI_SCENES,
              "umm_000002": (_blocks(60, 200, slice(30, None), slice(None)),
                             _kitti_gt(58, 200, 10, slice(30, None), slice(None))),
              "um_000003": (_blocks(40, 100, slice(10, None), slice(50, None)), None)}
    for name, (image, gt) in scenes.items():
        (img_dir / f"{name}.png").write_bytes(_png(image))
        (root / "training" / "calib" / f"{name}.txt").write_text(SMALL_CALIB)
        if gt is not None:
            cat, n = name.split("_")
            (gt_dir / f"{cat}_road_{n}.png").write_bytes(_png(gt))


def _f(tp, fp, fn) -> float:
    return 2 * tp / (2 * tp + fp + fn)


def test_kitti_layout_known_answers(tmp_path, road_model):
    from model.data import kitti_bev

    _kitti_tree(tmp_path / "kitti")
    tp, fp, fn, tn = (sum(v[i] for v in KITTI_HAND.values()) for i in range(4))
    assert (tp, fp, fn, tn) == (5400, 2800, 990, 8010)
    # Bird's-eye view: the rule's map and the ground truth, each resampled by the image's
    # calibration (model.data.kitti_bev, checked against the devkit in test_kitti_bev.py),
    # counted here.
    bev_pairs = []
    for stem, (image, gt) in KITTI_SCENES.items():
        table = kitti_bev.lookup_for_file(tmp_path / "kitti/training/calib" / f"{stem}.txt",
                                          image.shape[:2])
        label = np.where(gt[..., 0] > 0, (gt[..., 2] > 0).astype(np.uint8), 255)
        bev_label = kitti_bev.label_to_bev(label.astype(np.uint8), table)
        # as KITTI gt colours: evaluated (red) where the label is 0/1, road (blue) where 1
        bev_gt = np.dstack([(bev_label != 255) * 255, np.zeros_like(bev_label),
                            (bev_label == 1) * 255]).astype(np.uint8)
        bev_pairs.append((kitti_bev.confidence_to_bev(fakes.rule_confidence(image), table),
                          bev_gt))
    bev_counts = _devkit_counts(bev_pairs)
    assert bev_counts[0][0] > 0 and bev_counts[1][0] > 0  # road and non-road in view
    bev_max_f, bev_k = _max_f(*bev_counts)

    def scores(actual):
        (m,) = actual
        assert m["confusion_matrix"] == [[tn, fp], [fn, tp]], m["confusion_matrix"]
        # Confidence is 50 or 200 everywhere: every threshold 51..200 gives the counts above
        # (the devkit takes the first, 51/255), 0..50 calls every pixel road, 201.. none.
        for group, (g_tp, g_fp, g_fn, _) in [("overall", (tp, fp, fn, tn)),
                                             *((c, KITTI_HAND[c]) for c in ("um", "uu"))]:
            s = m["kitti"][group]
            assert s["MaxF"] == pytest.approx(_f(g_tp, g_fp, g_fn), rel=1e-9), group
            assert s["PRE"] == pytest.approx(g_tp / (g_tp + g_fp), rel=1e-12), group
            assert s["REC"] == pytest.approx(g_tp / (g_tp + g_fn), rel=1e-12), group
            assert s["threshold"] == pytest.approx(51 / 255), group
            assert s["IoU"] == pytest.approx(g_tp / (g_tp + g_fp + g_fn), rel=1e-12), group
            assert s["num_images"] == (2 if group == "overall" else 1)
        assert m["split_size"] == 2 and m["task"] == "road"
        assert set(m["kitti_bev"]) == {"um", "uu", "overall"}
        assert m["kitti_bev"]["overall"]["MaxF"] == pytest.approx(bev_max_f, rel=1e-9)
        assert m["kitti_bev"]["overall"]["threshold"] == pytest.approx(bev_k / 255)

    gt_path = tmp_path / "kitti" / "training" / "gt_image_2" / "umm_road_000002.png"
    out = tmp_path / "out"
    summary = _run("--input", tmp_path / "kitti", "--output", out, "--dataset", "kitti",
                   "--model-dir", road_model, "--batch-size", 2,
                   inspect=_inspect(
                       dead={"umm_000002.png": ("ground_truth", f"ground truth {gt_path} is "
                                                "200x58 but the image is 200x60")},
                       scores=scores))
    out = _published(out, summary)
    results = {_name(r["path"]): r for r in _read_jsonl(out, "results")}
    assert set(results) == {"um_000000.png", "uu_000001.png", "um_000003.png"}
    assert {n: r["evaluated"] for n, r in results.items()} == {
        "um_000000.png": True, "uu_000001.png": True, "um_000003.png": False}
    names = {"um_000000": "um_road_000000.png", "uu_000001": "uu_road_000001.png",
             "um_000003": "um_road_000003.png"}
    assert sorted(p.name for p in (out / "kitti_submission").iterdir()) == sorted(names.values())
    for stem, sub in names.items():
        image = np.asarray(Image.open(tmp_path / "kitti/training/image_2" / f"{stem}.png"))
        np.testing.assert_array_equal(_mask(out, stem), fakes.rule_class_ids(image))
        conf = np.asarray(Image.open(out / "confidence" / sub))
        np.testing.assert_array_equal(conf, fakes.rule_confidence(image))
        # the upload: the rule's perspective map resampled by the image's calibration
        table = kitti_bev.lookup_for_file(tmp_path / "kitti/training/calib" / f"{stem}.txt",
                                          conf.shape)
        np.testing.assert_array_equal(np.asarray(Image.open(out / "kitti_submission" / sub)),
                                      kitti_bev.confidence_to_bev(conf, table))
    assert (out / "pr_curve.png").stat().st_size > 0


def _devkit_counts(pairs):
    """TP, FP, FN at each threshold k (road iff confidence >= k, the devkit's prob >= k/255)
    summed over (confidence, KITTI gt RGB) pairs; road = blue > 0, evaluated = red > 0 (the
    devkit's getGroundTruth on the BGR image it reads)."""
    road_hist, other_hist = np.zeros(256, np.int64), np.zeros(256, np.int64)
    for conf, gt in pairs:
        road, valid = gt[..., 2] > 0, gt[..., 0] > 0
        road_hist += np.bincount(conf[road & valid], minlength=256)
        other_hist += np.bincount(conf[~road & valid], minlength=256)
    at_or_above = lambda h: np.cumsum(h[::-1])[::-1]  # noqa: E731 - pixels with v >= k
    tp, fp = at_or_above(road_hist), at_or_above(other_hist)
    return tp, fp, road_hist.sum() - tp


def _max_f(tp, fp, fn) -> tuple[float, int]:
    f = np.where(tp > 0, 2 * tp / np.maximum(2 * tp + fp + fn, 1), 0.0)
    return float(f.max()), int(np.argmax(f))


def test_kitti_real_samples_known_answers(tmp_path, kitti_root, road_model):
    """Real KITTI images through the threshold model: masks, the confusion matrix and the
    perspective MaxF / PRE / REC per category and overall equal the rule applied to the
    pixels, scored against the ground truth as the devkit reads it."""
    pattern = kitti_root / "training" / "image_2" / "*_00001[0-9].png"  # 15: um, umm, uu
    images = sorted(pattern.parent.glob(pattern.name))
    data = {}
    for p in images:
        cat, n = p.stem.split("_")
        rgb = np.asarray(Image.open(p).convert("RGB"))
        gt = np.asarray(Image.open(kitti_root / "training" / "gt_image_2" /
                                   f"{cat}_road_{n}.png").convert("RGB"))
        data[p.name] = (cat, rgb, gt)

    # Expected values first: the matchers travel with the pipeline (pickled), so they
    # carry numbers, not images.
    cm = np.zeros((2, 2), np.int64)
    for _, rgb, gt in data.values():
        ids, valid = fakes.rule_class_ids(rgb), gt[..., 0] > 0
        road = (gt[..., 2] > 0).astype(np.uint8)
        np.add.at(cm, (road[valid], ids[valid]), 1)
    groups = {}
    for group, cats in (("overall", {"um", "umm", "uu"}), ("um", {"um"}),
                        ("umm", {"umm"}), ("uu", {"uu"})):
        tp, fp, fn = _devkit_counts([(fakes.rule_confidence(rgb), gt)
                                     for c, rgb, gt in data.values() if c in cats])
        max_f, k = _max_f(tp, fp, fn)
        groups[group] = (max_f, k, tp[k] / (tp[k] + fp[k]), tp[k] / (tp[k] + fn[k]))
    cm = cm.tolist()

    def scores(actual):
        (m,) = actual
        assert m["confusion_matrix"] == cm
        for group, (max_f, k, pre, rec) in groups.items():
            s = m["kitti"][group]
            assert s["MaxF"] == pytest.approx(max_f, rel=1e-9), group
            assert s["threshold"] == pytest.approx(k / 255), group
            assert (s["PRE"], s["REC"]) == pytest.approx((pre, rec), rel=1e-12), group
        assert m["task"] == "road"

    out = tmp_path / "out"
    summary = _run("--input", pattern, "--output", out, "--dataset", "kitti",
                   "--model-dir", road_model, "--batch-size", 4,
                   inspect=_inspect(dead={}, scores=scores,
                                    results=[_expected_record(n, rgb, evaluated=True)
                                             for n, (_, rgb, _) in data.items()]))
    run = _published(out, summary)
    assert summary["ok"] == len(images) == 15 and summary["task"] == "road"
    for name, (_, rgb, _) in data.items():
        np.testing.assert_array_equal(_mask(run, name), fakes.rule_class_ids(rgb), name)


def test_kitti_missing_calibration_is_a_dead_letter(tmp_path, road_model):
    _kitti_tree(tmp_path / "kitti")
    (tmp_path / "kitti" / "training" / "calib" / "uu_000001.txt").unlink()
    (tmp_path / "kitti" / "training" / "calib" / "um_000003.txt").write_text("P2: 1 2 3\n")
    out = tmp_path / "out"
    summary = _run("--input", tmp_path / "kitti", "--output", out, "--dataset", "kitti",
                   "--model-dir", road_model)
    out = _published(out, summary)
    dead = {_name(d["path"]): d for d in _read_jsonl(out, "dead_letter")}
    assert dead["uu_000001.png"]["stage"] == "calibration"
    assert "calib/uu_000001.txt not found" in dead["uu_000001.png"]["reason"]
    assert dead["um_000003.png"]["stage"] == "calibration"
    assert "um_000003.txt:1" in dead["um_000003.png"]["reason"]
    assert dead["umm_000002.png"]["stage"] == "ground_truth"
    # the others are untouched: um_000000 is written and scored
    results = {_name(r["path"]): r for r in _read_jsonl(out, "results")}
    assert set(results) == {"um_000000.png"}
    assert summary["failed_by_stage"] == {"calibration": 2, "ground_truth": 1}
    tp, fp, fn, tn = KITTI_HAND["um"]
    assert summary["metrics"]["confusion_matrix"] == [[tn, fp], [fn, tp]]
    bev = np.asarray(Image.open(out / "kitti_submission" / "um_road_000000.png"))
    assert bev.shape == (800, 400) and bev.dtype == np.uint8
    np.testing.assert_array_equal(
        np.asarray(Image.open(out / "confidence" / "um_road_000000.png")),
        fakes.rule_confidence(KITTI_SCENES["um_000000"][0]))


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
    perspective; umm/uu have no lane task and are segmented only; the perspective lane
    scores are the rule's against the lane ground truth; the zip holds exactly the maps."""
    import zipfile

    from model.data import kitti_bev

    lane_model = fakes.export_threshold_model(tmp_path_factory.mktemp("lane"),
                                              {**fakes.KITTI_ROAD_CONFIG, "task": "lane"})
    pattern = kitti_root / "training" / "image_2" / "*_00001[0-9].png"
    images = sorted(pattern.parent.glob(pattern.name))
    um = [p for p in images if p.name.startswith("um_")]
    assert um and len(um) < len(images)
    pairs = [(fakes.rule_confidence(np.asarray(Image.open(p).convert("RGB"))),
              np.asarray(Image.open(kitti_root / "training" / "gt_image_2" /
                                    p.name.replace("um_", "um_lane_")).convert("RGB")))
             for p in um]
    tp, fp, fn = _devkit_counts(pairs)
    max_f, k = _max_f(tp, fp, fn)

    def scores(actual):
        (m,) = actual
        assert m["task"] == "lane" and set(m["kitti_bev"]) == {"um", "overall"}
        assert m["kitti"]["overall"]["MaxF"] == pytest.approx(max_f, rel=1e-9)
        assert m["kitti"]["overall"]["threshold"] == pytest.approx(k / 255)

    out = tmp_path / "out"
    summary = _run("--input", pattern, "--output", out, "--dataset", "kitti",
                   "--model-dir", lane_model, "--submission-zip", inspect=_inspect(
                       dead={}, scores=scores))
    out = _published(out, summary)
    assert summary["submission_zip"] == str(out / "kitti_submission.zip")
    assert summary["ok"] == len(images) and summary["task"] == "lane"
    names = sorted(f"um_lane_{p.stem.split('_')[1]}.png" for p in um)
    assert sorted(p.name for p in (out / "kitti_submission").iterdir()) == names
    assert sorted(p.name for p in (out / "confidence").iterdir()) == names
    results = {_name(r["path"]): r for r in _read_jsonl(out, "results")}
    for p in images:
        assert results[p.name]["evaluated"] is p.name.startswith("um_")
        assert ("kitti_submission" in results[p.name]) is p.name.startswith("um_")
    # the upload is the rule's perspective map resampled by the image's calibration
    for p, name in zip(um, names):
        conf = np.asarray(Image.open(out / "confidence" / name))
        np.testing.assert_array_equal(conf, fakes.rule_confidence(
            np.asarray(Image.open(p).convert("RGB"))))
        table = kitti_bev.lookup_for_file(kitti_root / "training" / "calib" /
                                          f"{p.stem}.txt", conf.shape)
        bev = np.asarray(Image.open(out / "kitti_submission" / name))
        np.testing.assert_array_equal(bev, kitti_bev.confidence_to_bev(conf, table))
    with zipfile.ZipFile(out / "kitti_submission.zip") as archive:
        assert sorted(archive.namelist()) == names
        for name in names:
            assert archive.read(name) == (out / "kitti_submission" / name).read_bytes()


COCO_BANDS = (85.5, 170.5)  # background / person / car by brightness


def test_coco_missing_images_and_confusion_matrix(tmp_path, coco_root):
    """A three-class bands model on COCO samples: the confusion matrix is the rule's classes
    against each protocol's semantic masks (model.data.coco, checked against pycocotools and
    torchvision in test_data_coco.py); a listed image that is not there is a dead letter."""
    from model.data import coco as coco_mod

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
    names = ["background", "person", "car"]
    config = {**fakes.KITTI_ROAD_CONFIG, "dataset": "coco", "task": None,
              "categories": ["person", "car"], "class_names": names,
              "colours": [[0, 0, 0], [220, 20, 60], [0, 0, 142]], "num_classes": 3,
              "label_format": "ids"}
    model = fakes.export_threshold_model(tmp_path / "models", config, bands=COCO_BANDS)
    index = coco_mod.load_coco(ann_file)
    rgbs = {i["file_name"]: np.asarray(Image.open(coco_root / "val2017" / i["file_name"])
                                       .convert("RGB")) for i in images}

    def expected_cm(protocol):
        cm = np.zeros((3, 3), np.int64)
        for info in images:
            pred = fakes.rule_class_ids(rgbs[info["file_name"]], bands=COCO_BANDS)
            label = coco_mod.semantic_mask(index, info, {1: 1, 3: 2}, protocol=protocol)
            valid = label != 255
            np.add.at(cm, (label[valid], pred[valid]), 1)
        return cm.tolist()

    def scores_of(protocol):
        cm = expected_cm(protocol)  # numbers only: the matcher is pickled with the pipeline

        def check(actual):
            (m,) = actual
            assert m["coco_protocol"] == protocol and m["class_names"] == names
            assert m["confusion_matrix"] == cm, protocol
            assert m["split_size"] == 3
        return check

    results = [_expected_record(n, rgb, evaluated=True, class_names=names, bands=COCO_BANDS)
               for n, rgb in rgbs.items()]
    out = tmp_path / "out"
    summary = _run("--input", coco_root / "val2017", "--output", out, "--dataset", "coco",
                   "--annotations", ann_file, "--model-dir", model, "--batch-size", 2,
                   inspect=_inspect(results=results, scores=scores_of("fcnseg"), dead={
                       "000000999999.jpg": ("read", "file not found")}))
    out = _published(out, summary)
    assert (out / "confusion_matrix.png").is_file()
    for name, rgb in rgbs.items():
        np.testing.assert_array_equal(_mask(out, name),
                                      fakes.rule_class_ids(rgb, bands=COCO_BANDS), name)
    # The torchvision protocol: the same predictions scored against torchvision's masks.
    assert expected_cm("torchvision") != expected_cm("fcnseg")
    _run("--input", coco_root / "val2017", "--output", tmp_path / "out_tv", "--dataset", "coco",
         "--annotations", ann_file, "--model-dir", model, "--coco-protocol", "torchvision",
         inspect=_inspect(scores=scores_of("torchvision")))


def test_multiprocess_direct_runner(tmp_path, road_model):
    good, bad = make_mixed_folder(tmp_path / "in")
    pipeline = test_pipeline.TestPipeline(options=PipelineOptions(
        ["--direct_num_workers", "2", "--direct_running_mode", "multi_processing"]))
    _run_mixed(tmp_path / "out", tmp_path / "in", good, bad, "--model-dir", road_model.parent,
               "--batch-size", 2, pipeline=pipeline)


def test_grpc_survives_server_restart(tmp_path, road_model):
    """Stop the server while the job runs and start it again on the same port: every image
    still comes out, with the rule's mask (client retries, then Beam's backoff)."""
    from tfserving_dev.server import start_dev_server

    folder = tmp_path / "in"
    folder.mkdir()
    n = 12  # enough to stop after 3 masks and still have most of the job left
    images = {f"img_{i:02d}.png": _rgb(120, 300, seed=i) for i in range(n)}
    for name, rgb in images.items():
        (folder / name).write_bytes(_png(rgb))
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
                       "--batch-size", 1, "--timeout", 10, inspect=_inspect(dead={}))
    finally:
        t.join(timeout=60)
        state["server"].stop()
    assert state["masks_at_stop"] is not None and state["masks_at_stop"] < n
    assert summary["ok"] == n and summary["failed"] == 0
    run = _published(out, summary)
    for name, rgb in images.items():
        np.testing.assert_array_equal(_mask(run, name), fakes.rule_class_ids(rgb), name)
