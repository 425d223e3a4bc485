"""Every command, tried as a new user would: each mistake is one line `error: <what>: <why>`
on stderr and exit status 2, never a traceback; run from a shell, `--help` and errors come
without TensorFlow's C++ start-up log.

The servers that are not TF Serving are fakes whose answer is known by construction: an
HTTP/1 file server (http.server) and a gRPC server with no services at all, which gRPC
answers with UNIMPLEMENTED "Method not found!" (grpc/src/core server: unknown method).
"""
from __future__ import annotations

import http.server
import os
import pathlib
import socket
import subprocess
import sys
import threading
from concurrent import futures

import grpc
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROGS = {"export": "python -m export", "beam_jobs.segment": "python -m beam_jobs.segment",
         "benchmarks": "python -m benchmarks"}


def closed_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _QuietFiles(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # its access log would share stderr with the command's
        pass


@pytest.fixture(scope="module")
def http_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _QuietFiles)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture(scope="module")
def bare_grpc_server():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(None)


def one_error(capsys, main, argv) -> str:
    """Run main(argv); it must return 2 and write exactly one line to stderr; that line."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.endswith("\n") and "Traceback" not in err, err
    return err.rstrip("\n")


# --------------------------------------------------------------------------- export

def test_export(capsys, tmp_path):
    from export.__main__ import main
    run, models = tmp_path / "no_run", str(tmp_path / "models" / "fcn8s")
    assert one_error(capsys, main, ["--run-dir", str(run), "--model-dir", models]) == \
        f"error: {run}: no such run folder"
    run.mkdir()
    assert one_error(capsys, main, ["--run-dir", str(run), "--model-dir", models]) == \
        f"error: {run / 'config.json'}: not found (is this a run directory of model.train?)"
    assert one_error(capsys, main, ["--run-dir", str(run), "--model-dir", models,
                                    "--inference-size", "100", "200"]) == \
        "error: --inference-size: takes H W (positive multiples of 32) or 'native', got 100 200"
    assert one_error(capsys, main, ["--run-dir", str(run), "--model-dir", models,
                                    "--model-version", "0"]) == \
        "error: --model-version: must be 1 or more, got 0"
    assert one_error(capsys, main, ["--run-dir", str(run), "--model-dir", models,
                                    "--model-version", "two"]) == \
        "error: --model-version: invalid int value: 'two'"
    assert one_error(capsys, main, ["--model-dir", models]) == \
        "error: python -m export: the following arguments are required: --run-dir"


# --------------------------------------------------------------------------- serving.client

def test_serving_client(capsys, tmp_path, http_server, bare_grpc_server):
    from serving.client import main
    port = closed_port()
    assert one_error(capsys, main, ["status", "--server", f"127.0.0.1:{port}"]) == \
        f"error: 127.0.0.1:{port}: cannot connect: connection refused"
    assert one_error(capsys, main, ["status", "--server", "no-such-host.invalid:8500"]) == \
        "error: no-such-host.invalid:8500: cannot connect: unknown host no-such-host.invalid"
    # an HTTP server where gRPC was expected, and the reverse
    assert one_error(capsys, main, ["status", "--server", http_server]) == \
        (f"error: {http_server}: not a gRPC server: it does not answer HTTP/2 (TF Serving's "
         f"REST port? add --rest)")
    assert one_error(capsys, main, ["status", "--rest", "--server", bare_grpc_server]) == \
        (f"error: {bare_grpc_server}: a gRPC (HTTP/2) server answered, not REST (TF "
         f"Serving's gRPC port? drop --rest)")
    # a gRPC server without TF Serving's services
    assert one_error(capsys, main, ["status", "--server", bare_grpc_server]) == \
        (f"error: {bare_grpc_server}: not TF Serving: the gRPC server there has no "
         f"tensorflow.serving.ModelService / PredictionService")
    # an HTTP server that is not TF Serving's REST API: a 404 page, not {"error": ...}
    line = one_error(capsys, main, ["status", "--rest", "--server", http_server])
    assert line.startswith(f"error: {http_server}: NOT_FOUND: HTTP 404: not a TF Serving "
                           f"reply (<!DOCTYPE HTML>")
    # a model folder with no version in it
    empty = tmp_path / "models" / "fcn8s"
    empty.mkdir(parents=True)
    image = tmp_path / "a.png"
    image.write_bytes(b"")
    assert one_error(capsys, main, ["segment", "--server", bare_grpc_server, "--model-dir",
                                    str(empty), "--output", str(tmp_path / "out"),
                                    str(image)]) == \
        (f"error: {empty}: cannot read export metadata: neither a SavedModel folder (no "
         f"saved_model.pb) nor a model folder holding numbered versions")
    # bad flag values
    assert one_error(capsys, main, ["status", "--timeout", "0"]) == \
        "error: --timeout: must be more than 0 seconds, got 0"
    assert one_error(capsys, main, ["status", "--model-version", "x"]) == \
        "error: --model-version: invalid int value: 'x'"
    assert one_error(capsys, main, ["status", "--model-version", "1", "--model-label", "a"]) \
        == "error: --model-label: not allowed with argument --model-version"
    assert one_error(capsys, main, ["segment", "--batch-size", "0", "--output", "o", "x"]) == \
        "error: --batch-size: must be 1 or more, got 0"


# --------------------------------------------------------------------------- tfserving_dev

def test_tfserving_dev(capsys, tmp_path):
    from tfserving_dev.__main__ import main
    missing = tmp_path / "models" / "fcn8s"
    assert one_error(capsys, main, ["--model_name=fcn8s", f"--model_base_path={missing}"]) == \
        f"error: {missing}: no such model folder (--model_base_path)"
    assert one_error(capsys, main, ["--port=abc", f"--model_base_path={tmp_path}"]) == \
        "error: --port=abc: not a valid int"
    # TF's flag parser leaves `--port 8500` unparsed (command_line_flags.cc)
    line = one_error(capsys, main, ["--port", "8500", f"--model_base_path={tmp_path}"])
    assert line.startswith("error: unknown argument: --port (")


# --------------------------------------------------------------------------- beam_jobs.segment

def test_beam_segment(capsys, tmp_path):
    from beam_jobs.segment import main
    prog = PROGS["beam_jobs.segment"]
    (tmp_path / "a.png").write_bytes(b"")
    empty = tmp_path / "models" / "fcn8s"
    empty.mkdir(parents=True)
    common = ["--input", str(tmp_path / "*.png"), "--output", str(tmp_path / "out")]
    line = one_error(capsys, main, common + ["--model-dir", str(empty)])
    assert line.startswith(f"error: {empty}")
    assert one_error(capsys, main, common + ["--model-dir", str(empty), "--batch-size", "0"]) \
        == "error: --batch-size: must be a positive integer or 'auto', got '0'"
    assert one_error(capsys, main, common + ["--model-dir", str(empty), "--batch-size", "4",
                                             "--min-batch-size", "8"]) \
        == f"error: {prog}: need 1 <= --min-batch-size <= --batch-size"
    assert one_error(capsys, main, common + ["--mode", "grpc"]) == \
        f"error: {prog}: --mode grpc needs --server and --model-name"
    assert one_error(capsys, main, common + ["--batch-size", "many"]) == \
        "error: --batch-size: must be a positive integer or 'auto', got 'many'"


# --------------------------------------------------------------------------- benchmarks

def test_benchmarks(capsys, tmp_path):
    from benchmarks.__main__ import main
    empty = tmp_path / "models" / "fcn8s"
    empty.mkdir(parents=True)
    line = one_error(capsys, main, ["--model-dir", str(empty), "--output", str(tmp_path / "o")])
    assert line.startswith(f"error: {empty}: ") and "make train export" in line
    assert not (tmp_path / "o").exists()
    assert one_error(capsys, main, ["--model-dir", str(empty), "--repeats", "0"]) == \
        "error: --repeats: must be 1 or more, got 0"
    line = one_error(capsys, main, ["--sections", "everything"])
    assert line.startswith("error: --sections: invalid choice: 'everything'")


# --------------------------------------------------------------------------- from a shell

def _shell(*args, env_extra=None):
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env.update({"PYTHONPATH": str(ROOT), **(env_extra or {})})
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=180, env=env)


@pytest.mark.parametrize("module", ["export", "serving.client", "tfserving_dev",
                                    "beam_jobs.segment", "benchmarks"])
def test_help_from_a_shell_is_quiet(module):
    result = _shell(module, "--help")
    assert result.returncode == 0 and result.stdout and result.stderr == "", result.stderr


def test_errors_from_a_shell_are_one_line(tmp_path):
    result = _shell("export", "--run-dir", str(tmp_path / "none"), "--model-dir", "m")
    assert (result.returncode, result.stderr) == (2, f"error: {tmp_path / 'none'}: no such "
                                                     f"run folder\n")
    port = closed_port()
    result = _shell("serving.client", "status", "--server", f"127.0.0.1:{port}")
    assert (result.returncode, result.stderr) == (
        2, f"error: 127.0.0.1:{port}: cannot connect: connection refused\n")


def test_verbose_keeps_tensorflow_log(tmp_path):
    # The C++ start-up lines are TensorFlow's; `--verbose`, which every command takes, asks
    # for them, and the command goes on to its usual answer (here the one-line error).
    result = _shell("export", "--run-dir", str(tmp_path / "none"), "--model-dir", "m",
                    "--verbose")
    assert "cpu_feature_guard" in result.stderr or "oneDNN" in result.stderr, result.stderr
    assert result.returncode == 2
    assert result.stderr.endswith(f"error: {tmp_path / 'none'}: no such run folder\n")
    port = closed_port()
    result = _shell("serving.client", "status", "--server", f"127.0.0.1:{port}", "--verbose")
    assert result.returncode == 2 and result.stderr.endswith("connection refused\n")
