"""gRPC client for a segmentation model on TensorFlow Serving.

    with PredictionClient("127.0.0.1:8500", "fcn8s") as client:
        result = client.segment_images(images)          # uint8 [N,H,W,3]
        result["class_ids"], result["model_version"]
        result = client.segment_encoded([png_bytes, jpeg_bytes])

Retries, waiting for a restarting server and message limits are gRPC's own, set through a
service config (serving/channel.py): UNAVAILABLE is retried with backoff inside the call's
deadline; everything else raises ServingError at once. A reply over `max_response_bytes`
fails at once with a message naming the limit. Large batches are sent as several requests
of at most `max_request_bytes` each, all answered by one version.
"""
from __future__ import annotations

import re
from typing import Iterable, Mapping

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import json_format
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2,
                                     model_service_pb2_grpc, predict_pb2,
                                     prediction_service_pb2_grpc)

from contract.names import GRPC_DEFAULT_MAX_MESSAGE_BYTES
from serving.base_client import DEFAULT_MAX_REQUEST_BYTES, SERVING_DEFAULT, SegmentationClient
from serving.channel import make_channel, refuse_plaintext_credentials
from serving.errors import ServingError

# gRPC's text for a message over the receive limit (src/core/.../message_size_filter).
_TOO_LARGE = re.compile(r"larger than max \((\d+) vs\. (\d+)\)")


class PredictionClient(SegmentationClient):
    """Predict, GetModelMetadata and GetModelStatus against one model.

    address: "host:port" of TF Serving's gRPC port. version / version_label: pin a version
    (default: the newest the server has). timeout: deadline in seconds for one method call,
    retries and waiting for the server included. max_retries: retries of UNAVAILABLE
    (gRPC allows at most 4, i.e. 5 attempts); initial/max_backoff: their spacing.
    max_request_bytes: batches are split so each request stays under it.
    max_response_bytes: the largest reply accepted (gRPC's 4 MiB default; -1 = no limit).
    tls=True verifies the server against the system's root certificates; root_certificates
    (PEM bytes) against those instead; private_key + certificate_chain add a client
    certificate; server_name_override checks the server certificate against that name.
    metadata: extra headers on every call, e.g. {"authorization": "Bearer ..."}; credentials
    are refused over plaintext unless allow_plaintext_credentials=True.
    """

    def __init__(self, address: str, model_name: str, version: int | None = None,
                 version_label: str | None = None, timeout: float = 30.0,
                 max_retries: int = 4, initial_backoff: float = 0.1, max_backoff: float = 5.0,
                 max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
                 max_response_bytes: int = GRPC_DEFAULT_MAX_MESSAGE_BYTES,
                 tls: bool = False, root_certificates: bytes | None = None,
                 private_key: bytes | None = None, certificate_chain: bytes | None = None,
                 server_name_override: str | None = None,
                 metadata: Mapping[str, str] | None = None,
                 allow_plaintext_credentials: bool = False):
        super().__init__(model_name, version, version_label, timeout, max_request_bytes)
        self.address = address
        self.max_response_bytes = max_response_bytes
        self.metadata = tuple((k.lower(), v) for k, v in (metadata or {}).items())
        secure = tls or root_certificates is not None or certificate_chain is not None
        refuse_plaintext_credentials(dict(self.metadata), secure, allow_plaintext_credentials,
                                     address)
        self._channel = make_channel(
            address, max_attempts=max(1, max_retries + 1), initial_backoff=initial_backoff,
            max_backoff=max_backoff, max_response_bytes=max_response_bytes, tls=tls,
            root_certificates=root_certificates, private_key=private_key,
            certificate_chain=certificate_chain, server_name_override=server_name_override)
        self._predict_stub = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
        self._model_stub = model_service_pb2_grpc.ModelServiceStub(self._channel)

    # -- plumbing
    def close(self) -> None:
        self._channel.close()

    def _model_spec(self, spec, signature_name: str | None = None,
                    pin: int | None = None) -> None:
        spec.name = self.model_name
        if pin is not None:
            spec.version.value = pin
        elif self.version is not None:
            spec.version.value = self.version
        elif self.version_label is not None:
            spec.version_label = self.version_label
        if signature_name is not None:
            spec.signature_name = signature_name

    def _call(self, method, request, timeout: float | None):
        try:
            return method(request, timeout=self.timeout if timeout is None else timeout,
                          metadata=self.metadata)
        except grpc.RpcError as err:
            raise self._error(err, request.ByteSize()) from None

    def _error(self, err: grpc.RpcError, request_bytes: int = -1) -> ServingError:
        code, details = err.code(), err.details() or ""
        trailing = dict(err.trailing_metadata() or ()) if hasattr(err, "trailing_metadata") \
            else {}
        # gRPC reports the attempts made before this one when it retried.
        attempts = 1 + int(trailing.get("grpc-previous-rpc-attempts", 0) or 0)
        too_large = _TOO_LARGE.search(details)
        request_limit = None
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED and too_large:
            size, limit = (int(g) for g in too_large.groups())
            if size == request_bytes:  # the server, or a proxy before it, refused what we sent
                request_limit = limit
                details = (f"the request is {size:,} bytes, over the server's limit of "
                           f"{limit:,} bytes (TF Serving's own is 2 GiB: a proxy in between, "
                           f"or a server built with gRPC's default). Send fewer images per "
                           f"request (max_request_bytes, --max-batch-bytes). [{details}]")
            else:
                details = (f"the reply is {size:,} bytes, over this client's limit of "
                           f"{limit:,} bytes (max_response_bytes). Raise it "
                           f"(PredictionClient(..., max_response_bytes=N or -1), "
                           f"--max-response-bytes N), ask for fewer outputs, or send fewer "
                           f"images per request. [{details}]")
        return ServingError(code, details, attempts=attempts, target=self.address,
                            request_limit=request_limit)

    # -- API
    def predict(self, inputs: Mapping[str, np.ndarray], signature_name: str = SERVING_DEFAULT,
                output_filter: Iterable[str] | None = None, timeout: float | None = None,
                *, _pin: int | None = None) -> tuple[dict[str, np.ndarray], int]:
        """One Predict request as given (no chunking): (outputs, model version that answered)."""
        request = predict_pb2.PredictRequest()
        self._model_spec(request.model_spec, signature_name, _pin)
        for name, value in inputs.items():
            request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
        request.output_filter.extend(output_filter or ())
        response = self._call(self._predict_stub.Predict, request, timeout)
        outputs = {name: tf.make_ndarray(proto) for name, proto in response.outputs.items()}
        return outputs, response.model_spec.version.value

    def get_model_metadata(self, timeout: float | None = None) -> dict:
        """{"name", "version", "signature_def": {name: {"inputs", "outputs", "method_name"}}},
        signatures in TF Serving's JSON form (as the REST API sends them): each tensor is
        {"name", "dtype": "DT_UINT8", "tensor_shape": {"dim": [{"size": "-1"}, ...]}}."""
        request = get_model_metadata_pb2.GetModelMetadataRequest()
        self._model_spec(request.model_spec)
        request.metadata_field.append("signature_def")
        response = self._call(self._predict_stub.GetModelMetadata, request, timeout)
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signature_map)
        signatures = json_format.MessageToDict(signature_map, preserving_proto_field_name=True)
        return {"name": response.model_spec.name, "version": response.model_spec.version.value,
                "signature_def": signatures.get("signature_def", {})}

    def get_model_status(self, timeout: float | None = None) -> list[dict]:
        """[{"version": int, "state": "AVAILABLE"|..., "error_code": int, "error_message": str}]"""
        request = get_model_status_pb2.GetModelStatusRequest()
        self._model_spec(request.model_spec)
        response = self._call(self._model_stub.GetModelStatus, request, timeout)
        state_name = get_model_status_pb2.ModelVersionStatus.State.Name
        return [{"version": s.version, "state": state_name(s.state),
                 "error_code": s.status.error_code, "error_message": s.status.error_message}
                for s in response.model_version_status]
