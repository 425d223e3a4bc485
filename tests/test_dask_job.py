"""The segmentation job on Dask distributed (`--runner DaskRunner`, a scheduler and two worker
processes on loopback) gives the local runner's outputs: masks and maps byte for byte, the
same result rows, dead letters, metrics and published-run layout."""
from __future__ import annotations

import importlib.util
import io
import json
import os
import pathlib
import signal
import threading
import time

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("distributed")

REPO = pathlib.Path(__file__).resolve().parents[1]
IMAGE_SIZE = (64, 128)
ROAD_CONFIG = {"dataset": "kitti", "task": "road", "class_names": ["non-road", "road"],
               "colours": [[0, 0, 0], [255, 0, 255]], "image_size": list(IMAGE_SIZE),
               "num_classes": 2, "fc_width": 16, "normalization": "caffe",
               "label_format": "kitti"}
# Six KITTI training pairs of all three categories (with calibration and ground truth).
KITTI_SIX = "training/image_2/u*_00000[046].png"  # um, umm, uu


@pytest.fixture(scope="module")
def road_model(tmp_path_factory) -> pathlib.Path:
    """models/fcn8s: a tiny binary road FCN with random score layers (tests/tiny_models.py)."""
    from export.savedmodel import export_saved_model
    from tests.tiny_models import tiny_fcn

    base = tmp_path_factory.mktemp("models")
    export_saved_model(tiny_fcn(2, IMAGE_SIZE, 0), ROAD_CONFIG, base, "fcn8s", version=1)
    return base / "fcn8s"


def _cluster_tool():
    spec = importlib.util.spec_from_file_location("dask_cluster",
                                                  REPO / "tools" / "dask_cluster.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def dask_cluster(tmp_path_factory):
    """`tools/dask_cluster.py start`: a scheduler and two workers (one thread each) on
    127.0.0.1; stopped by their process ids at the end, whatever the tests did."""
    tool = _cluster_tool()
    state = tmp_path_factory.mktemp("dask") / "cluster.json"
    try:
        yield tool.start(workers=2, threads=1, memory_limit="4GiB", state=state)
    finally:
        stopped = tool.stop(state)
        assert stopped and not any(tool._alive(p) for p in stopped)


@pytest.fixture(scope="module")
def dask_address(dask_cluster):
    return dask_cluster["address"]


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def folder_with_a_corrupt_image(folder: pathlib.Path) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate(((60, 100), (48, 64), (75, 124))):
        (folder / f"good{i}.png").write_bytes(
            _png(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)))
    damaged = bytearray(_png(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)))
    damaged[200:260] = bytes(60)  # zeros over the compressed pixels: a bad chunk CRC
    (folder / "corrupt.png").write_bytes(bytes(damaged))


def _jsonl(run: pathlib.Path, prefix: str) -> list[dict]:
    rows = []
    for f in sorted(run.glob(f"{prefix}-*.jsonl")):
        rows += [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
    return rows


def _published(out: pathlib.Path, summary: dict) -> pathlib.Path:
    run = out / "runs" / (out / "LATEST").read_text().strip()
    assert run == pathlib.Path(summary["run_dir"]) and (out / "latest").resolve() == run
    assert [p.name for p in (out / "runs").iterdir()] == [run.name]
    return run


def _rows(run: pathlib.Path) -> dict:
    """Result rows by input path, without timing, batching and this run's folder."""
    timing = {"latency_ms", "batch_latency_ms", "batch_size"}
    out = {}
    for row in _jsonl(run, "results"):
        out[row["path"]] = {k: (os.path.relpath(v, run) if isinstance(v, str)
                                and v.startswith(str(run)) else v)
                            for k, v in row.items() if k not in timing}
    return out


def _files(run: pathlib.Path) -> dict:
    """Every per-image file of the run by relative path -> bytes."""
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*.png"))
            if p.parent != run}


def assert_same_outputs(local: tuple, dask: tuple) -> None:
    (l_out, l_sum), (d_out, d_sum) = local, dask
    l_run, d_run = _published(l_out, l_sum), _published(d_out, d_sum)
    for key in ("images_in", "ok", "failed", "failed_by_stage"):
        assert d_sum[key] == l_sum[key], key
    assert d_sum["counters"] == l_sum["counters"] and d_sum["counters"]["images_ok"] == l_sum["ok"]
    assert _rows(d_run) == _rows(l_run)

    def dead(run):
        return sorted(tuple(sorted(d.items())) for d in _jsonl(run, "dead_letter"))

    assert dead(d_run) == dead(l_run)
    l_files, d_files = _files(l_run), _files(d_run)
    assert sorted(d_files) == sorted(l_files) and l_files
    for name, data in l_files.items():
        assert d_files[name] == data, name
    assert sorted(p.name for p in d_run.iterdir() if p.is_file() and "-of-" not in p.name) == \
        sorted(p.name for p in l_run.iterdir() if p.is_file() and "-of-" not in p.name)
    if (l_run / "metrics.json").exists():
        assert json.loads((d_run / "metrics.json").read_text()) == \
            json.loads((l_run / "metrics.json").read_text())


def _run(tmp_path, name, args, *runner):
    from beam_jobs import segment

    out = tmp_path / name
    return out, segment.run([*map(str, args), "--output", str(out), *runner])


def test_kitti_on_dask_equals_local_runner(tmp_path, kitti_root, road_model, dask_address):
    args = ["--input", kitti_root / KITTI_SIX, "--dataset", "kitti", "--model-dir", road_model,
            "--batch-size", "4", "--overlays", "--submission-zip"]
    local = _run(tmp_path, "local", args)
    dask = _run(tmp_path, "dask", args, "--runner", "DaskRunner",
                "--dask_client_address", dask_address)
    assert dask[1]["runner"] == "DaskRunner"
    assert local[1]["ok"] == 6 and local[1]["failed"] == 0
    assert_same_outputs(local, dask)
    l_zip = _published(*local) / "kitti_submission.zip"
    d_zip = _published(*dask) / "kitti_submission.zip"
    import zipfile
    with zipfile.ZipFile(l_zip) as lz, zipfile.ZipFile(d_zip) as dz:
        assert sorted(dz.namelist()) == sorted(lz.namelist()) and len(lz.namelist()) == 6
        for name in lz.namelist():
            assert dz.read(name) == lz.read(name)


def test_folder_with_a_corrupt_image_on_dask(tmp_path, road_model, dask_address):
    folder_with_a_corrupt_image(tmp_path / "in")
    args = ["--input", tmp_path / "in", "--dataset", "folder", "--model-dir", road_model,
            "--batch-size", "2"]
    local = _run(tmp_path, "local", args)
    dask = _run(tmp_path, "dask", args, "--runner", "DaskRunner",
                "--dask_client_address", dask_address)
    assert local[1]["ok"] == 3 and local[1]["failed_by_stage"] == {"validate": 1}
    assert_same_outputs(local, dask)
    (dead,) = _jsonl(_published(*dask), "dead_letter")
    assert dead["path"].endswith("corrupt.png") and dead["stage"] == "validate"


@pytest.mark.slow
def test_lane_and_coco_on_dask(tmp_path, tmp_path_factory, kitti_root, coco_root, dask_address):
    """A lane model over um/umm/uu (um gets the lane maps) and COCO with an image the
    annotations list but the disk lacks (a `read` dead letter)."""
    from export.savedmodel import export_saved_model
    from tests.tiny_models import tiny_fcn

    base = tmp_path_factory.mktemp("lane")
    export_saved_model(tiny_fcn(2, IMAGE_SIZE, 1), {**ROAD_CONFIG, "task": "lane"}, base,
                       "fcn8s", version=1)
    args = ["--input", kitti_root / KITTI_SIX, "--dataset", "kitti", "--model-dir",
            base / "fcn8s", "--submission-zip"]
    dask_args = ["--runner", "DaskRunner", "--dask_client_address", dask_address]
    local = _run(tmp_path, "lane_local", args)
    dask = _run(tmp_path, "lane_dask", args, *dask_args)
    assert local[1]["task"] == "lane" and local[1]["ok"] == 6
    assert_same_outputs(local, dask)
    assert sorted(p.name for p in (_published(*dask) / "kitti_submission").iterdir()) == [
        "um_lane_000000.png", "um_lane_000004.png", "um_lane_000006.png"]

    ann = json.loads((coco_root / "annotations" / "instances_val2017_sample.json").read_text())
    images = sorted(ann["images"], key=lambda i: i["file_name"])[:3]
    ghost = {**images[0], "id": 999999999, "file_name": "000000999999.jpg"}
    keep = {i["id"] for i in images}
    ann_file = tmp_path / "instances.json"
    ann_file.write_text(json.dumps({**ann, "images": images + [ghost], "annotations": [
        a for a in ann["annotations"] if a["image_id"] in keep]}))
    coco_base = tmp_path_factory.mktemp("coco")
    export_saved_model(tiny_fcn(3, IMAGE_SIZE, 2), {
        **{k: v for k, v in ROAD_CONFIG.items() if k != "task"}, "dataset": "coco",
        "categories": ["person", "car"],
        "class_names": ["background", "person", "car"], "num_classes": 3,
        "colours": [[0, 0, 0], [220, 20, 60], [0, 0, 142]], "label_format": "ids"},
        coco_base, "fcn8s", version=1)
    args = ["--input", coco_root / "val2017", "--dataset", "coco", "--annotations", ann_file,
            "--model-dir", coco_base / "fcn8s", "--batch-size", "2"]
    local = _run(tmp_path, "coco_local", args)
    dask = _run(tmp_path, "coco_dask", args, *dask_args)
    assert local[1]["ok"] == 3 and local[1]["failed_by_stage"] == {"read": 1}
    assert_same_outputs(local, dask)


@pytest.mark.slow
def test_grpc_mode_on_dask(tmp_path, road_model, dask_address):
    """The workers call a TF Serving (the development server, in this process) over gRPC."""
    from tfserving_dev.server import start_dev_server

    folder_with_a_corrupt_image(tmp_path / "in")
    server = start_dev_server(road_model, "fcn8s")
    try:
        args = ["--input", tmp_path / "in", "--dataset", "folder", "--mode", "grpc",
                "--server", server.address, "--model-name", "fcn8s", "--model-dir",
                road_model, "--batch-size", "2"]
        local = _run(tmp_path, "local", args)
        dask = _run(tmp_path, "dask", args, "--runner", "DaskRunner",
                    "--dask_client_address", dask_address)
    finally:
        server.stop()
    assert local[1]["ok"] == 3 and local[1]["failed_by_stage"] == {"validate": 1}
    assert_same_outputs(local, dask)
    assert {r["model_version"] for r in _jsonl(_published(*dask), "results")} == {1}


def test_a_killed_worker_loses_no_input(tmp_path, kitti_root, road_model, dask_cluster):
    """SIGKILL the worker that is running tasks once the first mask is written: Dask reruns
    its lost tasks (its nanny restarts it), and every input still ends in exactly one result
    row, counted once, in one published run."""
    from distributed import Client

    pattern = kitti_root / "training/image_2/u*_00001[0-4].png"
    inputs = sorted(str(p) for p in kitti_root.glob("training/image_2/u*_00001[0-4].png"))
    out = tmp_path / "out"
    killed = []

    def kill_a_busy_worker():
        with Client(dask_cluster["address"]) as client:
            pids = client.run(os.getpid)
            deadline = time.time() + 300
            while time.time() < deadline and not killed:
                if list(out.glob("runs/*/masks/*.png")):
                    busy = [w for w, keys in client.processing().items() if keys]
                    if busy:
                        os.kill(pids[busy[0]], signal.SIGKILL)
                        killed.append(pids[busy[0]])
                        return
                time.sleep(0.05)

    killer = threading.Thread(target=kill_a_busy_worker, daemon=True)
    killer.start()
    summary = _run(tmp_path, "out", ["--input", pattern, "--dataset", "kitti", "--model-dir",
                                     road_model, "--batch-size", "2"],
                   "--runner", "DaskRunner", "--dask_client_address", dask_cluster["address"],
                   "--dask_npartitions", "4")[1]
    killer.join(timeout=10)
    assert killed and killed[0] in dask_cluster["worker_pids"]
    run = _published(out, summary)
    rows = [r["path"] for r in _jsonl(run, "results")]
    assert sorted(rows) == inputs and len(inputs) == 7  # each once, none lost
    assert _jsonl(run, "dead_letter") == []
    assert summary["ok"] == 7 and summary["counters"]["images_ok"] == 7
    assert sorted(p.name for p in (run / "kitti_submission").iterdir()) == sorted(
        pathlib.Path(p).name.replace("_0", "_road_0", 1) for p in inputs)


def test_no_scheduler_at_the_address_is_one_error_line(tmp_path, road_model, capsys):
    """Nothing listens on port 1 (privileged, never ours): the job says so in one line."""
    from beam_jobs import segment

    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "a.png").write_bytes(_png(np.zeros((32, 64, 3), np.uint8)))
    status = segment.main(["--input", str(folder), "--output", str(tmp_path / "out"),
                           "--mode", "inprocess", "--model-dir", str(road_model),
                           "--runner", "DaskRunner", "--dask_client_address", "127.0.0.1:1",
                           "--dask_connection_timeout", "2"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2
    assert err[-1].startswith("error: 127.0.0.1:1: cannot connect to the Dask scheduler: ")
    assert not (tmp_path / "out" / "LATEST").exists()
