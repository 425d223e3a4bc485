"""Serving pieces that need no model server: gRPC's retry and limit settings (against
scripted fake servers), the REST client's whole-call timeout, credentials, chunking, config
files, CLI bits."""
from __future__ import annotations

import pathlib
import re

import grpc
import numpy as np
import pytest

from serving.chunking import chunk_slices, concat_outputs
from serving.errors import ServingError

SERVING = pathlib.Path(__file__).resolve().parents[1] / "serving"


# --------------------------------------------------------------------------- gRPC's machinery

def test_service_config_retries_only_unavailable_with_throttling():
    """gRPC's service config (grpc/doc/service_config.md): retryPolicy on UNAVAILABLE only,
    maxAttempts capped at 5 (gRPC's own cap), retryThrottling, waitForReady."""
    import json
    from serving.channel import service_config
    config = service_config(9, 0.1, 5.0, None, 4194304)
    (method,) = config["methodConfig"]
    assert {n["service"] for n in method["name"]} == {"tensorflow.serving.PredictionService",
                                                       "tensorflow.serving.ModelService"}
    assert method["waitForReady"] is True
    assert method["retryPolicy"] == {"maxAttempts": 5, "initialBackoff": "0.100s",
                                     "maxBackoff": "5.000s", "backoffMultiplier": 2,
                                     "retryableStatusCodes": ["UNAVAILABLE"]}
    assert method["maxResponseMessageBytes"] == 4194304
    assert config["retryThrottling"] == {"maxTokens": 10, "tokenRatio": 0.1}
    json.dumps(config)  # what the channel option takes
    assert "retryPolicy" not in service_config(1, 0.1, 5.0, None, None)["methodConfig"][0]


def test_channel_keeps_grpc_reconnect_backoff(monkeypatch):
    """grpc.min_reconnect_backoff_ms also caps the connect timeout (20 s by default,
    grpc/doc/connection-backoff.md): the client must not set it."""
    import grpc as grpc_module
    from serving import channel
    seen = {}

    def fake(address, options=None):
        seen.update(dict(options))
        return "channel"
    monkeypatch.setattr(grpc_module, "insecure_channel", fake)
    assert channel.make_channel("127.0.0.1:1") == "channel"
    assert not any("reconnect_backoff" in key for key in seen)
    assert seen["grpc.enable_retries"] == 1 and "grpc.service_config" in seen


def test_credentials_over_plaintext_are_refused_unless_allowed():
    from serving.grpc_client import PredictionClient
    from serving.rest_client import RestPredictionClient
    with pytest.raises(ValueError, match="plaintext"):
        PredictionClient("127.0.0.1:1", "m", metadata={"Authorization": "Bearer t"})
    with pytest.raises(ValueError, match="plaintext"):
        RestPredictionClient("127.0.0.1:1", "m", headers={"Authorization": "Bearer t"})
    PredictionClient("127.0.0.1:1", "m", metadata={"authorization": "Bearer t"},
                     allow_plaintext_credentials=True).close()
    RestPredictionClient("https://127.0.0.1:1", "m",
                         headers={"Authorization": "Bearer t"}).close()


def test_cli_refuses_auth_without_tls(capsys):
    from serving.client import main
    # refused before any connection is tried: nothing listens on port 1
    assert main(["status", "--server", "127.0.0.1:1", "--auth", "Bearer t"]) == 2
    assert capsys.readouterr().err.startswith(
        "error: 127.0.0.1:1: refusing to send an authorization header over a plaintext "
        "connection")


class _CountingPredictions:
    """A PredictionService whose Predict answers from a script of (code or None) and counts
    calls; None answers with `reply_bytes` of float output."""

    def __init__(self, script, reply_bytes=16):
        self.script, self.calls, self.reply_bytes = list(script), 0, reply_bytes

    def serve(self):
        from concurrent import futures
        from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc
        outer = self

        class Servicer(prediction_service_pb2_grpc.PredictionServiceServicer):
            def Predict(self, request, context):
                outer.calls += 1
                code = outer.script.pop(0) if outer.script else None
                if code is not None:
                    context.abort(code, f"scripted {code.name}")
                response = predict_pb2.PredictResponse()
                response.model_spec.version.value = 1
                out = response.outputs["class_ids"]
                out.dtype = 4  # DT_UINT8
                out.tensor_shape.dim.add(size=outer.reply_bytes)
                out.tensor_content = bytes(outer.reply_bytes)
                return response

        server = grpc.server(futures.ThreadPoolExecutor(2),
                             options=[("grpc.max_send_message_length", -1)])
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(Servicer(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        return server, f"127.0.0.1:{port}"


def _predict_once(address, **client_args):
    from serving.grpc_client import PredictionClient
    with PredictionClient(address, "m", timeout=20, initial_backoff=0.01, max_backoff=0.05,
                          **client_args) as client:
        return client.predict({"images": np.zeros((1, 2, 2, 3), np.uint8)},
                              output_filter=["class_ids"])


def test_unavailable_is_retried_by_grpc_itself():
    fake = _CountingPredictions([grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAVAILABLE])
    server, address = fake.serve()
    try:
        outputs, version = _predict_once(address)
    finally:
        server.stop(None)
    assert fake.calls == 3 and version == 1 and outputs["class_ids"].shape == (16,)


@pytest.mark.parametrize("code", [grpc.StatusCode.RESOURCE_EXHAUSTED,
                                  grpc.StatusCode.DEADLINE_EXCEEDED,
                                  grpc.StatusCode.INVALID_ARGUMENT])
def test_other_codes_are_not_retried(code):
    fake = _CountingPredictions([code])
    server, address = fake.serve()
    try:
        with pytest.raises(ServingError) as caught:
            _predict_once(address)
    finally:
        server.stop(None)
    assert caught.value.code == code and fake.calls == 1


def test_reply_over_the_limit_fails_at_once_naming_the_limit():
    """One reply too large used to run the model 6 times (RESOURCE_EXHAUSTED retried)."""
    fake = _CountingPredictions([], reply_bytes=5 * 1024 * 1024)
    server, address = fake.serve()
    try:
        with pytest.raises(ServingError) as caught:
            _predict_once(address)
        assert fake.calls == 1
        message = caught.value.message
        assert caught.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "4,194,304 bytes" in message and "max_response_bytes" in message
        assert "--max-response-bytes" in message
        outputs, _ = _predict_once(address, max_response_bytes=-1)  # raised: it arrives
        assert outputs["class_ids"].shape == (5 * 1024 * 1024,)
    finally:
        server.stop(None)


def test_rest_timeout_bounds_the_whole_call():
    """A server that trickles its reply (each read well inside the timeout) is cut off at
    the call's deadline: requests' own timeout bounds only each socket read."""
    import threading
    import time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from serving.rest_client import RestPredictionClient

    class Trickle(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            try:
                for _ in range(1000):
                    self.wfile.write(b" ")
                    self.wfile.flush()
                    time.sleep(0.02)
            except (BrokenPipeError, ConnectionResetError):
                # the client gave up, as it should; the thread must not outlive the test
                # with a traceback printed into a later test's captured stderr
                return

        def log_message(self, *args):
            pass
    server = ThreadingHTTPServer(("127.0.0.1", 0), Trickle)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with RestPredictionClient(f"127.0.0.1:{server.server_address[1]}", "m",
                                  timeout=1.0) as client:
            start = time.monotonic()
            with pytest.raises(ServingError) as caught:
                client.get_model_status()
            elapsed = time.monotonic() - start
    finally:
        server.shutdown()
        server.server_close()
    assert caught.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert elapsed < 3.0, elapsed  # the trickle would take 20 s


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
    from tfserving_dev.config import read_model_config_file
    (model,) = read_model_config_file(SERVING / "models.config")
    assert model.name == "fcn8s" and model.base_path == "/models/fcn8s"
    assert model.policy == "specific" and model.versions == (1, 2)
    assert model.labels == {"stable": 1, "canary": 2}
    assert set(model.labels.values()) <= set(model.versions)
    assert model.aspired([1, 2, 3]) == [1, 2]


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
    batching = compose["services"]["tfserving-batching"]
    assert re.fullmatch(r"tensorflow/serving:\d+\.\d+\.\d+", cpu["image"])
    assert gpu["image"] == cpu["image"] + "-gpu"
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    for service in (cpu, batching, gpu):
        assert {"8500:8500", "8501:8501"} == set(service["ports"])
        for volume in service["volumes"]:
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (SERVING / source).is_file(), volume
        flags = dict(f.split("=", 1) for f in service["command"])
        assert flags["--model_config_file"] == "/config/models.config"


# --------------------------------------------------------------------------- CLI pieces

def test_cli_reports_unreadable_image(tmp_path, capsys):
    from concurrent import futures
    from serving.client import main
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    # a gRPC server with no services: the image is refused before any call is made
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        assert main(["segment", "--server", f"127.0.0.1:{port}", str(bad),
                     "--output", str(tmp_path)]) == 2
    finally:
        server.stop(None)
    assert capsys.readouterr().err == f"error: {bad}: not an image (unrecognised format)\n"


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


