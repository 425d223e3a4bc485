"""Conformance: what a client that is not ours sees, on real TF Serving or tfserving_dev.

The same tests run unchanged against whichever server serving/backends.py finds (the
`tensorflow_model_server` binary, Docker, an external server at $TFSERVING_GRPC_ADDRESS /
$TFSERVING_REST_ADDRESS, else tfserving_dev in-process); the line "serving backend: ..."
says which. Nothing here uses the project's clients: gRPC requests are built the way TF
Serving's own example client builds them (tensorflow_serving/example/resnet_client_grpc.py:
a plain channel, a PredictRequest with no output_filter, tf.make_tensor_proto), REST ones
with `requests` and `json` only (example/resnet_client.py). Each expected message names the
TF Serving source file it comes from.
"""
from __future__ import annotations

import base64
import io
import json
import re

import grpc
import numpy as np
import pytest
import requests
import tensorflow as tf
from PIL import Image
from tensorflow_serving.apis import (get_model_status_pb2, model_management_pb2,
                                     model_service_pb2_grpc, predict_pb2,
                                     prediction_service_pb2_grpc)

from tests.serving_fixtures import MODEL_NAME, model_base, serving_backend  # noqa: F401

pytestmark = pytest.mark.timeout(300)
KITTI_SIZE = (375, 1242)
GRPC_DEFAULT_LIMIT = 4 * 1024 * 1024  # gRPC's default max receive size


@pytest.fixture(scope="module")
def kitti_image(shared_data_or_none):
    """A 1242x375 KITTI training image (a noise image of that size without the data)."""
    if shared_data_or_none is not None:
        paths = sorted((shared_data_or_none / "kitti_road" / "training" / "image_2").glob("*.png"))
        if paths:
            image = np.array(Image.open(paths[0]).convert("RGB"))
            if image.shape[:2] == KITTI_SIZE:
                return image
    return np.random.default_rng(0).integers(0, 256, (*KITTI_SIZE, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def shared_data_or_none():
    from tests.conftest import SHARED_DATA
    return SHARED_DATA if SHARED_DATA.is_dir() else None


def png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def stub(serving_backend):  # noqa: F811
    channel = grpc.insecure_channel(serving_backend.address)  # gRPC's defaults: 4 MiB
    yield prediction_service_pb2_grpc.PredictionServiceStub(channel)
    channel.close()


@pytest.fixture(scope="module")
def rest_url(serving_backend):  # noqa: F811
    if not serving_backend.rest_address:
        pytest.skip("this backend has no REST address (set TFSERVING_REST_ADDRESS)")
    return f"http://{serving_backend.rest_address}"


def stock_request(signature: str, key: str, value) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL_NAME
    request.model_spec.signature_name = signature
    request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
    return request


# --------------------------------------------------------------------------- stock gRPC

def test_stock_grpc_client_on_serving_default_kitti_size(stub, kitti_image):
    """resnet_client_grpc.py's logic on one 1242x375 image: no output_filter, gRPC's 4 MiB
    default. With float probabilities in serving_default this was RESOURCE_EXHAUSTED
    (4,763,485 > 4,194,304 bytes)."""
    response = stub.Predict(stock_request("serving_default", "images", kitti_image[None]), 60.0)
    assert set(response.outputs) == {"class_ids", "confidence"}
    class_ids = tf.make_ndarray(response.outputs["class_ids"])
    assert class_ids.shape == (1, *KITTI_SIZE) and class_ids.dtype == np.uint8
    assert set(np.unique(class_ids)) <= {0, 1}
    assert response.ByteSize() < GRPC_DEFAULT_LIMIT


def test_stock_grpc_client_on_segment_encoded_kitti_size(stub, kitti_image):
    blob = png_bytes(kitti_image)
    response = stub.Predict(stock_request("segment_encoded", "image_bytes",
                                          np.array([blob], dtype=object)), 60.0)
    assert response.ByteSize() < GRPC_DEFAULT_LIMIT
    mask = np.array(Image.open(io.BytesIO(response.outputs["mask_png_bytes"].string_val[0])))
    assert mask.shape == KITTI_SIZE
    confidence = Image.open(io.BytesIO(response.outputs["confidence_png_bytes"].string_val[0]))
    assert confidence.size == (KITTI_SIZE[1], KITTI_SIZE[0])


@pytest.mark.parametrize("model_spec, code, message", [
    # model_servers/server_core.cc ServableRequestFromModelSpec
    ({"name": ""}, grpc.StatusCode.INVALID_ARGUMENT, "ModelSpec has no name specified."),
    # model_servers/server_core.cc GetModelVersionForLabel
    ({"name": MODEL_NAME, "version_label": "nope"}, grpc.StatusCode.INVALID_ARGUMENT,
     "Unrecognized servable version label: nope"),
    # core/basic_manager.cc (ServableRequest::DebugString)
    ({"name": "nope"}, grpc.StatusCode.NOT_FOUND, "Servable not found for request: Latest(nope)"),
])
def test_model_spec_errors(stub, model_spec, code, message):
    request = stock_request("serving_default", "images", np.zeros((1, 8, 8, 3), np.uint8))
    request.model_spec.Clear()
    for key, value in model_spec.items():
        setattr(request.model_spec, key, value)
    with pytest.raises(grpc.RpcError) as caught:
        stub.Predict(request, 30.0)
    assert caught.value.code() == code and caught.value.details() == message


def test_no_shape_pre_check_the_graph_answers(stub):
    """servables/tensorflow/predict_util.cc checks names and counts, not shapes: a rank-3
    image reaches the graph, whose resize op refuses it (INVALID_ARGUMENT)."""
    with pytest.raises(grpc.RpcError) as caught:
        stub.Predict(stock_request("serving_default", "images",
                                   np.zeros((8, 8, 3), np.uint8)), 30.0)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "must be 4-dimensional" in caught.value.details()


def test_get_model_status_always_sets_status(serving_backend):  # noqa: F811
    """model_servers/get_model_status_impl.cc: status = ToStatusProto(health), OK included."""
    with grpc.insecure_channel(serving_backend.address) as channel:
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = MODEL_NAME
        response = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(request, 30)
    by_version = {s.version: s for s in response.model_version_status}
    assert {1, 2} <= set(by_version)
    for version in (1, 2):
        assert by_version[version].state == get_model_status_pb2.ModelVersionStatus.AVAILABLE
        assert by_version[version].HasField("status")
        assert by_version[version].status.error_code == 0


def test_handle_reload_config_request(serving_backend, model_base):  # noqa: F811
    """model_servers/model_service_impl.cc: the models.config the server started with,
    sent again, is applied with an OK status."""
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2
    if not serving_backend.sees_model_base:
        pytest.skip(f"{serving_backend.kind}: we do not know the config it was started with")
    config = text_format.Parse((model_base / "models.config").read_text(),
                               model_server_config_pb2.ModelServerConfig())
    with grpc.insecure_channel(serving_backend.address) as channel:
        response = model_service_pb2_grpc.ModelServiceStub(channel).HandleReloadConfigRequest(
            model_management_pb2.ReloadConfigRequest(config=config), 60)
    assert response.status.error_code == 0, response.status.error_message


# --------------------------------------------------------------------------- plain REST

def test_plain_requests_json_gets_pngs_pil_opens(rest_url, kitti_image):
    """resnet_client.py's logic: `{"instances": [{"b64": ...}]}`, `.json()`. The PNG
    outputs end in `_bytes`, so they come as {"b64": ...} (util/json_tensor.cc); before,
    `.json()` replaced 501 bytes of one mask and PIL could not open it (tensorflow/serving
    #1993)."""
    body = json.dumps({"signature_name": "segment_encoded",
                       "instances": [{"b64": base64.b64encode(png_bytes(kitti_image)).decode()}]})
    response = requests.post(f"{rest_url}/v1/models/{MODEL_NAME}:predict", data=body,
                             timeout=120)
    assert response.status_code == 200, response.text[:500]
    json.loads(response.content.decode("utf-8"))  # strict: valid UTF-8 and valid JSON
    (prediction,) = response.json()["predictions"]
    mask = np.array(Image.open(io.BytesIO(base64.b64decode(prediction["mask_png_bytes"]["b64"]))))
    assert mask.shape == KITTI_SIZE
    confidence = base64.b64decode(prediction["confidence_png_bytes"]["b64"])
    assert Image.open(io.BytesIO(confidence)).size == (KITTI_SIZE[1], KITTI_SIZE[0])
    assert prediction["heights"] == KITTI_SIZE[0] and prediction["widths"] == KITTI_SIZE[1]


def test_plain_rest_serving_default_rows(rest_url):
    image = np.random.default_rng(1).integers(0, 256, (2, 10, 12, 3), dtype=np.uint8)
    response = requests.post(f"{rest_url}/v1/models/{MODEL_NAME}:predict",
                             data=json.dumps({"instances": image.tolist()}), timeout=60)
    assert response.status_code == 200, response.text[:500]
    rows = response.json()["predictions"]
    assert len(rows) == 2 and set(rows[0]) == {"class_ids", "confidence"}
    assert np.array(rows[0]["class_ids"]).shape == (10, 12)


def test_rest_floats_give_the_float32_back(rest_url, stub):
    """util/json_tensor.cc WriteDecimal: 6 significant digits when they give the float back,
    else max_digits10 (9): every number parses back to the float32 gRPC returns."""
    image = np.random.default_rng(2).integers(0, 256, (1, 6, 7, 3), dtype=np.uint8)
    response = requests.post(f"{rest_url}/v1/models/{MODEL_NAME}:predict", timeout=60,
                             data=json.dumps({"signature_name": "segment_probabilities",
                                              "inputs": image.tolist()}))
    assert response.status_code == 200, response.text[:500]
    texts = re.findall(r"-?\d[\d.e+-]*", response.text)
    via_grpc = tf.make_ndarray(stub.Predict(stock_request(
        "segment_probabilities", "images", image), 30.0).outputs["probabilities"]).ravel()
    assert len(texts) == via_grpc.size
    np.testing.assert_array_equal(np.array(texts, dtype=np.float64).astype(np.float32),
                                  via_grpc)
    digits = [len(re.sub(r"e.*|[-.]", "", t).lstrip("0")) for t in texts]
    assert max(digits) <= 9 and max(digits) > 6  # neither truncated to 6 nor printed long


@pytest.mark.parametrize("method, path, body, status, message", [
    # model_servers/http_rest_api_handler.cc GetInfoMap
    ("POST", "/v1/models/fcn8s:predict", {"signature_name": "nope", "instances": [[1]]}, 400,
     'Serving signature name: "nope" not found in signature def'),
    # model_servers/http_rest_api_handler.cc ProcessRequest
    ("POST", "/v1/models/fcn8s/metadata", {}, 400,
     "Malformed request: POST /v1/models/fcn8s/metadata"),
    ("GET", "/v1/models", None, 400, "Missing model name in request."),
    # util/json_tensor.cc FillPredictRequestFromJson
    ("POST", "/v1/models/fcn8s:predict", {"instances": []}, 400,
     "No values in 'instances' array"),
    ("POST", "/v1/models/fcn8s:predict", {"signature_name": "serving_default"}, 400,
     "Missing 'inputs' or 'instances' key"),
])
def test_rest_errors(rest_url, method, path, body, status, message):
    response = requests.request(method, rest_url + path, timeout=60,
                                data=None if body is None else json.dumps(body))
    assert response.status_code == status, response.text[:300]
    assert message in response.json()["error"]


def test_rest_paths_are_case_insensitive_but_not_their_verbs(rest_url):
    """model_servers/http_rest_api_util.cc: the path regexes start with (?i); but
    http_rest_api_handler.cc ProcessRequest compares the verb as written, so "/METADATA" is
    a status request and ":PREDICT" is malformed."""
    response = requests.get(f"{rest_url}/V1/Models/{MODEL_NAME}/Labels/canary/metadata",
                            timeout=60)
    assert response.status_code == 200, response.text[:300]
    assert response.json()["model_spec"]["version"] == "2"
    response = requests.get(f"{rest_url}/v1/models/{MODEL_NAME}/versions/2/METADATA", timeout=60)
    assert response.status_code == 200 and "model_version_status" in response.json()
    response = requests.post(f"{rest_url}/v1/models/{MODEL_NAME}:PREDICT", timeout=60,
                             data=json.dumps({"instances": [[[[0, 0, 0]]]]}))
    assert response.status_code == 400
    assert response.json()["error"] == f"Malformed request: POST /v1/models/{MODEL_NAME}:PREDICT"


def test_rest_extra_input_keys_are_ignored_and_base64_padding_is_optional(rest_url):
    """util/json_tensor.cc FillTensorMapFromInputsMap reads the signature's own keys only;
    absl::Base64Unescape takes unpadded base64."""
    image = np.random.default_rng(3).integers(0, 256, (1, 5, 7, 3), dtype=np.uint8)
    response = requests.post(f"{rest_url}/v1/models/{MODEL_NAME}:predict", timeout=60,
                             data=json.dumps({"inputs": {"images": image.tolist(),
                                                         "not_an_input": [1, 2]}}))
    assert response.status_code == 200, response.text[:300]
    assert np.array(response.json()["outputs"]["class_ids"]).shape == (1, 5, 7)
    blob = png_bytes(image[0])
    unpadded = base64.b64encode(blob).decode().rstrip("=")
    assert len(unpadded) % 4, "pick an image whose base64 needs padding"
    response = requests.post(f"{rest_url}/v1/models/{MODEL_NAME}:predict", timeout=60,
                             data=json.dumps({"signature_name": "segment_encoded",
                                              "instances": [{"b64": unpadded}]}))
    assert response.status_code == 200, response.text[:300]
