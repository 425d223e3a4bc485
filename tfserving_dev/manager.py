"""A small stand-in for TensorFlow Serving, for tests and local development only.

It speaks the same gRPC API (PredictionService.Predict, GetModelMetadata and
ModelService.GetModelStatus) and, optionally, the REST API on a second port, loads SavedModels
from a model base path with numeric version folders the way TF Serving does (TF1 session,
warm-up records replayed), follows a models.config (version policies and labels), polls the
file system so new versions are swapped in under running clients, and answers bad requests
with TF Serving's status codes and messages.

It is NOT a production server: no request batching, no monitoring, one Python process whose
throughput is bounded by the GIL between TensorFlow calls. Use the official
`tensorflow/serving` image (serving/docker-compose.yml) for anything real.

    python -m serving.test_server --port 8500 --rest_api_port 8501 \
        --model_name fcn8s --model_base_path models/fcn8s
    python -m serving.test_server --port 8500 --model_config_file serving/models.config
"""
from __future__ import annotations

import argparse
import base64
import dataclasses
import json
import logging
import os
import pathlib
import re
import signal
import threading
import time
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import json_format, text_format
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2,
                                     model_service_pb2_grpc, predict_pb2,
                                     prediction_log_pb2, prediction_service_pb2_grpc)
from tensorflow_serving.config import model_server_config_pb2

from export.layout import WARMUP_PATH
from serving.errors import GRPC_TO_HTTP

log = logging.getLogger("serving.test_server")

# TF Serving sets the gRPC message limit to INT32_MAX, so big batches get through.
DEFAULT_MAX_MESSAGE_BYTES = 2**31 - 1
VersionState = get_model_status_pb2.ModelVersionStatus.State


class RequestError(Exception):
    """A request that fails with a gRPC status, as TF Serving would answer it."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


# --------------------------------------------------------------------------- configuration

@dataclasses.dataclass
class ModelConfig:
    """One entry of a model_config_list: where versions live and which ones to serve."""

    name: str
    base_path: str
    policy: str = "latest"          # 'latest' | 'all' | 'specific'
    num_versions: int = 1           # for 'latest'
    versions: tuple[int, ...] = ()  # for 'specific'
    labels: dict[str, int] = dataclasses.field(default_factory=dict)

    def wanted(self, on_disk: list[int]) -> list[int]:
        if self.policy == "all":
            return sorted(on_disk)
        if self.policy == "specific":
            return sorted(v for v in on_disk if v in self.versions)
        return sorted(on_disk)[-self.num_versions:]


def read_model_config_file(path: str | os.PathLike) -> list[ModelConfig]:
    """Parse a TF Serving models.config (text ModelServerConfig) into ModelConfigs."""
    path = pathlib.Path(path)
    try:
        config = text_format.Parse(path.read_text(), model_server_config_pb2.ModelServerConfig())
    except (OSError, text_format.ParseError) as err:
        raise ValueError(f"{path}: cannot read model config: {err}") from err
    models = []
    for entry in config.model_config_list.config:
        if entry.model_platform not in ("", "tensorflow"):
            raise ValueError(f"{path}: model {entry.name}: platform {entry.model_platform!r} "
                             "is not supported (only 'tensorflow')")
        base = os.path.abspath(entry.base_path)  # relative to the working directory, as TF Serving
        model = ModelConfig(name=entry.name, base_path=base, labels=dict(entry.version_labels))
        policy = entry.model_version_policy
        choice = policy.WhichOneof("policy_choice")
        if choice == "all":
            model.policy = "all"
        elif choice == "specific":
            model.policy = "specific"
            model.versions = tuple(policy.specific.versions)
        elif choice == "latest":
            model.num_versions = max(1, policy.latest.num_versions)
        models.append(model)
    if not models:
        raise ValueError(f"{path}: no model_config_list entries")
    return models


# --------------------------------------------------------------------------- servables

_DTYPE_NAMES = {v: types_pb2.DataType.Name(v)[3:].lower() for v in types_pb2.DataType.values()}
_DTYPE_NAMES.update({types_pb2.DT_FLOAT: "float", types_pb2.DT_DOUBLE: "double"})


class Servable:
    """One loaded version of one model, loaded the way TF Serving loads it: the 'serve'
    MetaGraph into a TF1 Session (restore op, then the init op), run by signature tensor
    names. Unlike tf.saved_model.load this catches exports whose variables a TF1-style
    loader cannot restore. The warm-up requests in assets.extra are replayed, and a failing
    one fails the load, as in TF Serving."""

    def __init__(self, name: str, version: int, path: pathlib.Path):
        self.name, self.version, self.path = name, version, path
        graph = tf.Graph()
        self._session = tf.compat.v1.Session(graph=graph)
        with graph.as_default():
            meta_graph = tf.compat.v1.saved_model.loader.load(self._session, ["serve"],
                                                              str(path))
        self.signature_defs = dict(meta_graph.signature_def)
        self.warmup_count = self._replay_warmup()

    def _replay_warmup(self) -> int:
        warmup = self.path / WARMUP_PATH
        if not warmup.is_file():
            return 0
        count = 0
        for record in tf.data.TFRecordDataset(str(warmup)):
            log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
            if log.WhichOneof("log_type") != "predict_log":
                raise ValueError(f"{warmup}: only predict_log warm-up records are supported")
            request = log.predict_log.request
            try:
                self.predict(request.model_spec.signature_name, dict(request.inputs),
                             list(request.output_filter))
            except RequestError as err:
                raise ValueError(f"{warmup}: warm-up request {count + 1} failed: "
                                 f"{err.code.name}: {err.message}") from err
            count += 1
        return count

    def predict(self, signature_name: str, inputs: dict[str, tensor_pb2.TensorProto],
                output_filter: list[str]) -> dict[str, np.ndarray]:
        signature_name = signature_name or "serving_default"
        signature = self.signature_defs.get(signature_name)
        if signature is None:
            raise RequestError(grpc.StatusCode.FAILED_PRECONDITION,
                               f'Serving signature key "{signature_name}" not found.')
        _check_input_names(signature, inputs)
        for alias in output_filter:
            if alias not in signature.outputs:
                raise RequestError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"output tensor alias not found in signature: {alias} Outputs expected to "
                    f"be in the set {{{','.join(sorted(signature.outputs))}}}.")
        if len(set(output_filter)) != len(output_filter):
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"duplicate output tensor alias: {output_filter}")
        feeds = {}
        for index, name in enumerate(sorted(signature.inputs)):
            proto, info = inputs[name], signature.inputs[name]
            if proto.dtype != info.dtype:
                # The Session's own check; a Python feed would silently cast instead.
                raise RequestError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"Expects arg[{index}] to be {_DTYPE_NAMES[info.dtype]} "
                    f"but {_DTYPE_NAMES.get(proto.dtype, proto.dtype)} is provided")
            try:
                value = tf.make_ndarray(proto)
            except Exception as err:  # malformed TensorProto (content size vs shape)
                raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"input '{name}': cannot parse tensor: {err}") from err
            expected = tf.TensorShape(info.tensor_shape)
            if not expected.is_compatible_with(value.shape):
                raise RequestError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"input '{name}' has shape {list(value.shape)} but the signature "
                    f"'{signature_name}' expects {expected.as_list()} (None = any size)")
            feeds[info.name] = value
        wanted = output_filter or sorted(signature.outputs)
        try:
            results = self._session.run({alias: signature.outputs[alias].name
                                         for alias in wanted}, feed_dict=feeds)
        except tf.errors.OpError as err:
            raise RequestError(_grpc_code(err.error_code), _op_error_message(err)) from err
        return {alias: np.asarray(results[alias]) for alias in wanted}


def _check_input_names(signature: meta_graph_pb2.SignatureDef,
                       inputs: dict[str, tensor_pb2.TensorProto]) -> None:
    sent, expected = set(inputs), set(signature.inputs)
    if sent != expected:
        # TF Serving's wording (predict_util.cc), so clients can match on it.
        raise RequestError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"input size does not match signature: {len(sent)}!={len(expected)} "
            f"len({{{','.join(sorted(sent))}}}) != len({{{','.join(sorted(expected))}}}). "
            f"Sent extra: {{{','.join(sorted(sent - expected))}}}. "
            f"Missing but required: {{{','.join(sorted(expected - sent))}}}.")


def _op_error_message(err: tf.errors.OpError) -> str:
    """The kernel's own message and node, as TF Serving's session reports it, without the
    eager wrapper's 'Graph execution error' / 'Detected at node' preamble."""
    lines = [line for line in err.message.splitlines() if line.strip()
             and not line.startswith(("Graph execution error", "Detected at node", "<stack"))]
    return "\n".join(lines) or err.message


def _grpc_code(tf_code: int) -> grpc.StatusCode:
    # TensorFlow's error codes are numerically the gRPC codes.
    for code in grpc.StatusCode:
        if code.value[0] == tf_code:
            return code
    return grpc.StatusCode.UNKNOWN


def as_proto_field(array: np.ndarray) -> tensor_pb2.TensorProto:
    """Encode like TF Serving's default (Tensor::AsProtoField): values in the typed fields."""
    proto = tensor_pb2.TensorProto(dtype=tf.as_dtype(array.dtype).as_datatype_enum)
    for size in array.shape:
        proto.tensor_shape.dim.add(size=size)
    flat = array.ravel()
    kind = array.dtype
    if kind == np.float32:
        proto.float_val.extend(flat.tolist())
    elif kind == np.float64:
        proto.double_val.extend(flat.tolist())
    elif kind in (np.uint8, np.int8, np.int16, np.uint16, np.int32):
        proto.int_val.extend(flat.tolist())
    elif kind == np.int64:
        proto.int64_val.extend(flat.tolist())
    elif kind == np.bool_:
        proto.bool_val.extend(flat.tolist())
    elif kind == object or kind.kind == "S":
        proto.string_val.extend(flat.tolist())
    else:  # anything rarer: the compact form, which every client decodes too
        return tf.make_tensor_proto(array)
    return proto


# --------------------------------------------------------------------------- model manager

class ModelManager:
    """Keeps the wanted versions of each model loaded, polling the file system.

    Readers get servables from an immutable snapshot that is replaced as a whole, so a
    request holds its servable until it is done, even when that version is unloaded meanwhile.
    """

    def __init__(self, models: list[ModelConfig], poll_interval: float = 1.0,
                 config_file: str | None = None, config_poll_interval: float = 0.0):
        self._configs = {m.name: m for m in models}
        self._servables: dict[str, dict[int, Servable]] = {m.name: {} for m in models}
        self._states: dict[str, dict[int, tuple[int, str]]] = {m.name: {} for m in models}
        self._failed: dict[tuple[str, int], float] = {}
        self._poll_interval = poll_interval
        self._config_file = config_file
        self._config_poll_interval = config_poll_interval
        self._config_mtime = os.path.getmtime(config_file) if config_file else None
        self._last_config_check = time.monotonic()
        self._lock = threading.Lock()  # one poller at a time; readers never wait on it
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- polling
    def start(self) -> None:
        self.poll()
        self._thread = threading.Thread(target=self._run, name="model-poller", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(self._poll_interval):
            try:
                self._maybe_reload_config()
                self.poll()
            except Exception:  # keep serving what is loaded; say why polling failed
                log.exception("polling the model base paths failed")

    def _maybe_reload_config(self) -> None:
        if not self._config_file or self._config_poll_interval <= 0:
            return
        if time.monotonic() - self._last_config_check < self._config_poll_interval:
            return
        self._last_config_check = time.monotonic()
        mtime = os.path.getmtime(self._config_file)
        if mtime == self._config_mtime:
            return
        models = read_model_config_file(self._config_file)
        self._config_mtime = mtime
        log.info("reloaded %s", self._config_file)
        configs = {m.name: m for m in models}
        with self._lock:
            servables = dict(self._servables)
            states = dict(self._states)
            for name in configs:
                servables.setdefault(name, {})
                states.setdefault(name, {})
            for name in set(servables) - set(configs):
                servables.pop(name)
                states.pop(name)
            self._configs = configs
            self._servables, self._states = servables, states

    def poll(self) -> None:
        with self._lock:
            for name, config in list(self._configs.items()):
                self._poll_model(name, config)

    def _poll_model(self, name: str, config: ModelConfig) -> None:
        on_disk = _versions_on_disk(config.base_path)
        wanted = config.wanted(on_disk)
        current = self._servables[name]
        states = dict(self._states[name])
        loaded = dict(current)
        for version in wanted:
            if version in loaded:
                continue
            failed_at = self._failed.get((name, version))
            if failed_at is not None and time.monotonic() - failed_at < 30:
                continue  # retry a broken version now and then, not every poll
            path = pathlib.Path(config.base_path) / str(version)
            states[version] = (VersionState.LOADING, "")
            self._states = {**self._states, name: dict(states)}  # visible while it loads
            try:
                loaded[version] = Servable(name, version, path)
            except Exception as err:
                self._failed[(name, version)] = time.monotonic()
                states[version] = (VersionState.END, f"{path}: loading failed: {err}")
                log.error("model %s version %d: loading %s failed: %s", name, version, path, err)
                continue
            self._failed.pop((name, version), None)
            states[version] = (VersionState.AVAILABLE, "")
            log.info("model %s: version %d loaded from %s (%d warm-up requests replayed)",
                     name, version, path, loaded[version].warmup_count)
        for version in set(loaded) - set(wanted):
            del loaded[version]
            states[version] = (VersionState.END, "")
            log.info("model %s: version %d unloaded", name, version)
        # Replace, never mutate: in-flight readers keep the dicts they got.
        if loaded != current:
            self._servables = {**self._servables, name: loaded}
        if states != self._states[name]:
            self._states = {**self._states, name: states}

    # -- lookups
    def resolve(self, model_spec) -> Servable:
        name = model_spec.name
        servables = self._servables.get(name)
        version = self._requested_version(model_spec)
        if version is None:
            if not servables:
                raise RequestError(grpc.StatusCode.NOT_FOUND,
                                   f"Servable not found for request: Latest({name})")
            return servables[max(servables)]
        if not servables or version not in servables:
            raise RequestError(grpc.StatusCode.NOT_FOUND,
                               f"Servable not found for request: Specific({name}, {version})")
        return servables[version]

    def _requested_version(self, model_spec) -> int | None:
        choice = model_spec.WhichOneof("version_choice")
        if choice == "version":
            return model_spec.version.value
        if choice == "version_label":
            label = model_spec.version_label
            config = self._configs.get(model_spec.name)
            if config is None or label not in config.labels:
                raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"Unrecognized servable version label: {label}")
            return config.labels[label]
        return None

    def version_states(self, model_spec) -> dict[int, tuple[int, str]]:
        # As TF Serving's GetModelStatus: a version number narrows the answer, a label does
        # not; newest version first.
        name = model_spec.name
        states = self._states.get(name, {})
        version = model_spec.version.value if model_spec.HasField("version") else None
        if version is None:
            if not states:
                raise RequestError(grpc.StatusCode.NOT_FOUND,
                                   f"Could not find any versions of model {name}")
            return dict(sorted(states.items(), reverse=True))
        if version not in states:
            raise RequestError(grpc.StatusCode.NOT_FOUND,
                               f"Could not find version {version} of model {name}")
        return {version: states[version]}


def _versions_on_disk(base_path: str) -> list[int]:
    try:
        entries = os.listdir(base_path)
    except FileNotFoundError:
        return []
    # A version is complete once saved_model.pb is there (exports write into a temporary
    # folder and rename it, so a numeric folder is never half-written).
    return sorted(int(e) for e in entries
                  if e.isdigit() and os.path.isfile(os.path.join(base_path, e, "saved_model.pb")))


# --------------------------------------------------------------------------- gRPC services

def _metadata_response(servable: Servable) -> get_model_metadata_pb2.GetModelMetadataResponse:
    response = get_model_metadata_pb2.GetModelMetadataResponse()
    response.model_spec.name = servable.name
    response.model_spec.version.value = servable.version
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    for key, signature in servable.signature_defs.items():
        signature_map.signature_def[key].CopyFrom(signature)
    response.metadata["signature_def"].Pack(signature_map)
    return response


def _check_metadata_request(request) -> None:
    if not request.HasField("model_spec"):
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, "Missing ModelSpec")
    if not request.metadata_field:
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                           "GetModelMetadataRequest must specify at least one metadata_field")
    for field in request.metadata_field:
        if field != "signature_def":
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"Metadata field {field} is not supported")


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, manager: ModelManager):
        self.manager = manager

    def Predict(self, request, context):
        try:
            servable = self.manager.resolve(request.model_spec)
            outputs = servable.predict(request.model_spec.signature_name, dict(request.inputs),
                                       list(request.output_filter))
        except RequestError as err:
            context.abort(err.code, err.message)
        response = predict_pb2.PredictResponse()
        response.model_spec.name = servable.name
        response.model_spec.version.value = servable.version
        response.model_spec.signature_name = request.model_spec.signature_name or "serving_default"
        for alias, value in outputs.items():
            response.outputs[alias].CopyFrom(as_proto_field(value))
        return response

    def GetModelMetadata(self, request, context):
        try:
            _check_metadata_request(request)
            return _metadata_response(self.manager.resolve(request.model_spec))
        except RequestError as err:
            context.abort(err.code, err.message)


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, manager: ModelManager):
        self.manager = manager

    def GetModelStatus(self, request, context):
        try:
            if not request.HasField("model_spec"):
                raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, "Missing ModelSpec")
            states = self.manager.version_states(request.model_spec)
        except RequestError as err:
            context.abort(err.code, err.message)
        return _status_response(states)


def _status_response(states: dict[int, tuple[int, str]]):
    response = get_model_status_pb2.GetModelStatusResponse()
    for version, (state, error) in states.items():
        entry = response.model_version_status.add(version=version, state=state)
        if error:
            entry.status.error_code = grpc.StatusCode.UNKNOWN.value[0]
            entry.status.error_message = error
    return response


class _RequireMetadata(grpc.ServerInterceptor):
    """Rejects calls without the given headers, like an auth proxy in front of TF Serving."""

    def __init__(self, required: dict[str, str]):
        self.required = required

        def deny(request, context):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong credentials")
        self._deny = grpc.unary_unary_rpc_method_handler(deny)

    def intercept_service(self, continuation, handler_call_details):
        got = dict(handler_call_details.invocation_metadata or ())
        if all(got.get(k) == v for k, v in self.required.items()):
            return continuation(handler_call_details)
        return self._deny


# --------------------------------------------------------------------------- REST API

_REST_PATH = re.compile(
    r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>\d+)|/labels/(?P<label>[^/:]+))?"
    r"(?P<verb>:predict|/metadata)?$")


def _rest_model_spec(match) -> Any:
    spec = predict_pb2.PredictRequest().model_spec
    spec.name = match["name"]
    if match["version"]:
        spec.version.value = int(match["version"])
    elif match["label"]:
        spec.version_label = match["label"]
    return spec


def _json_to_array(value, dtype: int, name: str) -> np.ndarray:
    if dtype == types_pb2.DT_STRING:
        def unwrap(v):
            if isinstance(v, list):
                return [unwrap(x) for x in v]
            if isinstance(v, dict):
                if set(v) != {"b64"}:
                    raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                                       f"input '{name}': JSON object must be {{\"b64\": ...}}")
                try:
                    return base64.b64decode(v["b64"], validate=True)
                except ValueError as err:
                    raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                                       f"input '{name}': bad base64: {err}") from err
            return v.encode("utf-8") if isinstance(v, str) else v
        return np.array(unwrap(value), dtype=object)
    target = np.dtype(tf.as_dtype(dtype).as_numpy_dtype)
    try:
        parsed = np.array(value)
        if parsed.dtype == object or parsed.dtype.kind not in "biuf":
            raise TypeError(f"not an array of numbers (numpy made {parsed.dtype} of it)")
        if target.kind in "iub" and parsed.dtype.kind == "f" and parsed.size:
            # TF Serving's JSON reader takes only JSON integers for integer tensors.
            raise TypeError("JSON numbers with a fraction or exponent are not integers")
        converted = parsed.astype(target)
        if target.kind in "iub" and not np.array_equal(converted, parsed):
            raise ValueError("values out of the range of the type")
        return converted
    except (ValueError, TypeError, OverflowError) as err:
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"input '{name}': cannot convert JSON to "
                           f"{_DTYPE_NAMES[dtype]}: {err}") from err


def _array_to_json(name: str, array: np.ndarray):
    if array.dtype == object:
        # As TF Serving: only outputs named *_bytes are base64 objects; other strings are
        # written as they are (surrogateescape keeps non-UTF-8 bytes byte-exact on the wire).
        if name.endswith("_bytes"):
            return _map_nested(array.tolist(), lambda b: {"b64": base64.b64encode(b).decode()})
        return _map_nested(array.tolist(), lambda b: b.decode("utf-8", "surrogateescape"))
    return array.tolist()


def _map_nested(value, fn):
    if isinstance(value, list):
        return [_map_nested(v, fn) for v in value]
    return fn(value)


class _RestHandler(BaseHTTPRequestHandler):
    manager: ModelManager  # set on the subclass made per server
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):  # quiet unless debugging
        log.debug("rest: " + fmt, *args)

    def _send(self, status: int, body: dict) -> None:
        data = json.dumps(body, ensure_ascii=False).encode("utf-8", "surrogateescape")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, err: RequestError) -> None:
        self._send(GRPC_TO_HTTP.get(err.code, 500), {"error": err.message})

    def do_GET(self):
        match = _REST_PATH.match(self.path)
        if not match or match["verb"] == ":predict":
            return self._send(404, {"error": f"Malformed request: GET {self.path}"})
        try:
            spec = _rest_model_spec(match)
            if match["verb"] == "/metadata":
                servable = self.manager.resolve(spec)
                response = _metadata_response(servable)
                signature_map = get_model_metadata_pb2.SignatureDefMap()
                response.metadata["signature_def"].Unpack(signature_map)
                return self._send(200, {
                    "model_spec": {"name": servable.name, "signature_name": "",
                                   "version": str(servable.version)},
                    "metadata": {"signature_def": json_format.MessageToDict(
                        signature_map, preserving_proto_field_name=True)}})
            states = self.manager.version_states(spec)
            return self._send(200, {"model_version_status": [
                {"version": str(v), "state": VersionState.Name(s),
                 "status": {"error_code": "UNKNOWN" if e else "OK", "error_message": e}}
                for v, (s, e) in states.items()]})
        except RequestError as err:
            return self._error(err)

    def do_POST(self):
        match = _REST_PATH.match(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        if not match or match["verb"] != ":predict":
            return self._send(404, {"error": f"Malformed request: POST {self.path}"})
        try:
            body = json.loads(raw)
            if not isinstance(body, dict):
                raise ValueError("body must be a JSON object")
        except ValueError as err:
            return self._error(RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                                            f"JSON Parse error: {err}"))
        try:
            servable = self.manager.resolve(_rest_model_spec(match))
            signature_name = body.get("signature_name") or "serving_default"
            signature = servable.signature_defs.get(signature_name)
            if signature is None:
                raise RequestError(grpc.StatusCode.FAILED_PRECONDITION,
                                   f'Serving signature key "{signature_name}" not found.')
            row_format = "instances" in body
            if row_format == ("inputs" in body):
                raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                                   "Missing 'inputs' or 'instances' key")
            inputs = self._decode_inputs(body, signature, row_format)
            outputs = servable.predict(signature_name, inputs, [])
        except RequestError as err:
            return self._error(err)
        if row_format:
            rows = len(next(iter(outputs.values())))
            if len(outputs) == 1:
                (name, value), = outputs.items()
                predictions = _array_to_json(name, value)
            else:
                columns = {n: _array_to_json(n, v) for n, v in outputs.items()}
                predictions = [{n: c[i] for n, c in columns.items()} for i in range(rows)]
            return self._send(200, {"predictions": predictions})
        if len(outputs) == 1:
            (name, value), = outputs.items()
            return self._send(200, {"outputs": _array_to_json(name, value)})
        return self._send(200, {"outputs": {n: _array_to_json(n, v) for n, v in outputs.items()}})

    @staticmethod
    def _decode_inputs(body, signature, row_format) -> dict[str, tensor_pb2.TensorProto]:
        names = sorted(signature.inputs)
        if row_format:
            instances = body["instances"]
            if not isinstance(instances, list):
                raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                                   "Expecting 'instances' to be an list/array")
            if len(names) == 1 and not (instances and isinstance(instances[0], dict)
                                        and set(instances[0]) == set(names)):
                columns = {names[0]: instances}
            else:
                columns = {n: [row.get(n) for row in instances] for n in names}
        else:
            given = body["inputs"]
            columns = given if isinstance(given, dict) and set(given) - {"b64"} else \
                {names[0]: given}
        return {name: tf.make_tensor_proto(
                    _json_to_array(value, signature.inputs[name].dtype
                                   if name in signature.inputs else types_pb2.DT_FLOAT, name))
                for name, value in columns.items()}


# --------------------------------------------------------------------------- server handle

@dataclasses.dataclass
class TestServer:
    """A running test server: `.address` (host:port for gRPC), `.rest_address`, `.stop()`."""

    address: str
    rest_address: str | None
    manager: ModelManager
    _grpc_server: grpc.Server
    _http_server: ThreadingHTTPServer | None

    __test__ = False  # not a pytest test class

    def stop(self, grace: float | None = 0.5) -> None:
        if self._http_server:
            self._http_server.shutdown()
            self._http_server.server_close()
        self._grpc_server.stop(grace).wait()
        self.manager.stop()

    def wait(self) -> None:
        self._grpc_server.wait_for_termination()


def start_test_server(model_base_path: str | os.PathLike | None = None,
                      model_name: str = "fcn8s", port: int = 0, *,
                      model_config_file: str | os.PathLike | None = None,
                      rest_api_port: int | None = None, host: str = "127.0.0.1",
                      poll_interval: float = 1.0, config_poll_interval: float = 0.0,
                      max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                      ssl_cert: bytes | None = None, ssl_key: bytes | None = None,
                      required_metadata: dict[str, str] | None = None,
                      max_workers: int = 8) -> TestServer:
    """Load the models and start serving; returns when the first versions are loaded.

    Give either `model_base_path` (+ `model_name`, serving the newest version) or
    `model_config_file`. `port=0` picks a free port; `rest_api_port=0` likewise, None = no REST.
    """
    if model_config_file:
        models = read_model_config_file(model_config_file)
    elif model_base_path:
        models = [ModelConfig(name=model_name, base_path=str(pathlib.Path(model_base_path)
                                                             .resolve()))]
    else:
        raise ValueError("give model_base_path or model_config_file")
    manager = ModelManager(models, poll_interval, str(model_config_file)
                           if model_config_file else None, config_poll_interval)
    manager.start()
    options = [("grpc.max_receive_message_length", max_message_bytes),
               ("grpc.max_send_message_length", max_message_bytes),
               # gRPC Python sets SO_REUSEPORT, which lets a second server bind the same port
               # and silently take half the connections: fail to start instead.
               ("grpc.so_reuseport", 0)]
    interceptors = [_RequireMetadata(required_metadata)] if required_metadata else []
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers),
                         options=options, interceptors=interceptors)
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionService(manager), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(manager), server)
    try:
        if ssl_cert:
            credentials = grpc.ssl_server_credentials([(ssl_key, ssl_cert)])
            bound = server.add_secure_port(f"{host}:{port}", credentials)
        else:
            bound = server.add_insecure_port(f"{host}:{port}")
    except RuntimeError:
        bound = 0
    if not bound:
        manager.stop()
        raise OSError(f"cannot listen on {host}:{port} (is another server using the port?)")
    http_server = None
    rest_address = None
    if rest_api_port is not None:
        handler = type("RestHandler", (_RestHandler,), {"manager": manager})
        try:
            http_server = ThreadingHTTPServer((host, rest_api_port), handler)
        except OSError as err:
            manager.stop()
            raise OSError(f"cannot listen on {host}:{rest_api_port} for REST: {err}") from err
        http_server.daemon_threads = True
    server.start()
    if http_server is not None:
        threading.Thread(target=http_server.serve_forever, name="rest", daemon=True).start()
        rest_address = f"{host}:{http_server.server_address[1]}"
    return TestServer(f"{host}:{bound}", rest_address, manager, server, http_server)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m serving.test_server",
        description="Stand-in TF Serving for tests and local development (not for production).")
    # TF Serving's flag names, with dashes accepted too.
    parser.add_argument("--port", type=int, default=8500, help="gRPC port (default 8500)")
    parser.add_argument("--rest_api_port", "--rest-api-port", type=int, default=0,
                        help="REST port; 0 = no REST (TF Serving's default is also 0)")
    parser.add_argument("--model_name", "--model-name", default="fcn8s")
    parser.add_argument("--model_base_path", "--model-base-path")
    parser.add_argument("--model_config_file", "--model-config-file")
    parser.add_argument("--model_config_file_poll_wait_seconds", type=float, default=0.0,
                        help="re-read the model config file this often (0 = never)")
    parser.add_argument("--file_system_poll_wait_seconds", type=float, default=1.0,
                        help="look for new versions this often (default 1)")
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--max_message_bytes", type=int, default=DEFAULT_MAX_MESSAGE_BYTES)
    parser.add_argument("--ssl_cert", help="PEM server certificate (enables TLS on gRPC)")
    parser.add_argument("--ssl_key", help="PEM private key for --ssl_cert")
    # Other tensorflow_model_server flags (--enable_batching, --rest_api_num_threads, ...) are
    # accepted and ignored, so command lines written for TF Serving run here too.
    args, ignored = parser.parse_known_args(argv)
    if not args.model_base_path and not args.model_config_file:
        parser.error("give --model_base_path or --model_config_file")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if ignored:
        log.warning("ignoring flags the test server does not implement: %s", " ".join(ignored))
    # TF's own logger repeats deprecation notes about the TF1 loader, which is used on
    # purpose (it is how TF Serving loads); keep the log to what this server says.
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    try:
        server = start_test_server(
            args.model_base_path, args.model_name, args.port,
            model_config_file=args.model_config_file,
            rest_api_port=args.rest_api_port or None, host=args.host,
            poll_interval=args.file_system_poll_wait_seconds,
            config_poll_interval=args.model_config_file_poll_wait_seconds,
            max_message_bytes=args.max_message_bytes,
            ssl_cert=pathlib.Path(args.ssl_cert).read_bytes() if args.ssl_cert else None,
            ssl_key=pathlib.Path(args.ssl_key).read_bytes() if args.ssl_key else None)
    except (ValueError, OSError) as err:
        parser.exit(2, f"error: {err}\n")
    log.info("gRPC on %s%s (test server: not for production)", server.address,
             f", REST on {server.rest_address}" if server.rest_address else "")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
