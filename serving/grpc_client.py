"""gRPC client for a segmentation model on TensorFlow Serving.

    with PredictionClient("127.0.0.1:8500", "fcn8s") as client:
        result = client.segment_images(images)          # uint8 [N,H,W,3]
        result["class_ids"], result["model_version"]
        result = client.segment_encoded([png_bytes, jpeg_bytes])

Transient failures (UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED) are retried with
exponential backoff and jitter within the call's overall deadline; everything else raises
ServingError at once. Large batches are sent as several requests of at most
`max_request_bytes` each.
"""
from __future__ import annotations

from typing import Iterable, Mapping

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import json_format
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2,
                                     model_service_pb2_grpc, predict_pb2,
                                     prediction_service_pb2_grpc)

from serving.base_client import DEFAULT_MAX_REQUEST_BYTES, SERVING_DEFAULT, SegmentationClient
from serving.errors import ServingError
from serving.retry import call_with_retries



class PredictionClient(SegmentationClient):
    """Predict, GetModelMetadata and GetModelStatus against one model.

    address: "host:port" of TF Serving's gRPC port. version / version_label: pin a version
    (default: the newest the server has). timeout: overall deadline in seconds for one method
    call, retries included. max_retries and the backoff settings bound the retries.
    max_request_bytes: batches are split so each request stays under it.
    root_certificates (PEM bytes) turns on TLS; private_key + certificate_chain add a client
    certificate; server_name_override checks the server certificate against that name.
    metadata: extra headers on every call, e.g. {"authorization": "Bearer ..."}.
    """

    def __init__(self, address: str, model_name: str, version: int | None = None,
                 version_label: str | None = None, timeout: float = 30.0,
                 max_retries: int = 5, initial_backoff: float = 0.1, max_backoff: float = 5.0,
                 max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
                 max_response_bytes: int = -1,
                 root_certificates: bytes | None = None, private_key: bytes | None = None,
                 certificate_chain: bytes | None = None, server_name_override: str | None = None,
                 metadata: Mapping[str, str] | None = None):
        super().__init__(model_name, version, version_label, timeout, max_retries,
                         initial_backoff, max_backoff, max_request_bytes)
        self.address = address
        self.metadata = tuple((k.lower(), v) for k, v in (metadata or {}).items())
        options = [
            # Requests are kept under max_request_bytes by chunking, but one image can be
            # bigger than that on its own; responses with probabilities are ~10x the request.
            ("grpc.max_send_message_length", -1),
            ("grpc.max_receive_message_length", max_response_bytes),
            # Reconnect quickly after a server restart (gRPC's default backoff grows to 120 s).
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", int(max_backoff * 1000)),
        ]
        if server_name_override:
            options.append(("grpc.ssl_target_name_override", server_name_override))
        if root_certificates is not None or certificate_chain is not None:
            credentials = grpc.ssl_channel_credentials(root_certificates, private_key,
                                                       certificate_chain)
            self._channel = grpc.secure_channel(address, credentials, options=options)
        else:
            self._channel = grpc.insecure_channel(address, options=options)
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
        def attempt(remaining: float):
            try:
                return method(request, timeout=remaining, metadata=self.metadata)
            except grpc.RpcError as err:
                raise ServingError(err.code(), err.details() or "", target=self.address) from None
        return call_with_retries(attempt, self.retry_policy,
                                 self.timeout if timeout is None else timeout)

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
