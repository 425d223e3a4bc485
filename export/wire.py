"""TF Serving PredictRequest/PredictResponse protos, for warmup records and size checks."""
from __future__ import annotations

from typing import Iterable, Mapping

import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2

# gRPC's default limit on a received message, on both the client and the server.
GRPC_DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024


def predict_request(model_name: str, signature_name: str,
                    inputs: Mapping[str, np.ndarray],
                    output_filter: Iterable[str] = ()) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature_name
    for key, value in inputs.items():
        request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
    request.output_filter.extend(output_filter)
    return request


def predict_response(model_name: str, signature_name: str, outputs: Mapping[str, np.ndarray],
                     version: int | None = None) -> predict_pb2.PredictResponse:
    """The response TF Serving would send for these (already filtered) outputs."""
    response = predict_pb2.PredictResponse()
    response.model_spec.name = model_name
    response.model_spec.signature_name = signature_name
    if version is not None:
        response.model_spec.version.value = version
    for key, value in outputs.items():
        response.outputs[key].CopyFrom(tf.make_tensor_proto(np.asarray(value)))
    return response
