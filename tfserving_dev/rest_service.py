"""TF Serving's REST API (g3doc/api_rest.md), answering as model_servers/
http_rest_api_handler.cc, http_rest_api_util.cc and util/json_tensor.cc do:

  * every path matching `(?i)/v1/.*` is the API's; one the API does not know is
    400 "Malformed request: METHOD PATH" (paths are case-insensitive);
  * an unknown signature is 400 `Serving signature name: "X" not found in signature def`;
  * "inputs" (columnar) or "instances" (row) format; a key in "inputs" that the signature
    does not name is ignored; an empty "instances" is refused;
  * {"b64": ...} for string inputs, padded or not (absl::Base64Unescape);
  * string outputs are {"b64": ...} only when the output's name ends in "_bytes"; others are
    written byte for byte inside a JSON string, valid UTF-8 or not, as rapidjson does;
  * floats as absl::StrCat writes them (6 significant digits), or with 9 when 6 do not give
    the float back, whole numbers with ".0";
  * errors as {"error": message} with the status mapped by http_server.cc ToHTTPStatusCode.
"""
from __future__ import annotations

import base64
import binascii
import json
import logging
import math
import re
from http.server import BaseHTTPRequestHandler

import numpy as np
import tensorflow as tf
from google.protobuf import json_format
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow_serving.apis import get_model_metadata_pb2, predict_pb2

from contract.names import SERVING_DEFAULT
from tfserving_dev.errors import GRPC_TO_HTTP, Code, RequestError
from tfserving_dev.grpc_service import metadata_response, status_response
from tfserving_dev.manager import ModelManager

log = logging.getLogger("tfserving_dev.rest")

_API = re.compile(r"(?i)/v1/.*")
# http_rest_api_util.cc kPredictionApiGegex and kModelStatusApiRegex
_PREDICT = re.compile(r"(?i)/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?"
                      r":(classify|regress|predict)")
_STATUS = re.compile(r"(?i)/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|"
                     r"(?:/labels/([^/:]+)))?(?:\/(metadata))?")
_BYTES_SUFFIX = "_bytes"      # json_tensor.cc kBytesTensorNameSuffix
_DTYPE_NAMES = {v: types_pb2.DataType.Name(v)[3:].lower() for v in types_pb2.DataType.values()}


# --------------------------------------------------------------------------- JSON writing

def _float_text(value: float, dtype) -> str:
    """json_tensor.cc WriteDecimal."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "-Infinity" if value < 0 else "Infinity"
    text = "%g" % value
    if dtype(text) != dtype(value):
        text = "%.*g" % (9 if dtype == np.float32 else 17, value)
    if "." not in text and "e" not in text:
        text += ".0"
    return text


def _string_bytes(data: bytes) -> bytes:
    """A JSON string of raw bytes: quotes, backslashes and control characters escaped,
    everything else (bytes >= 0x80 included) as is, like rapidjson's Writer::String."""
    out = bytearray(b'"')
    for byte in data:
        if byte == 0x22:
            out += b'\\"'
        elif byte == 0x5C:
            out += b"\\\\"
        elif byte < 0x20:
            out += {8: b"\\b", 9: b"\\t", 10: b"\\n", 12: b"\\f", 13: b"\\r"}.get(
                byte, b"\\u%04x" % byte)
        else:
            out.append(byte)
    return bytes(out + b'"')


def tensor_json(name: str, array: np.ndarray) -> bytes:
    """One output as JSON text (bytes: non-`_bytes` strings need not be UTF-8)."""
    array = np.asarray(array, dtype=object if isinstance(array, bytes) else None)
    if array.dtype == object or array.dtype.kind == "S":
        if name.endswith(_BYTES_SUFFIX):
            def item(b):
                return b'{"b64": "' + base64.b64encode(b) + b'"}'
        else:
            item = _string_bytes
    elif array.dtype.kind == "f":
        kind = np.float32 if array.dtype == np.float32 else np.float64

        def item(v):
            return _float_text(float(v), kind).encode()
    elif array.dtype == np.bool_:
        def item(v):
            return b"true" if v else b"false"
    else:
        def item(v):
            return str(int(v)).encode()

    def walk(value) -> bytes:
        if isinstance(value, np.ndarray) and value.ndim > 0:
            return b"[" + b",".join(walk(v) for v in value) + b"]"
        return item(value[()] if isinstance(value, np.ndarray) else value)
    return walk(array)


def _row(outputs: dict[str, np.ndarray], i: int) -> bytes:
    return b"{" + b",".join(_string_bytes(n.encode()) + b": " + tensor_json(n, v[i])
                            for n, v in outputs.items()) + b"}"


def predict_json(outputs: dict[str, np.ndarray], row_format: bool) -> bytes:
    """json_tensor.cc MakeJsonFromTensors: one output is sent bare, several as an object."""
    if row_format:
        if len(outputs) == 1:
            (name, value), = outputs.items()
            return b'{"predictions": ' + tensor_json(name, value) + b"}"
        rows = len(next(iter(outputs.values())))
        return b'{"predictions": [' + b",".join(_row(outputs, i) for i in range(rows)) + b"]}"
    if len(outputs) == 1:
        (name, value), = outputs.items()
        return b'{"outputs": ' + tensor_json(name, value) + b"}"
    return b'{"outputs": {' + b",".join(_string_bytes(n.encode()) + b": " + tensor_json(n, v)
                                        for n, v in outputs.items()) + b"}}"


# --------------------------------------------------------------------------- JSON reading

def _b64(value, name: str) -> bytes:
    if set(value) != {"b64"} or not isinstance(value["b64"], str):
        raise RequestError(Code.INVALID_ARGUMENT,
                           f"JSON Value: {json.dumps(value)} not formatted correctly for "
                           f"base64 data")
    text = value["b64"]
    try:  # padded or not, as absl::Base64Unescape
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(Code.INVALID_ARGUMENT,
                           f"JSON Value: {json.dumps(value)} not formatted correctly for "
                           f"base64 data") from None


def json_to_tensor(value, dtype: int, name: str) -> tensor_pb2.TensorProto:
    if dtype == types_pb2.DT_STRING:
        def unwrap(v):
            if isinstance(v, list):
                return [unwrap(x) for x in v]
            if isinstance(v, dict):
                return _b64(v, name)
            if isinstance(v, str):
                return v.encode("utf-8")
            raise RequestError(Code.INVALID_ARGUMENT,
                               f"JSON Value: {json.dumps(v)} Type: {type(v).__name__} is not "
                               f"of expected type: string")
        return tf.make_tensor_proto(np.array(unwrap(value), dtype=object))
    target = np.dtype(tf.as_dtype(dtype).as_numpy_dtype)
    try:
        parsed = np.array(value)
        if parsed.dtype == object or parsed.dtype.kind not in "biuf":
            raise TypeError(f"not an array of numbers (a ragged list, or strings)")
        if target.kind in "iub" and parsed.dtype.kind == "f" and parsed.size:
            raise TypeError("JSON numbers with a fraction or exponent are not integers")
        converted = parsed.astype(target)
        if target.kind in "iub" and not np.array_equal(converted, parsed):
            raise ValueError("values out of the range of the type")
    except (ValueError, TypeError, OverflowError) as err:
        raise RequestError(Code.INVALID_ARGUMENT,
                           f"input '{name}': cannot convert JSON to "
                           f"{_DTYPE_NAMES[dtype]}: {err}") from err
    return tf.make_tensor_proto(converted)


def request_inputs(body: dict, signature) -> tuple[dict, bool]:
    """json_tensor.cc FillPredictRequestFromJson: (TensorProtos, row format?)."""
    infos = signature.inputs
    if "instances" in body and "inputs" in body:
        raise RequestError(Code.INVALID_ARGUMENT,
                           f"JSON Value: {json.dumps(body)[:200]} Not formatted correctly "
                           f"expecting only one of 'inputs' or 'instances' keys to exist ")
    if "instances" in body:
        instances = body["instances"]
        if not isinstance(instances, list):
            raise RequestError(Code.INVALID_ARGUMENT,
                               f"JSON Value: {json.dumps(body)[:200]} Expecting 'instances' "
                               f"to be an list/array")
        if not instances:
            raise RequestError(Code.INVALID_ARGUMENT,
                               f"JSON Value: {json.dumps(body)[:200]} No values in "
                               f"'instances' array")
        named = isinstance(instances[0], dict) and not set(instances[0]) == {"b64"}
        if len(infos) == 1 and not named:
            columns = {next(iter(infos)): instances}
        else:
            columns = {}
            for n in infos:
                if not all(isinstance(r, dict) and n in r for r in instances):
                    raise RequestError(Code.INVALID_ARGUMENT,
                                       f"Failed to process element: 0 key: {n} of "
                                       f"'instances' list. Error: missing input")
                columns[n] = [r[n] for r in instances]
        return {n: json_to_tensor(v, infos[n].dtype, n) for n, v in columns.items()}, True
    if "inputs" in body:
        given = body["inputs"]
        if not isinstance(given, dict) or set(given) == {"b64"}:
            if len(infos) > 1:
                raise RequestError(Code.INVALID_ARGUMENT,
                                   "inputs is a plain value/list, but expecting an object as "
                                   "multiple input tensors required as per tensorinfo_map")
            (name,) = infos
            return {name: json_to_tensor(given, infos[name].dtype, name)}, False
        out = {}
        for name in infos:  # keys the signature does not name are ignored
            if name not in given:
                raise RequestError(Code.INVALID_ARGUMENT,
                                   f"Missing named input: {name} in 'inputs' object.")
            out[name] = json_to_tensor(given[name], infos[name].dtype, name)
        return out, False
    raise RequestError(Code.INVALID_ARGUMENT, "Missing 'inputs' or 'instances' key")


# --------------------------------------------------------------------------- handler

def _model_spec(name: str, version: str | None, label: str | None):
    spec = predict_pb2.PredictRequest().model_spec
    spec.name = name
    if version:
        spec.version.value = int(version)
    elif label:
        spec.version_label = label
    return spec


class RestHandler(BaseHTTPRequestHandler):
    manager: ModelManager  # set on the subclass made per server
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):  # quiet unless debugging
        log.debug("rest: " + fmt, *args)

    def _send(self, status: int, data: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, err: RequestError) -> None:
        self._send(GRPC_TO_HTTP.get(err.code, 500),
                   json.dumps({"error": err.message}, indent=1).encode())

    def _json(self, obj) -> None:
        self._send(200, json.dumps(obj, indent=1).encode())

    def do_GET(self):
        self._handle("GET")

    def do_POST(self):
        self._handle("POST")

    def _handle(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        path = self.path.split("?", 1)[0]
        if not _API.fullmatch(path):
            return self._send(404, b"")  # not a path the API registered
        try:
            # The regexes ignore case but the verbs are compared as they are
            # (http_rest_api_handler.cc ProcessRequest): ":PREDICT" is malformed and
            # "/METADATA" is a status request.
            if method == "POST" and (m := _PREDICT.fullmatch(path)) and m[4] == "predict":
                return self._predict(_model_spec(m[1], m[2], m[3]), body)
            if method == "GET" and (m := _STATUS.fullmatch(path)):
                if not m[1]:
                    raise RequestError(Code.INVALID_ARGUMENT, "Missing model name in request.")
                spec = _model_spec(m[1], m[2], m[3])
                return self._metadata(spec) if m[4] == "metadata" else self._status(spec)
            raise RequestError(Code.INVALID_ARGUMENT, f"Malformed request: {method} {path}")
        except RequestError as err:
            return self._error(err)

    def _status(self, spec) -> None:
        response = status_response(self.manager.version_states(spec))
        self._json(json_format.MessageToDict(response, always_print_fields_with_no_presence=True,
                                             preserving_proto_field_name=True))

    def _metadata(self, spec) -> None:
        servable = self.manager.resolve(spec)
        response = metadata_response(servable)
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signature_map)
        self._json({"model_spec": {"name": servable.name, "signature_name": "",
                                   "version": str(servable.version)},
                    "metadata": {"signature_def": json_format.MessageToDict(
                        signature_map, preserving_proto_field_name=True)}})

    def _predict(self, spec, raw: bytes) -> None:
        try:
            body = json.loads(raw)
        except ValueError as err:
            raise RequestError(Code.INVALID_ARGUMENT, f"JSON Parse error: {err}") from None
        if not isinstance(body, dict):
            raise RequestError(Code.INVALID_ARGUMENT,
                               "JSON Parse error: the request must be a JSON object")
        servable = self.manager.resolve(spec)
        signature_name = body.get("signature_name") or SERVING_DEFAULT
        signature = servable.signature_defs.get(signature_name)
        if signature is None:  # http_rest_api_handler.cc GetInfoMap
            raise RequestError(Code.INVALID_ARGUMENT, f'Serving signature name: '
                               f'"{signature_name}" not found in signature def')
        inputs, row_format = request_inputs(body, signature)
        outputs = servable.predict(signature_name, inputs, [])
        self._send(200, predict_json(outputs, row_format))
