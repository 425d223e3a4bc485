"""The portable path, locally: Beam's own Python job service and a worker pool in separate
processes, the job submitted with --runner PortableRunner, SDK workers from the pool
(--environment_type EXTERNAL), as a Flink or Spark cluster with a worker-pool sidecar runs it.
The outputs must equal the direct runner's."""
from __future__ import annotations

import os
import pathlib
import socket
import subprocess
import sys
import time

import pytest

pytest.importorskip("apache_beam")

from tests.test_beam_segment import _read_jsonl, make_mixed_folder, road_model  # noqa: F401,E402

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


def _comparable(rows: list[dict]) -> dict:
    """Result rows by path, without what depends on timing and batching."""
    drop = {"latency_ms", "batch_latency_ms", "batch_size", "mask", "kitti_submission",
            "overlay"}
    return {r["path"]: {k: v for k, v in r.items() if k not in drop} for r in rows}


def test_portable_runner_equals_direct_runner(tmp_path, road_model, portable_cluster):
    from beam_jobs import segment

    job_endpoint, pool, pool_log = portable_cluster
    good, bad = make_mixed_folder(tmp_path / "in")
    common = ["--input", str(tmp_path / "in"), "--dataset", "folder",
              "--model-dir", str(road_model.parent), "--max-pixels", "1000000",
              "--batch-size", "3"]
    direct = segment.run(common + ["--output", str(tmp_path / "direct")])
    portable = segment.run(common + ["--output", str(tmp_path / "portable"),
                                     "--runner", "PortableRunner",
                                     "--job_endpoint", job_endpoint,
                                     "--environment_type", "EXTERNAL",
                                     "--environment_config", pool])
    assert portable["runner"] == "PortableRunner"
    assert "Starting worker with command" in pool_log.read_text()  # the pool's workers ran it
    for key in ("images_in", "ok", "failed", "failed_by_stage"):
        assert portable[key] == direct[key], key
    assert portable["ok"] == len(good) and portable["failed"] == len(bad)
    d_run, p_run = pathlib.Path(direct["run_dir"]), pathlib.Path(portable["run_dir"])
    assert _comparable(_read_jsonl(p_run, "results")) == _comparable(_read_jsonl(d_run, "results"))
    dead = lambda run: sorted((r["path"], r["stage"], r["reason"])  # noqa: E731
                              for r in _read_jsonl(run, "dead_letter"))
    assert dead(p_run) == dead(d_run)
    masks = sorted(p.name for p in (d_run / "masks").iterdir())
    assert masks == sorted(p.name for p in (p_run / "masks").iterdir()) and masks
    for name in masks:  # the same model on the same bytes: the same PNGs
        assert (p_run / "masks" / name).read_bytes() == (d_run / "masks" / name).read_bytes()
    assert (tmp_path / "portable" / "LATEST").read_text().strip() == portable["run_id"]
