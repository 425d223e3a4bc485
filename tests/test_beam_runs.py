"""The Beam job's runs: reruns that cannot mix, failed runs that leave the last good one,
write failures the runner retries, and s3:// against a local S3-compatible server (moto).
The model is the threshold fake (tests/fakes.py): every mask is known from the rule."""
from __future__ import annotations

import json
import pathlib
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("apache_beam")

from apache_beam.options.pipeline_options import PipelineOptions  # noqa: E402
from apache_beam.testing import test_pipeline  # noqa: E402

from tests import fakes  # noqa: E402
from tests.test_beam_segment import (SMALL_CALIB, _expected_record, _inspect,  # noqa: E402
                                     _png, _read_jsonl, _rgb, _run)


def _image(i: int) -> np.ndarray:
    return _rgb(24, 64, seed=i)


def _kitti_images(root: pathlib.Path, n: int) -> pathlib.Path:
    """training/image_2 with n KITTI-named images (um, umm, uu in turn), small and random
    (`_image(i)`), and their calib files (the bird's-eye-view submission needs them)."""
    folder, calib = root / "training" / "image_2", root / "training" / "calib"
    folder.mkdir(parents=True)
    calib.mkdir()
    for i in range(n):
        cat = ("um", "umm", "uu")[i % 3]
        (folder / f"{cat}_{i:06d}.png").write_bytes(_png(_image(i)))
        (calib / f"{cat}_{i:06d}.txt").write_text(SMALL_CALIB)
    return root


def _expected(n: int) -> list[tuple]:
    """The result records of `_kitti_images(.., n)` by the rule (not evaluated)."""
    return [_expected_record(f"{('um', 'umm', 'uu')[i % 3]}_{i:06d}.png", _image(i))
            for i in range(n)]


def _masks_follow_the_rule(run: pathlib.Path, n: int) -> None:
    for i in range(n):
        name = f"{('um', 'umm', 'uu')[i % 3]}_{i:06d}.png"
        np.testing.assert_array_equal(np.asarray(Image.open(run / "masks" / name)),
                                      fakes.rule_class_ids(_image(i)), name)


def _published(out: pathlib.Path) -> pathlib.Path:
    return out / "runs" / (out / "LATEST").read_text().strip()


def test_rerun_with_fewer_images_leaves_only_its_maps(tmp_path, road_model):
    """The 216-then-36 case in small: 12 images, then 3 into the same output. What is there
    to zip afterwards is the second run's 3 maps, not 3 new and 9 stale ones."""
    out = tmp_path / "out"
    first = _run("--input", _kitti_images(tmp_path / "a", 12), "--output", out,
                 "--dataset", "kitti", "--model-dir", road_model, "--no-evaluate")
    assert first["ok"] == 12
    assert len(list((_published(out) / "kitti_submission").iterdir())) == 12
    second = _run("--input", _kitti_images(tmp_path / "b", 3), "--output", out,
                  "--dataset", "kitti", "--model-dir", road_model, "--no-evaluate",
                  inspect=_inspect(results=_expected(3), dead={}))
    run = _published(out)
    _masks_follow_the_rule(run, 3)
    assert run == pathlib.Path(second["run_dir"]) and (out / "latest").resolve() == run
    assert len(list(run.glob("kitti_submission/*.png"))) == 3
    assert len(list(run.glob("masks/*.png"))) == 3
    assert len(_read_jsonl(run, "results")) == 3
    assert [p.name for p in (out / "runs").iterdir()] == [second["run_id"]]
    # Nothing of either run outside the run folders.
    assert sorted(p.name for p in out.iterdir()) == ["LATEST", "latest", "runs"]


def test_failed_rerun_keeps_the_previous_run(tmp_path, road_model, monkeypatch):
    """A rerun that dies midway (here: the disk refuses its 4th file for good) leaves the
    previous run published and whole; the next good run cleans the dead one up."""
    from beam_jobs import outputs

    out = tmp_path / "out"
    inputs = _kitti_images(tmp_path / "a", 6)
    first = _run("--input", inputs, "--output", out, "--dataset", "kitti",
                 "--model-dir", road_model, "--no-evaluate")
    before = {p.relative_to(out): p.read_bytes() for p in (out / "runs").rglob("*") if p.is_file()}

    real, calls = outputs.write_bytes, {"n": 0}

    def failing(path, data):
        calls["n"] += 1
        if calls["n"] >= 4:
            raise OSError(28, "No space left on device", path)
        real(path, data)

    monkeypatch.setattr(outputs, "write_bytes", failing)
    with pytest.raises(Exception, match="No space left"):
        _run("--input", inputs, "--output", out, "--dataset", "kitti",
             "--model-dir", road_model, "--no-evaluate")
    monkeypatch.setattr(outputs, "write_bytes", real)
    assert _published(out) == pathlib.Path(first["run_dir"])
    after = {p.relative_to(out): p.read_bytes() for p in
             (pathlib.Path(first["run_dir"])).rglob("*") if p.is_file()}
    assert after == before  # the published run, byte for byte
    assert len(list((out / "runs").iterdir())) == 2  # the dead run's partial folder

    third = _run("--input", inputs, "--output", out, "--dataset", "kitti",
                 "--model-dir", road_model, "--no-evaluate")
    assert [p.name for p in (out / "runs").iterdir()] == [third["run_id"]]


def test_transient_write_failure_is_retried_by_the_runner(tmp_path, road_model, monkeypatch):
    """A write that fails once (a storage 503) is not a dead letter: the error reaches the
    runner, which retries the bundle, and the image comes out. BundleBasedDirectRunner
    retries failed bundles as Dataflow, Flink and Spark do (the FnApiRunner does not)."""
    from beam_jobs import outputs

    real, failed = outputs.write_bytes, []

    def flaky(path, data):
        if path.endswith("um_000003.png") and "masks" in path and not failed:
            failed.append(path)
            raise OSError("503 Service Unavailable (injected)")
        real(path, data)

    monkeypatch.setattr(outputs, "write_bytes", flaky)
    out = tmp_path / "out"
    pipeline = test_pipeline.TestPipeline(
        options=PipelineOptions(["--runner", "BundleBasedDirectRunner"]))
    # The retried bundle's records come out once: equal_to fails on a duplicate.
    summary = _run("--input", _kitti_images(tmp_path / "a", 6), "--output", out,
                   "--dataset", "kitti", "--model-dir", road_model, "--no-evaluate",
                   pipeline=pipeline, inspect=_inspect(results=_expected(6), dead={}))
    assert failed, "the injected failure did not happen"
    assert summary["ok"] == 6 and summary["failed"] == 0
    run = _published(out)
    _masks_follow_the_rule(run, 6)  # um_000003's mask included
    assert _read_jsonl(run, "dead_letter") == []
    paths = [r["path"] for r in _read_jsonl(run, "results")]
    assert len(paths) == len(set(paths)) == 6  # the retried bundle's output counted once


# --- s3:// against a local S3-compatible server -----------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_server():
    """moto's S3 server in its own process (requirements-test.txt); boto3 from Beam's [aws]
    extra (requirements-aws.txt)."""
    pytest.importorskip("boto3", reason="s3:// needs Beam's [aws] extra: "
                                        "pip install -r requirements-aws.txt")
    pytest.importorskip("moto", reason="the local S3 server needs requirements-test.txt")
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1",
                             "-p", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.time() > deadline or proc.poll() is not None:
                proc.kill()
                pytest.fail("the moto S3 server did not start")
            time.sleep(0.2)
    yield endpoint
    proc.terminate()
    proc.wait(timeout=10)


S3_OPTIONS = ("--s3_access_key_id", "testing", "--s3_secret_access_key", "testing",
              "--s3_region_name", "us-east-1")


def _bucket(endpoint: str, name: str):
    import boto3
    s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing",
                      aws_secret_access_key="testing", region_name="us-east-1")
    s3.create_bucket(Bucket=name)
    return s3


def _upload(s3, bucket: str, local: pathlib.Path, prefix: str) -> None:
    for p in local.rglob("*"):
        if p.is_file():
            s3.upload_file(str(p), bucket, f"{prefix}/{p.relative_to(local).as_posix()}")


def test_s3_inputs_model_and_outputs(tmp_path, road_model, s3_server, monkeypatch):
    """Images, the model and the outputs on s3://; the masks follow the rule."""
    from beam_jobs import handlers

    s3 = _bucket(s3_server, "fcnseg")
    inputs = _kitti_images(tmp_path / "kitti", 4)
    _upload(s3, "fcnseg", inputs, "data/kitti")
    _upload(s3, "fcnseg", road_model.parent, "models/fcn8s")  # a model folder (version 1)
    cache = tmp_path / "model-cache"
    cache.mkdir()
    import tempfile
    monkeypatch.setenv("TMPDIR", str(cache))  # where the model copy goes (gettempdir)
    monkeypatch.setattr(tempfile, "tempdir", None)
    summary = _run("--input", "s3://fcnseg/data/kitti", "--output", "s3://fcnseg/out",
                   "--dataset", "kitti", "--model-dir", "s3://fcnseg/models/fcn8s",
                   "--no-evaluate", "--s3_endpoint_url", s3_server, *S3_OPTIONS,
                   # the pipeline's own options reach its workers' S3 file system
                   pipeline=test_pipeline.TestPipeline(options=PipelineOptions(
                       ["--s3_endpoint_url", s3_server, *S3_OPTIONS])),
                   inspect=_inspect(results=_expected(4), dead={}))
    assert summary["ok"] == 4 and summary["failed"] == 0
    # TensorFlow loaded a local copy of the model, made once for the machine.
    copies = list((cache / "fcnseg-models").iterdir())
    assert len(copies) == 1 and (copies[0] / "saved_model.pb").is_file()
    assert summary["model"] == "s3://fcnseg/models/fcn8s"

    run_id = s3.get_object(Bucket="fcnseg", Key="out/LATEST")["Body"].read().decode().strip()
    assert run_id == summary["run_id"]
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="fcnseg", Prefix="out/")["Contents"]]
    masks = sorted(k for k in keys if "/masks/" in k)
    assert len(masks) == 4 and not [k for k in keys if k.endswith(".tmp")]
    rows = [json.loads(line) for k in keys if "/results-" in k for line in
            s3.get_object(Bucket="fcnseg", Key=k)["Body"].read().decode().splitlines()]
    assert sorted(r["path"] for r in rows) == sorted(
        f"s3://fcnseg/data/kitti/training/image_2/{p.name}"
        for p in (inputs / "training" / "image_2").iterdir())

    for key in masks:
        got = np.asarray(Image.open(s3.get_object(Bucket="fcnseg", Key=key)["Body"]))
        i = int(key.rsplit("_", 1)[1].split(".")[0])
        np.testing.assert_array_equal(got, fakes.rule_class_ids(_image(i)), key)
    assert handlers.local_model_dir("/already/local") == "/already/local"
