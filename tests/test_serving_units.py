"""Serving pieces that need no model server: retry policy, chunking, config files, CLI bits,
and the test server's behaviour on a tiny hand-written SavedModel (hot swap, REST, TLS)."""
from __future__ import annotations

import io
import pathlib
import re
import shutil
import subprocess

import grpc
import numpy as np
import pytest

from serving.chunking import chunk_slices, concat_outputs
from serving.errors import ServingError
from serving.retry import RetryPolicy, call_with_retries

SERVING = pathlib.Path(__file__).resolve().parents[1] / "serving"


# --------------------------------------------------------------------------- retries

class FakeClock:
    def __init__(self):
        self.now = 0.0
        self.sleeps = []

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.sleeps.append(seconds)
        self.now += seconds


def failing(codes, result="ok"):
    """An attempt function that raises the given codes in turn, then returns result."""
    calls = []

    def attempt(remaining):
        calls.append(remaining)
        if len(calls) <= len(codes):
            raise ServingError(codes[len(calls) - 1], f"failure {len(calls)}")
        return result
    return attempt, calls


def test_retries_transient_errors_then_succeeds():
    clock = FakeClock()
    attempt, calls = failing([grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                              grpc.StatusCode.RESOURCE_EXHAUSTED])
    assert call_with_retries(attempt, RetryPolicy(max_retries=5), 30, clock, clock.sleep) == "ok"
    assert len(calls) == 4 and len(clock.sleeps) == 3
    # Full jitter under an exponentially growing cap.
    assert all(0 <= s <= 0.1 * 2 ** i for i, s in enumerate(clock.sleeps))
    # Each attempt gets what is left of the overall deadline.
    assert calls[0] == 30 and calls[-1] == pytest.approx(30 - sum(clock.sleeps))


@pytest.mark.parametrize("code", [grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
                                  grpc.StatusCode.FAILED_PRECONDITION,
                                  grpc.StatusCode.UNAUTHENTICATED])
def test_does_not_retry_permanent_errors(code):
    clock = FakeClock()
    attempt, calls = failing([code])
    with pytest.raises(ServingError) as caught:
        call_with_retries(attempt, RetryPolicy(), 30, clock, clock.sleep)
    assert caught.value.code == code and caught.value.attempts == 1 and clock.sleeps == []


def test_gives_up_after_max_retries():
    clock = FakeClock()
    attempt, calls = failing([grpc.StatusCode.UNAVAILABLE] * 10)
    with pytest.raises(ServingError) as caught:
        call_with_retries(attempt, RetryPolicy(max_retries=3), 300, clock, clock.sleep)
    assert caught.value.attempts == 4 and len(calls) == 4
    assert "after 4 attempts" in str(caught.value)


def test_never_sleeps_past_the_deadline():
    clock = FakeClock()
    attempt, calls = failing([grpc.StatusCode.UNAVAILABLE] * 1000)
    policy = RetryPolicy(max_retries=1000, initial_backoff=0.5, max_backoff=2.0)
    with pytest.raises(ServingError) as caught:
        call_with_retries(attempt, policy, 10.0, clock, clock.sleep)
    assert clock.now < 10.0
    assert "deadline of 10 s reached" in caught.value.message


# --------------------------------------------------------------------------- chunking

def test_chunk_slices_respect_the_limit():
    sizes = [3000, 3000, 3000, 9000, 10, 10]
    slices = chunk_slices(sizes, limit=4096 + 6500)
    assert slices == [slice(0, 2), slice(2, 3), slice(3, 4), slice(4, 6)]
    assert chunk_slices([], 100) == []
    assert chunk_slices([1] * 5, 10**9) == [slice(0, 5)]


def test_concat_outputs_pads_class_ids_with_ignore():
    a = {"class_ids": np.zeros((2, 3, 4), np.uint8), "heights": np.array([3, 2], np.int32)}
    b = {"class_ids": np.ones((1, 5, 2), np.uint8), "heights": np.array([5], np.int32)}
    joined = concat_outputs([a, b])
    assert joined["class_ids"].shape == (3, 5, 4)
    assert (joined["class_ids"][:2, 3:] == 255).all() and (joined["class_ids"][2, :, 2:] == 255).all()
    assert (joined["class_ids"][2, :, :2] == 1).all()
    np.testing.assert_array_equal(joined["heights"], [3, 2, 5])


# --------------------------------------------------------------------------- config files

def test_models_config_parses_and_labels_point_at_served_versions():
    from serving.test_server import read_model_config_file
    (model,) = read_model_config_file(SERVING / "models.config")
    assert model.name == "fcn8s" and model.base_path == "/models/fcn8s"
    assert model.policy == "specific" and model.versions == (1, 2)
    assert model.labels == {"stable": 1, "canary": 2}
    assert set(model.labels.values()) <= set(model.versions)
    assert model.wanted([1, 2, 3]) == [1, 2]


def _text_fields(path: pathlib.Path) -> dict[str, list[str]]:
    fields: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        m = re.match(r"(\w+)\s*(?:\{\s*value:\s*(\S+)\s*\}|:\s*(\S+))", line)
        if m:
            fields.setdefault(m[1], []).append(m[2] or m[3])
    return fields


@pytest.mark.parametrize("name", ["batching_cpu.config", "batching_gpu.config"])
def test_batching_configs_are_consistent(name):
    fields = _text_fields(SERVING / name)
    assert set(fields) == {"max_batch_size", "batch_timeout_micros", "num_batch_threads",
                           "max_enqueued_batches", "allowed_batch_sizes",
                           "pad_variable_length_inputs"}
    allowed = [int(v) for v in fields["allowed_batch_sizes"]]
    assert allowed == sorted(allowed) and allowed[-1] == int(fields["max_batch_size"][0])
    assert fields["pad_variable_length_inputs"] == ["false"]  # zero padding changes masks


def test_monitoring_config_and_compose_file():
    yaml = pytest.importorskip("yaml")
    text = (SERVING / "monitoring.config").read_text()
    assert "enable: true" in text and '"/monitoring/prometheus/metrics"' in text
    compose = yaml.safe_load((SERVING / "docker-compose.yml").read_text())
    cpu, gpu = compose["services"]["tfserving"], compose["services"]["tfserving-gpu"]
    assert re.fullmatch(r"tensorflow/serving:\d+\.\d+\.\d+", cpu["image"])
    assert gpu["image"] == cpu["image"] + "-gpu"
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    for service in (cpu, gpu):
        assert {"8500:8500", "8501:8501"} == set(service["ports"])
        for volume in service["volumes"]:
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (SERVING / source).is_file(), volume
        flags = dict(f.split("=", 1) for f in service["command"])
        assert flags["--model_config_file"] == "/config/models.config"


# --------------------------------------------------------------------------- CLI pieces

def test_cli_reports_unreadable_image(tmp_path, capsys):
    from serving.client import main
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    assert main(["segment", "--server", "127.0.0.1:1", str(bad), "--out", str(tmp_path)]) == 2
    assert "broken.png" in capsys.readouterr().err


# --------------------------------------------------------------------------- test server

def write_tiny_saved_model(path: pathlib.Path, threshold: int) -> None:
    """A SavedModel with the export's signature names and dtypes but no network:
    class 1 where the red channel exceeds `threshold` (so versions are told apart)."""
    import tensorflow as tf

    class Tiny(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8,
                                                    name="images")])
        def serving_default(self, images):
            ids = tf.cast(images[..., 0] > threshold, tf.uint8)
            probs = tf.stack([1.0 - tf.cast(ids, tf.float32), tf.cast(ids, tf.float32)], -1)
            return {"class_ids": ids, "confidence": images[..., 1], "probabilities": probs}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
        def segment_encoded(self, image_bytes):
            def one(data):
                image = tf.io.decode_image(data, channels=3, expand_animations=False)
                ids = tf.cast(image[..., :1] > threshold, tf.uint8)
                return tf.io.encode_png(ids), tf.shape(image)[0], tf.shape(image)[1]
            png, h, w = tf.map_fn(one, image_bytes,
                                  fn_output_signature=(tf.string, tf.int32, tf.int32))
            return {"mask_png": png, "heights": h, "widths": w}

    module = Tiny()
    tf.saved_model.save(module, str(path), signatures={
        "serving_default": module.serving_default.get_concrete_function(),
        "segment_encoded": module.segment_encoded.get_concrete_function()})


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory):
    base = tmp_path_factory.mktemp("tiny") / "fcn8s"
    write_tiny_saved_model(base / "1", threshold=100)
    return base


@pytest.fixture(scope="module")
def tiny_server(tiny_base):
    from serving.test_server import start_test_server
    server = start_test_server(tiny_base, "fcn8s", rest_api_port=0, poll_interval=0.2)
    yield server
    server.stop()


def _image():
    return np.random.default_rng(0).integers(0, 256, (2, 7, 9, 3), dtype=np.uint8)


def test_test_server_predicts_and_encodes_like_tf_serving(tiny_server):
    from serving.grpc_client import PredictionClient
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc
    images = _image()
    with PredictionClient(tiny_server.address, "fcn8s") as client:
        result = client.segment_images(images)
    np.testing.assert_array_equal(result["class_ids"], images[..., 0] > 100)
    # The response carries values in typed fields (TF Serving's AsProtoField), not bytes.
    channel = grpc.insecure_channel(tiny_server.address)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "fcn8s"
    import tensorflow as tf
    request.inputs["images"].CopyFrom(tf.make_tensor_proto(images))
    request.output_filter.append("class_ids")
    response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request)
    channel.close()
    proto = response.outputs["class_ids"]
    assert list(response.outputs) == ["class_ids"]
    assert not proto.tensor_content and len(proto.int_val) == images[..., 0].size
    assert response.model_spec.version.value == 1
    assert response.model_spec.signature_name == "serving_default"


def test_test_server_rest_round_trip(tiny_server):
    from PIL import Image
    from serving.rest_client import RestPredictionClient
    images = _image()
    buffer = io.BytesIO()
    Image.fromarray(images[0]).save(buffer, "PNG")
    with RestPredictionClient(tiny_server.rest_address, "fcn8s") as client:
        result = client.segment_encoded([buffer.getvalue()])
        pixels = client.segment_images(images)
        with pytest.raises(ServingError) as caught:
            client.predict({"images": images.astype(np.float32) + 0.5})
    mask = np.array(Image.open(io.BytesIO(result["mask_png"][0])))  # raw bytes survived JSON
    np.testing.assert_array_equal(mask, images[0, ..., 0] > 100)
    np.testing.assert_array_equal(pixels["class_ids"], images[..., 0] > 100)
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_test_server_swaps_in_a_new_version_and_unloads_the_old(tiny_server, tiny_base):
    import time
    from serving.grpc_client import PredictionClient
    write_tiny_saved_model(tiny_base.parent / "staging", threshold=200)
    shutil.move(tiny_base.parent / "staging", tiny_base / "2")
    images = _image()
    with PredictionClient(tiny_server.address, "fcn8s") as client:
        deadline = time.monotonic() + 30
        while client.segment_images(images)["model_version"] != 2:
            assert time.monotonic() < deadline, "version 2 was not loaded"
            time.sleep(0.1)
        np.testing.assert_array_equal(client.segment_images(images)["class_ids"],
                                      images[..., 0] > 200)
        states = {s["version"]: s["state"] for s in client.get_model_status()}
    assert states == {2: "AVAILABLE", 1: "END"}  # latest-1 policy: version 1 unloaded


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


def test_tls_and_auth_header(tiny_base, certificate):
    from serving.grpc_client import PredictionClient
    from serving.test_server import start_test_server
    cert, key = certificate
    server = start_test_server(tiny_base, "fcn8s", ssl_cert=cert, ssl_key=key,
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


def test_failing_warmup_request_fails_the_load(tmp_path, tiny_base):
    """As TF Serving: warm-up records are replayed on load, and a bad one fails the load."""
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2
    from serving.grpc_client import PredictionClient
    from serving.test_server import start_test_server
    base = tmp_path / "fcn8s"
    shutil.copytree(tiny_base / "1", base / "1")
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "fcn8s"
    request.inputs["images"].CopyFrom(tf.make_tensor_proto(np.zeros((1, 4, 4, 3), np.float32)))
    (base / "1" / "assets.extra").mkdir()
    with tf.io.TFRecordWriter(str(base / "1" / "assets.extra" / "tf_serving_warmup_requests")) as w:
        w.write(prediction_log_pb2.PredictionLog(
            predict_log=prediction_log_pb2.PredictLog(request=request)).SerializeToString())
    server = start_test_server(base, "fcn8s")
    try:
        with PredictionClient(server.address, "fcn8s", max_retries=0) as client:
            (status,) = client.get_model_status()
            with pytest.raises(ServingError) as caught:
                client.segment_images(_image())
    finally:
        server.stop()
    assert status["state"] == "END"
    assert "warm-up request 1 failed" in status["error_message"]
    assert "Expects arg[0] to be uint8 but float is provided" in status["error_message"]
    assert caught.value.code == grpc.StatusCode.NOT_FOUND


def test_chunks_after_the_first_ask_for_the_version_that_answered_it():
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2
    from serving.grpc_client import PredictionClient
    seen = []

    def fake_predict(request, timeout=None, metadata=None):
        seen.append(request.model_spec.version.value if request.model_spec.HasField("version")
                    else None)
        response = predict_pb2.PredictResponse()
        response.model_spec.version.value = 5 if len(seen) == 1 else 6  # a rollout mid-batch
        n = tf.make_ndarray(request.inputs["images"]).shape[0]
        response.outputs["class_ids"].CopyFrom(tf.make_tensor_proto(np.zeros((n, 2, 2), np.uint8)))
        return response

    with PredictionClient("127.0.0.1:1", "fcn8s", max_request_bytes=4096 + 12 * 2) as client:
        client._predict_stub.Predict = fake_predict
        result = client.segment_images(np.zeros((5, 2, 2, 3), np.uint8), outputs=["class_ids"])
    assert seen == [None, 5, 5]  # 2 + 2 + 1 images; later chunks pinned to version 5
    assert result["class_ids"].shape == (5, 2, 2)


def test_cli_expands_folders_to_their_images(tmp_path):
    from serving.client import expand_images
    (tmp_path / "b.PNG").write_bytes(b"")
    (tmp_path / "a.jpg").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("")
    single = tmp_path / "x.png"
    assert expand_images([str(tmp_path), str(single)]) == [tmp_path / "a.jpg",
                                                           tmp_path / "b.PNG", single]


def test_test_server_rest_row_format_and_errors(tiny_server):
    import base64
    import requests
    from PIL import Image
    buffer = io.BytesIO()
    Image.fromarray(_image()[0]).save(buffer, "PNG")
    url = f"http://{tiny_server.rest_address}/v1/models/fcn8s"
    body = {"signature_name": "segment_encoded",
            "instances": [{"b64": base64.b64encode(buffer.getvalue()).decode()}]}
    answer = requests.post(url + ":predict", json=body, timeout=30)
    assert answer.status_code == 200
    (row,) = answer.json()["predictions"]
    assert row["heights"] == 7 and row["widths"] == 9
    missing = requests.post(url + "/versions/9:predict", json=body, timeout=30)
    assert missing.status_code == 404
    assert missing.json() == {"error": "Servable not found for request: Specific(fcn8s, 9)"}
    bad = requests.post(url + ":predict", data=b"{not json", timeout=30)
    assert bad.status_code == 400 and "JSON" in bad.json()["error"]
