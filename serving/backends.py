"""Find and start a model server for integration tests and local runs.

In order of preference:
  1. real TF Serving, `tensorflow_model_server` on PATH (subprocess);
  2. real TF Serving in Docker, when `docker info` succeeds (the pinned official image);
  3. a server already running at $TFSERVING_GRPC_ADDRESS (+ $TFSERVING_REST_ADDRESS), which
     must already serve the model (it cannot see our model folder: tests that write new
     versions or restart the server are skipped);
  4. the development server (tfserving_dev), in this process.
Set FCNSEG_SERVING_BACKEND=dev-server|binary|docker|external to force one.

The command lines for the real server are built by `tfserving_args` alone, in the
`--name=value` form TF's flag parser takes; tests check them against main.cc's flags and
server.cc's rules (tfserving_dev/flags.py).
"""
from __future__ import annotations

import os
import pathlib
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from typing import Callable

from contract.layout import versions as complete_versions
from serving.errors import ServingError

# Pinned: the same TensorFlow release as the exporter (tensorflow==2.21.0), so every op in
# our SavedModels is known to the server. Override with $TFSERVING_IMAGE.
TFSERVING_IMAGE = os.environ.get("TFSERVING_IMAGE", "tensorflow/serving:2.21.0")
HOST = "127.0.0.1"


@dataclass
class Backend:
    """A running server. `stop()` and `start()` again keep the same ports (for restart
    tests); `close()` stops it for good and cleans up."""

    kind: str                    # 'binary' | 'docker' | 'external' | 'dev-server'
    description: str
    address: str                 # gRPC host:port
    rest_address: str | None
    can_restart: bool
    sees_model_base: bool        # whether versions written to model_base get loaded
    _stop: Callable[[], None] = field(repr=False, default=lambda: None)
    _start: Callable[[], None] = field(repr=False, default=lambda: None)
    _close: Callable[[], None] | None = field(repr=False, default=None)

    def stop(self) -> None:
        self._stop()

    def start(self) -> None:
        self._start()

    def close(self) -> None:
        (self._close or self._stop)()


def write_models_config(path: pathlib.Path, model_name: str, base_path: str,
                        labels: dict[str, int]) -> pathlib.Path:
    """A models.config serving every version on disk, with the given labels."""
    label_lines = "".join(f'    version_labels {{ key: "{k}" value: {v} }}\n'
                          for k, v in labels.items())
    path.write_text(
        "model_config_list {\n  config {\n"
        f'    name: "{model_name}"\n    base_path: "{base_path}"\n'
        '    model_platform: "tensorflow"\n'
        "    model_version_policy { all {} }\n" + label_lines + "  }\n}\n")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def docker_available() -> bool:
    if not shutil.which("docker"):
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True,
                              timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def choose_backend() -> str:
    forced = os.environ.get("FCNSEG_SERVING_BACKEND")
    if forced:
        return forced
    if shutil.which("tensorflow_model_server"):
        return "binary"
    if docker_available():
        return "docker"
    if os.environ.get("TFSERVING_GRPC_ADDRESS"):
        return "external"
    return "dev-server"


def tfserving_args(config_path: str, port: int = 8500, rest_port: int = 8501,
                   poll_seconds: int = 1, extra: tuple[str, ...] = ()) -> list[str]:
    """tensorflow_model_server's flags for a models.config serving our test layout.

    The models.config labels versions 1 and 2; a label on a version that is not loaded yet
    fails the first config (FAILED_PRECONDITION, server_core.cc
    UpdateModelVersionLabelMap) unless --allow_version_labels_for_unavailable_models."""
    return [f"--port={port}", f"--rest_api_port={rest_port}",
            f"--model_config_file={config_path}",
            "--allow_version_labels_for_unavailable_models=true",
            f"--file_system_poll_wait_seconds={int(poll_seconds)}", *extra]


def wait_until_available(address: str, model_name: str, versions: list[int],
                         timeout: float = 180.0) -> None:
    """Block until the server reports every given version AVAILABLE."""
    from serving.grpc_client import PredictionClient  # loads TensorFlow; choosing needs none

    deadline = time.monotonic() + timeout
    last = "no answer"
    with PredictionClient(address, model_name, timeout=5, max_retries=0) as client:
        while time.monotonic() < deadline:
            try:
                states = {s["version"]: s["state"] for s in client.get_model_status()}
                if all(states.get(v) == "AVAILABLE" for v in versions):
                    return
                last = f"states {states}"
            except ServingError as err:
                last = str(err)
            time.sleep(0.5)
    raise TimeoutError(f"{address}: model {model_name} versions {versions} not available "
                       f"after {timeout:.0f} s ({last})")


def start_backend(model_base: pathlib.Path, model_name: str, labels: dict[str, int],
                  kind: str | None = None) -> Backend:
    """Start (or find) a server for <model_base>/<model_name>/<versions>, labels applied."""
    kind = kind or choose_backend()
    kind = "dev-server" if kind == "test-server" else kind  # the name before tfserving_dev

    versions = sorted(complete_versions(model_base / model_name))
    starters = {"binary": _start_binary, "docker": _start_docker,
                "external": _use_external, "dev-server": _start_dev_server}
    if kind not in starters:
        raise ValueError(f"unknown serving backend {kind!r}; one of {sorted(starters)}")
    backend = starters[kind](model_base, model_name, labels)
    try:
        wait_until_available(backend.address, model_name,
                             versions if backend.sees_model_base else [])
    except Exception:
        backend.close()
        raise
    return backend


def _start_binary(model_base, model_name, labels) -> Backend:
    config = write_models_config(model_base / "models.config", model_name,
                                 str(model_base / model_name), labels)
    port, rest_port = free_port(), free_port()
    binary = shutil.which("tensorflow_model_server")
    log = open(model_base / "tensorflow_model_server.log", "ab")
    command = [binary, *tfserving_args(str(config), port, rest_port,
                                       extra=("--rest_api_num_threads=4",))]
    process: list[subprocess.Popen] = []

    def start():
        process[:] = [subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)]
        _wait_for_port(port)

    def stop():
        if process and process[0].poll() is None:
            process[0].terminate()
            try:
                process[0].wait(timeout=20)
            except subprocess.TimeoutExpired:
                process[0].kill()

    start()
    return Backend("binary", f"tensorflow_model_server ({binary}) on {HOST}:{port}",
                   f"{HOST}:{port}", f"{HOST}:{rest_port}", True, True, stop, start)


def _start_docker(model_base, model_name, labels) -> Backend:
    write_models_config(model_base / "models.config", model_name, f"/models/{model_name}",
                        labels)
    port, rest_port = free_port(), free_port()
    name = f"fcnseg-test-serving-{os.getpid()}"
    command = ["docker", "run", "-d", "--name", name,
               "-p", f"{HOST}:{port}:8500", "-p", f"{HOST}:{rest_port}:8501",
               "-v", f"{model_base}:/models:ro", TFSERVING_IMAGE,
               *tfserving_args("/models/models.config")]
    subprocess.run(command, check=True, capture_output=True, timeout=600)

    def start():
        subprocess.run(["docker", "start", name], check=True, capture_output=True, timeout=60)
        _wait_for_port(port)

    def stop():
        subprocess.run(["docker", "stop", "-t", "5", name], capture_output=True, timeout=60)

    def remove():
        subprocess.run(["docker", "rm", "-f", name], capture_output=True, timeout=60)

    _wait_for_port(port)
    # stop/start keep the container (same ports); close removes it.
    return Backend("docker", f"{TFSERVING_IMAGE} in Docker on {HOST}:{port}",
                   f"{HOST}:{port}", f"{HOST}:{rest_port}", True, True, stop, start, remove)


def _use_external(model_base, model_name, labels) -> Backend:
    address = os.environ["TFSERVING_GRPC_ADDRESS"]
    rest = os.environ.get("TFSERVING_REST_ADDRESS")
    return Backend("external", f"external server at {address} (TFSERVING_GRPC_ADDRESS)",
                   address, rest, False, False)


def _start_dev_server(model_base, model_name, labels) -> Backend:
    # Only this backend runs the server in this process (and loads TensorFlow for it).
    from tfserving_dev.config import read_model_config_file
    from tfserving_dev.server import start_dev_server

    config = write_models_config(model_base / "models.config", model_name,
                                 str(model_base / model_name), labels)
    port, rest_port = free_port(), free_port()
    handle: list = []

    def start():
        handle[:] = [start_dev_server(models=read_model_config_file(config), port=port,
                                      rest_api_port=rest_port, poll_interval=0.5,
                                      allow_version_labels_for_unavailable_models=True)]

    def stop():
        if handle:
            handle[0].stop()
            handle.clear()

    start()
    why = ("forced by FCNSEG_SERVING_BACKEND" if os.environ.get("FCNSEG_SERVING_BACKEND")
           else "no tensorflow_model_server on PATH, no Docker engine, "
                "no TFSERVING_GRPC_ADDRESS")
    return Backend("dev-server", f"dev-server (tfserving_dev, in-process, "
                   f"{HOST}:{port}; {why})",
                   f"{HOST}:{port}", f"{HOST}:{rest_port}", True, True, stop, start)


def _wait_for_port(port: int, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex((HOST, port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listening on {HOST}:{port} after {timeout:.0f} s")
