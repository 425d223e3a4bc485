"""The portable path, locally: Beam's own Python job service and a worker pool in separate
processes, the job submitted with --runner PortableRunner, SDK workers from the pool
(--environment_type EXTERNAL), as a Flink or Spark cluster with a worker-pool sidecar runs it.
The outputs must be the threshold model's known answers (tests/fakes.py), as on the direct
runner (tests/test_beam_segment.py)."""
from __future__ import annotations

import os
import pathlib
import socket
import subprocess
import sys
import time

import pytest

pytest.importorskip("apache_beam")

from tests.test_beam_segment import _run_mixed, make_mixed_folder  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(port: int, proc: subprocess.Popen, what: str, log: pathlib.Path) -> None:
    deadline = time.time() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                pytest.fail(f"{what} did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.3)


@pytest.fixture()
def portable_cluster(tmp_path):
    """(job endpoint, worker pool address, worker pool log): two processes, stopped at the
    end."""
    env = dict(os.environ)
    # The worker pool starts each SDK worker as `python -m ...sdk_worker_main` with the
    # `python` on PATH: it must be this venv's, and the workers must import this project.
    env["PATH"] = f"{pathlib.Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = f"{REPO}{os.pathsep}{env.get('PYTHONPATH', '')}".rstrip(os.pathsep)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    job_port, pool_port = _free_port(), _free_port()
    procs = []
    try:
        for what, args, port in (
                ("job service", ["apache_beam.runners.portability.local_job_service_main",
                                 "--port", str(job_port),
                                 "--staging_dir", str(tmp_path / "staging")], job_port),
                ("worker pool", ["apache_beam.runners.worker.worker_pool_main",
                                 "--service_port", str(pool_port)], pool_port)):
            log = tmp_path / f"{what.replace(' ', '_')}.log"
            proc = subprocess.Popen([sys.executable, "-m", *args], env=env, cwd=tmp_path,
                                    stdout=log.open("wb"), stderr=subprocess.STDOUT)
            procs.append(proc)
            _wait_for(port, proc, what, log)
        yield f"localhost:{job_port}", f"localhost:{pool_port}", tmp_path / "worker_pool.log"
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


def test_portable_runner_follows_the_rule(tmp_path, road_model, portable_cluster):
    """The mixed folder through the portable runner: the same records, dead letters and
    masks the threshold model's rule gives (so the same as the direct runner's), with
    assert_that running in the pool's SDK workers."""
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.testing import test_pipeline

    job_endpoint, pool, pool_log = portable_cluster
    good, bad = make_mixed_folder(tmp_path / "in")
    portable = ["--runner", "PortableRunner", "--job_endpoint", job_endpoint,
                "--environment_type", "EXTERNAL", "--environment_config", pool]
    pipeline = test_pipeline.TestPipeline(options=PipelineOptions(portable))
    summary = _run_mixed(tmp_path / "portable", tmp_path / "in", good, bad,
                         "--model-dir", road_model.parent, "--batch-size", 3, *portable,
                         pipeline=pipeline)
    assert summary["runner"] == "PortableRunner"
    assert "Starting worker with command" in pool_log.read_text()  # the pool's workers ran it
    assert (tmp_path / "portable" / "LATEST").read_text().strip() == summary["run_id"]
