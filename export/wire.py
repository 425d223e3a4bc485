"""TF Serving PredictRequest/PredictResponse protos, for warmup records and size checks."""
from __future__ import annotations

from typing import Iterable, Mapping

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2
from tensorflow_serving.apis import predict_pb2



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


def as_proto_field(array: np.ndarray):
    """A TensorProto the way TF Serving fills a PredictResponse by default: values in the
    typed repeated fields (Tensor::AsProtoField, servables/tensorflow/predict_util.cc
    kAsProtoField), not tensor_content. uint8 values go into int_val as varints, so a
    confidence map of 0..255 takes up to 2 bytes a pixel on the wire, not 1."""
    array = np.asarray(array)
    proto = tensor_pb2.TensorProto(dtype=tf.as_dtype(array.dtype).as_datatype_enum)
    for size in array.shape:
        proto.tensor_shape.dim.add(size=size)
    flat = array.ravel()
    if array.dtype == np.float32:
        proto.float_val.extend(flat.tolist())
    elif array.dtype == np.float64:
        proto.double_val.extend(flat.tolist())
    elif array.dtype in (np.uint8, np.int8, np.int16, np.uint16, np.int32):
        proto.int_val.extend(flat.tolist())
    elif array.dtype == np.int64:
        proto.int64_val.extend(flat.tolist())
    elif array.dtype == np.bool_:
        proto.bool_val.extend(flat.tolist())
    elif array.dtype == object or array.dtype.kind == "S":
        proto.string_val.extend(flat.tolist())
    else:  # rarer types: the compact form, which every client decodes too
        return tf.make_tensor_proto(array)
    return proto


def predict_response(model_name: str, signature_name: str, outputs: Mapping[str, np.ndarray],
                     version: int | None = None) -> predict_pb2.PredictResponse:
    """The response TF Serving would send for these (already filtered) outputs, encoded as
    it encodes them by default (`as_proto_field`)."""
    response = predict_pb2.PredictResponse()
    response.model_spec.name = model_name
    response.model_spec.signature_name = signature_name
    if version is not None:
        response.model_spec.version.value = version
    for key, value in outputs.items():
        response.outputs[key].CopyFrom(as_proto_field(value))
    return response
