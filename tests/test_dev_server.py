"""tfserving_dev on a tiny hand-written SavedModel (the export's signature names and dtypes,
probabilities in serving_default): the version manager (availability-preserving swaps, load
retries, labels, ReloadConfig), its command line, TLS through --ssl_config_file, and the
clients reading its PNG outputs over gRPC and REST. Expected behaviour and messages
come from tensorflow/serving's source, named at each test."""
from __future__ import annotations

import io
import logging
import pathlib
import shutil
import subprocess
import sys
import time

import grpc
import numpy as np
import pytest

from serving.errors import ServingError
from tests.fakes import write_hand_threshold_model
from tfserving_dev.manager import State, VersionState, next_action

ROOT = pathlib.Path(__file__).resolve().parents[1]


def write_broken_version(path: pathlib.Path) -> None:
    path.mkdir(parents=True)
    (path / "saved_model.pb").write_bytes(b"this is not a SavedModel")


@pytest.fixture(scope="module")
def tiny_version(tmp_path_factory) -> pathlib.Path:
    path = tmp_path_factory.mktemp("tiny") / "v"
    write_hand_threshold_model(path, threshold=100)
    return path


@pytest.fixture
def tiny_base(tiny_version, tmp_path) -> pathlib.Path:
    base = tmp_path / "fcn8s"
    shutil.copytree(tiny_version, base / "1")
    return base


@pytest.fixture
def tiny_server(tiny_base):
    from tfserving_dev.server import start_dev_server
    server = start_dev_server(tiny_base, "fcn8s", rest_api_port=0, poll_interval=0.2,
                              max_load_retries=0)
    yield server
    server.stop()


def _image():
    return np.random.default_rng(0).integers(0, 256, (2, 7, 9, 3), dtype=np.uint8)


def _png(array) -> bytes:
    from PIL import Image
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG")
    return buffer.getvalue()


def _wait(condition, what: str, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} not within {timeout} s"
        time.sleep(0.1)


# --------------------------------------------------------------------------- the policy

def _s(state, aspired=True):
    return VersionState(state, aspired=aspired)


@pytest.mark.parametrize("versions, action", [
    # core/availability_preserving_policy.cc GetNextAction, case by case:
    # a new aspired version is loaded while the old one keeps serving
    ({1: _s(State.AVAILABLE, False), 2: _s(State.START)}, ("load", 2)),
    # the old one goes once an aspired version is serving
    ({1: _s(State.AVAILABLE, False), 2: _s(State.AVAILABLE)}, ("unload", 1)),
    # a new version that failed to load never takes the old one down
    ({1: _s(State.AVAILABLE, False), 2: _s(State.END)}, None),
    # no aspired version at all: unload the lowest
    ({1: _s(State.AVAILABLE, False), 3: _s(State.AVAILABLE, False)}, ("unload", 1)),
    # more than one unaspired serving: unload the lowest even with nothing aspired serving
    ({1: _s(State.AVAILABLE, False), 2: _s(State.AVAILABLE, False), 3: _s(State.LOADING)},
     ("unload", 1)),
    # several new aspired versions: the highest first
    ({1: _s(State.START), 2: _s(State.START)}, ("load", 2)),
])
def test_next_action_is_availability_preserving(versions, action):
    assert next_action(versions) == action


# --------------------------------------------------------------------------- the manager

def test_broken_new_version_keeps_the_old_one_serving(tiny_server, tiny_base):
    """The old test server unloaded version 1 here (Predict NOT_FOUND "Latest(fcn8s)")."""
    from serving.grpc_client import PredictionClient
    write_broken_version(tiny_base / "2")
    with PredictionClient(tiny_server.address, "fcn8s") as client:
        _wait(lambda: any(s["version"] == 2 and s["state"] == "END"
                          for s in client.get_model_status()), "version 2 failing")
        assert client.segment_images(_image())["model_version"] == 1
        states = {s["version"]: s for s in client.get_model_status()}
    assert states[1]["state"] == "AVAILABLE" and states[1]["error_code"] == 0
    assert "loading failed" in states[2]["error_message"] and states[2]["error_code"] != 0


def test_new_version_swaps_in_and_the_old_is_unloaded(tiny_server, tiny_base):
    from serving.grpc_client import PredictionClient
    write_hand_threshold_model(tiny_base.parent / "staging", threshold=200)
    shutil.move(tiny_base.parent / "staging", tiny_base / "2")
    images = _image()
    with PredictionClient(tiny_server.address, "fcn8s") as client:
        _wait(lambda: client.segment_images(images)["model_version"] == 2, "version 2")
        np.testing.assert_array_equal(client.segment_images(images)["class_ids"],
                                      images[..., 0] > 200)
        states = {s["version"]: s["state"] for s in client.get_model_status()}
    assert states == {2: "AVAILABLE", 1: "END"}  # latest-1 policy: version 1 unloaded


def test_failed_load_is_retried_then_reported(tmp_path, caplog):
    """core/loader_harness.cc: 1 + max_num_load_retries attempts, load_retry_interval
    apart; then END with the error, and GetModelStatus carries it in `status`."""
    from tfserving_dev.server import start_dev_server
    write_broken_version(tmp_path / "fcn8s" / "1")
    caplog.set_level(logging.ERROR, logger="tfserving_dev")
    start = time.monotonic()
    server = start_dev_server(tmp_path / "fcn8s", "fcn8s", max_load_retries=2,
                              load_retry_interval=0.3)
    try:
        assert time.monotonic() - start >= 0.6  # two waits between three attempts
        attempts = [r for r in caplog.records if "load attempt" in r.getMessage()]
        assert len(attempts) == 3
        from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc
        with grpc.insecure_channel(server.address) as channel:
            request = get_model_status_pb2.GetModelStatusRequest()
            request.model_spec.name = "fcn8s"
            response = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(request)
        (status,) = response.model_version_status
        assert status.state == get_model_status_pb2.ModelVersionStatus.END
        assert status.HasField("status") and "loading failed" in status.status.error_message
    finally:
        server.stop()


def test_failing_warmup_request_fails_the_load(tmp_path, tiny_version):
    """servables/tensorflow/saved_model_warmup.cc: warm-up records are replayed on load, and
    a failing one fails the load."""
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2
    from serving.grpc_client import PredictionClient
    from tfserving_dev.server import start_dev_server
    base = tmp_path / "fcn8s"
    shutil.copytree(tiny_version, base / "1")
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "fcn8s"
    request.inputs["images"].CopyFrom(tf.make_tensor_proto(np.zeros((1, 4, 4, 3), np.float32)))
    (base / "1" / "assets.extra").mkdir()
    with tf.io.TFRecordWriter(str(base / "1" / "assets.extra" / "tf_serving_warmup_requests")) as w:
        w.write(prediction_log_pb2.PredictionLog(
            predict_log=prediction_log_pb2.PredictLog(request=request)).SerializeToString())
    server = start_dev_server(base, "fcn8s", max_load_retries=0)
    try:
        with PredictionClient(server.address, "fcn8s", max_retries=0, timeout=5) as client:
            (status,) = client.get_model_status()
            with pytest.raises(ServingError) as caught:
                client.segment_images(_image())
    finally:
        server.stop()
    assert status["state"] == "END"
    assert "warm-up request 1 failed" in status["error_message"]
    # The session's own dtype check (TF's DirectSession call frame), as TF Serving reports it.
    assert "Expects arg[0] to be uint8 but float is provided" in status["error_message"]
    assert caught.value.code == grpc.StatusCode.NOT_FOUND


def _models_config(base: pathlib.Path, labels: dict[str, int]):
    from tensorflow_serving.config import model_server_config_pb2
    config = model_server_config_pb2.ModelServerConfig()
    entry = config.model_config_list.config.add(name="fcn8s", base_path=str(base),
                                                model_platform="tensorflow")
    entry.model_version_policy.all.SetInParent()
    for key, value in labels.items():
        entry.version_labels[key] = value
    return config


def test_label_on_a_version_that_never_loads_is_refused_at_config_time(tiny_base):
    """server_core.cc UpdateModelVersionLabelMap."""
    from tfserving_dev.config import from_proto
    from tfserving_dev.errors import RequestError
    from tfserving_dev.server import start_dev_server
    models = from_proto(_models_config(tiny_base, {"stable": 1, "canary": 2}))
    with pytest.raises(RequestError) as caught:
        start_dev_server(models=models)
    assert caught.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert caught.value.message == ("Request to assign label to version 2 of model fcn8s, "
                                    "which is not currently available for inference")
    server = start_dev_server(models=models, allow_version_labels_for_unavailable_models=True)
    server.stop()


def test_reload_config_request(tiny_server, tiny_base):
    """model_servers/model_service_impl.cc HandleReloadConfigRequest: the status is in the
    response; a refused config leaves the old labels in force."""
    from tensorflow_serving.apis import model_management_pb2, model_service_pb2_grpc
    from serving.grpc_client import PredictionClient
    with grpc.insecure_channel(tiny_server.address) as channel:
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        ok = stub.HandleReloadConfigRequest(model_management_pb2.ReloadConfigRequest(
            config=_models_config(tiny_base, {"stable": 1})))
        refused = stub.HandleReloadConfigRequest(model_management_pb2.ReloadConfigRequest(
            config=_models_config(tiny_base, {"stable": 1, "canary": 7})))
    assert ok.status.error_code == 0
    assert refused.status.error_code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    assert "version 7 of model fcn8s" in refused.status.error_message
    with PredictionClient(tiny_server.address, "fcn8s", version_label="stable") as client:
        assert client.segment_images(_image())["model_version"] == 1


# --------------------------------------------------------------------------- PNG outputs

def test_clients_read_png_outputs_over_grpc_and_rest(tiny_server):
    """A string output named *_bytes comes back over REST as {"b64": ...}
    (util/json_tensor.cc); both clients return the PNG the model wrote, byte for byte."""
    from PIL import Image
    from serving.grpc_client import PredictionClient
    from serving.rest_client import RestPredictionClient
    images = _image()
    blob = _png(images[0])
    with PredictionClient(tiny_server.address, "fcn8s") as client:
        via_grpc = client.segment_encoded([blob], outputs=["mask_png_bytes", "heights"])
    with RestPredictionClient(tiny_server.rest_address, "fcn8s") as client:
        via_rest = client.segment_encoded([blob])
    for result in (via_grpc, via_rest):
        assert result["model_version"] == 1
        mask = np.array(Image.open(io.BytesIO(result["mask_png_bytes"][0])))
        np.testing.assert_array_equal(mask, images[0, ..., 0] > 100)


# --------------------------------------------------------------------------- command line

def _run_cli(*args, timeout=60):
    return subprocess.run([sys.executable, "-m", "tfserving_dev", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout,
                          env={"PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2",
                               "PATH": "/usr/bin:/bin"})


def test_cli_takes_only_name_equals_value(tiny_base):
    """The real binary leaves `--port 8500` unparsed (TF's command_line_flags.cc) and then
    has no model to serve (server.cc: "Both ... are empty!"); so does this one, at once."""
    result = _run_cli("--port", "8500", "--model_base_path", str(tiny_base))
    assert result.returncode == 2 and "unknown argument: --port" in result.stderr
    result = _run_cli("--port=8500", "--model_config_file=/x.config",
                      "--batching_parameters_file=/b.config")
    assert result.returncode == 2 and "enable_batching to true" in result.stderr


def test_binds_127_0_0_1_by_default(tiny_base):
    from tfserving_dev.server import start_dev_server
    server = start_dev_server(tiny_base, "fcn8s", rest_api_port=0)
    try:
        assert server.address.startswith("127.0.0.1:")
        assert server.rest_address.startswith("127.0.0.1:")
    finally:
        server.stop()


# --------------------------------------------------------------------------- TLS

@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    if not shutil.which("openssl"):
        pytest.skip("openssl not available to make a test certificate")
    folder = tmp_path_factory.mktemp("tls")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
                    "-keyout", str(folder / "key.pem"), "-out", str(folder / "cert.pem")],
                   check=True, capture_output=True)
    return (folder / "cert.pem").read_bytes(), (folder / "key.pem").read_bytes()


def test_tls_through_ssl_config_file_and_auth_header(tiny_base, certificate, tmp_path):
    """--ssl_config_file holds a text SSLConfig with the PEM text itself
    (config/ssl_config.proto, server.cc BuildServerCredentials)."""
    import json
    from serving.grpc_client import PredictionClient
    from tfserving_dev.server import start_dev_server
    cert, key = certificate
    ssl_config = tmp_path / "ssl.config"
    ssl_config.write_text(f"server_key: {json.dumps(key.decode())}\n"
                          f"server_cert: {json.dumps(cert.decode())}\n"
                          f"client_verify: false\n")
    server = start_dev_server(tiny_base, "fcn8s", ssl_config_file=ssl_config,
                              required_metadata={"authorization": "Bearer s3cret"})
    try:
        with PredictionClient(server.address, "fcn8s", root_certificates=cert,
                              server_name_override="localhost",
                              metadata={"Authorization": "Bearer s3cret"}) as client:
            assert client.get_model_status()[0]["state"] == "AVAILABLE"
        with PredictionClient(server.address, "fcn8s", root_certificates=cert,
                              server_name_override="localhost") as client:
            with pytest.raises(ServingError) as caught:
                client.get_model_status()
        assert caught.value.code == grpc.StatusCode.UNAUTHENTICATED
    finally:
        server.stop()


# --------------------------------------------------------------------------- packaging

def test_dev_server_is_outside_the_clients_and_the_installed_packages():
    """Production code never loads it; pyproject.toml (what Beam workers install) and the
    Beam image's Dockerfile leave it out."""
    import tomllib
    code = ("import sys, serving.grpc_client, serving.rest_client, serving.client, "
            "beam_jobs.handlers; print(sorted(m for m in sys.modules if 'tfserving_dev' in m))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, timeout=120, env={"PYTHONPATH": str(ROOT),
                                                         "TF_CPP_MIN_LOG_LEVEL": "2",
                                                         "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "[]"
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())
    include = packages["tool"]["setuptools"]["packages"]["find"]["include"]
    assert not any(p.startswith("tfserving") for p in include), include
    assert "tfserving_dev" not in (ROOT / "beam_jobs" / "Dockerfile").read_text()
