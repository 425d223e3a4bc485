"""REST client for a segmentation model on TensorFlow Serving (port 8501).

Same methods as serving.grpc_client.PredictionClient, over
`/v1/models/NAME[/versions/N|/labels/L]` (`:predict`, `/metadata`, status). Differences that
come from the REST API itself (g3doc/api_rest.md):
  * images travel as JSON numbers (about 4x the bytes of gRPC) and encoded images as
    {"b64": ...}; prefer gRPC for throughput;
  * a predict reply does not say which version answered. Unless a version is pinned, the
    client first asks `/metadata` (of the label, or of the newest version) which version
    that is, and sends the request to `/versions/N`: "model_version" is always known, and
    the chunks of one batch are answered by one version, as over gRPC;
  * REST has no output_filter: every output is computed and sent, and the filter is applied
    here. PNG outputs end in "_bytes", so TF Serving sends them as {"b64": ...}.

`timeout` bounds the whole call (connecting, sending, waiting and reading the reply), not
each socket read. Connection failures and 503 are retried with backoff (urllib3's Retry).
"""
from __future__ import annotations

import base64
import json
import time
from typing import Iterable, Mapping

import grpc
import numpy as np
import requests
from requests.adapters import HTTPAdapter
from urllib3 import exceptions as urllib3_exceptions
from urllib3.util.retry import Retry

from serving.base_client import (DEFAULT_MAX_REQUEST_BYTES, SERVING_DEFAULT,
                                 SegmentationClient, row_nbytes)
from serving.channel import refuse_plaintext_credentials
from serving.errors import HTTP_TO_GRPC, ServingError

# TensorFlow DataType names (as in metadata JSON) -> numpy dtypes.
_NUMPY_DTYPES = {"DT_FLOAT": np.float32, "DT_DOUBLE": np.float64, "DT_INT32": np.int32,
                 "DT_INT64": np.int64, "DT_UINT8": np.uint8, "DT_INT8": np.int8,
                 "DT_INT16": np.int16, "DT_UINT16": np.uint16, "DT_BOOL": np.bool_,
                 "DT_STRING": object}
# JSON numbers are text: one uint8 pixel channel is 1-4 bytes ("255,"), so the JSON request
# is ~3.5x the array. Chunk on that estimate.
_JSON_BYTES_PER_VALUE = 3.6
_READ_CHUNK = 1 << 16


class RestPredictionClient(SegmentationClient):
    """REST twin of PredictionClient. address: "host:port" or "http(s)://host:port".

    timeout: seconds for a whole call. max_retries: retries of refused connections and 503.
    verify: TLS verification (True = the system's CA bundle via requests, False, or a CA
    bundle path); cert: client certificate (path or (cert, key)); headers: extra headers,
    e.g. {"Authorization": "Bearer ..."}, refused over http:// unless
    allow_plaintext_credentials=True.
    """

    def __init__(self, address: str, model_name: str, version: int | None = None,
                 version_label: str | None = None, timeout: float = 30.0,
                 max_retries: int = 4, initial_backoff: float = 0.1, max_backoff: float = 5.0,
                 max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
                 verify: bool | str = True, cert=None,
                 headers: Mapping[str, str] | None = None,
                 allow_plaintext_credentials: bool = False):
        super().__init__(model_name, version, version_label, timeout, max_request_bytes)
        self.base_url = address if "://" in address else f"http://{address}"
        refuse_plaintext_credentials(dict(headers or {}), self.base_url.startswith("https://"),
                                     allow_plaintext_credentials, self.base_url)
        self._session = requests.Session()
        retry = Retry(total=max_retries, connect=max_retries, read=0, other=0,
                      status=max_retries, status_forcelist=(503,), allowed_methods=None,
                      backoff_factor=initial_backoff, backoff_max=max_backoff,
                      respect_retry_after_header=True, raise_on_status=False)
        for prefix in ("http://", "https://"):
            self._session.mount(prefix, HTTPAdapter(max_retries=retry))
        self._session.verify = verify
        self._session.cert = cert
        self._session.headers.update(headers or {})
        self._signatures: dict | None = None

    def close(self) -> None:
        self._session.close()

    # -- plumbing
    def _url(self, suffix: str = "", pin: int | None = None) -> str:
        url = f"{self.base_url}/v1/models/{self.model_name}"
        if pin is not None or self.version is not None:
            url += f"/versions/{self.version if pin is None else pin}"
        elif self.version_label is not None:
            url += f"/labels/{self.version_label}"
        return url + suffix

    def _call(self, method: str, url: str, body: dict | None, timeout: float | None) -> bytes:
        """One HTTP call within `timeout` seconds in all: every socket operation gets what
        is left, and reading the reply stops at the deadline."""
        budget = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + budget

        def left() -> float:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ServingError(grpc.StatusCode.DEADLINE_EXCEEDED,
                                   f"{method} {url}: no complete reply within {budget:g} s",
                                   target=self.base_url)
            return remaining
        try:
            with self._session.request(
                    method, url, timeout=left(), stream=True,
                    data=None if body is None else json.dumps(body),
                    headers={"Content-Type": "application/json"} if body is not None
                    else None) as response:
                content = self._read_body(response, left)
        except (requests.Timeout, TimeoutError, urllib3_exceptions.ReadTimeoutError) as err:
            raise ServingError(grpc.StatusCode.DEADLINE_EXCEEDED, str(err),
                               target=self.base_url) from None
        except requests.ConnectionError as err:
            raise ServingError(grpc.StatusCode.UNAVAILABLE, str(err),
                               target=self.base_url) from None
        if response.status_code != 200:
            try:
                message = json.loads(content)["error"]
            except (ValueError, KeyError, TypeError):
                # TF Serving always answers {"error": ...}: whatever sent this is not it.
                text = " ".join(content[:200].decode("utf-8", "replace").split())
                message = f"not a TF Serving reply ({text or response.reason})"
            code = HTTP_TO_GRPC.get(response.status_code, grpc.StatusCode.UNKNOWN)
            raise ServingError(code, f"HTTP {response.status_code}: {message}",
                               target=self.base_url)
        return content

    @staticmethod
    def _read_body(response, left) -> bytes:
        """The body, read in whatever pieces arrive, each socket wait bounded by what is
        left of the call (requests' timeout would give every read the whole budget)."""
        raw, parts = response.raw, []
        sock = getattr(getattr(raw, "connection", None), "sock", None)
        while True:
            if sock is not None:
                sock.settimeout(left())
            part = raw.read1(_READ_CHUNK, decode_content=True)
            if not part:
                return b"".join(parts)
            parts.append(part)
            left()

    def _signature(self, name: str) -> dict:
        if self._signatures is None:
            self._signatures = self.get_model_metadata()["signature_def"]
        if name not in self._signatures:
            raise ServingError(grpc.StatusCode.FAILED_PRECONDITION,
                               f'Serving signature key "{name}" not found.', target=self.base_url)
        return self._signatures[name]

    # -- API
    def predict(self, inputs: Mapping[str, np.ndarray], signature_name: str = SERVING_DEFAULT,
                output_filter: Iterable[str] | None = None, timeout: float | None = None,
                *, _pin: int | None = None) -> tuple[dict[str, np.ndarray], int | None]:
        """One :predict call in the columnar ("inputs") format: (outputs, version)."""
        if _pin is None and self.version is None:
            # Which version answers: asked first, then pinned (the reply would not say).
            _pin = self.get_model_metadata(timeout)["version"]
        body = {"signature_name": signature_name,
                "inputs": {name: _to_json(np.asarray(value)) for name, value in inputs.items()}}
        raw = self._call("POST", self._url(":predict", _pin), body, timeout)
        answer = json.loads(raw)["outputs"]
        outputs_meta = self._signature(signature_name).get("outputs", {})
        if not isinstance(answer, dict):  # a single output is sent bare
            answer = {next(iter(outputs_meta)): answer}
        wanted = list(output_filter) if output_filter else list(answer)
        missing = [n for n in wanted if n not in answer]
        if missing:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"output tensor alias not found in signature: {missing[0]} "
                               f"Outputs expected to be in the set {{{','.join(sorted(answer))}}}.",
                               target=self.base_url)
        outputs = {name: _from_json(name, answer[name],
                                    outputs_meta.get(name, {}).get("dtype", "DT_FLOAT"))
                   for name in wanted}
        return outputs, self.version if _pin is None else _pin

    def _request_bytes(self, value: np.ndarray) -> list[int]:
        # base64 for encoded images, JSON text for numbers
        scale = 4 / 3 if value.dtype == object else _JSON_BYTES_PER_VALUE
        return [int(row_nbytes(row) * scale) for row in value]

    def get_model_metadata(self, timeout: float | None = None) -> dict:
        """{"name", "version", "signature_def": {name: {"inputs", "outputs", "method_name"}}}
        as TF Serving's JSON (dtype "DT_UINT8", tensor_shape {"dim": [{"size": "-1"}]})."""
        answer = json.loads(self._call("GET", self._url("/metadata"), None, timeout))
        signatures = answer["metadata"]["signature_def"]["signature_def"]
        self._signatures = signatures
        return {"name": answer["model_spec"]["name"],
                "version": int(answer["model_spec"]["version"]),
                "signature_def": signatures}

    def get_model_status(self, timeout: float | None = None) -> list[dict]:
        answer = json.loads(self._call("GET", self._url(), None, timeout))
        return [{"version": int(s["version"]), "state": s["state"],
                 "error_code": s.get("status", {}).get("error_code", "OK"),
                 "error_message": s.get("status", {}).get("error_message", "")}
                for s in answer["model_version_status"]]


def _to_json(array: np.ndarray):
    if array.dtype == object or array.dtype.kind == "S":
        return _map_nested(array.tolist(), lambda b: {"b64": base64.b64encode(b).decode()})
    return array.tolist()


def _from_json(name: str, value, dtype: str) -> np.ndarray:
    if dtype == "DT_STRING":
        def to_bytes(v):
            if isinstance(v, dict):
                return base64.b64decode(v["b64"])
            return v.encode("utf-8")
        out = _map_nested(value, to_bytes)
        array = np.empty(len(out), dtype=object) if isinstance(out, list) else None
        if array is not None and all(isinstance(x, bytes) for x in out):
            array[:] = out
            return array
        return np.array(out, dtype=object)
    return np.array(value, dtype=_NUMPY_DTYPES.get(dtype, np.float32))


def _map_nested(value, fn):
    if isinstance(value, list):
        return [_map_nested(v, fn) for v in value]
    return fn(value)
