"""PredictionService (Predict, GetModelMetadata) and ModelService (GetModelStatus,
HandleReloadConfigRequest), answering as TF Serving's do:
model_servers/prediction_service_impl.cc, get_model_metadata_impl.cc,
get_model_status_impl.cc, model_service_impl.cc."""
from __future__ import annotations

import grpc
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2,
                                     model_management_pb2, model_service_pb2_grpc,
                                     predict_pb2, prediction_service_pb2_grpc)

from contract.names import SERVING_DEFAULT
from export.wire import as_proto_field
from tfserving_dev.config import from_proto
from tfserving_dev.errors import Code, RequestError
from tfserving_dev.manager import ModelManager, VersionState
from tfserving_dev.servable import Servable


def metadata_response(servable: Servable) -> get_model_metadata_pb2.GetModelMetadataResponse:
    response = get_model_metadata_pb2.GetModelMetadataResponse()
    response.model_spec.name = servable.name
    response.model_spec.version.value = servable.version
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    for key, signature in servable.signature_defs.items():
        signature_map.signature_def[key].CopyFrom(signature)
    response.metadata["signature_def"].Pack(signature_map)
    return response


def check_metadata_request(request) -> None:
    """get_model_metadata_impl.cc ValidateGetModelMetadataRequest."""
    if not request.HasField("model_spec"):
        raise RequestError(Code.INVALID_ARGUMENT, "Missing ModelSpec")
    if not request.metadata_field:
        raise RequestError(Code.INVALID_ARGUMENT,
                           "GetModelMetadataRequest must specify at least one metadata_field")
    for field in request.metadata_field:
        if field != "signature_def":
            raise RequestError(Code.INVALID_ARGUMENT, f"Metadata field {field} is not supported")


def predict(manager: ModelManager, request) -> predict_pb2.PredictResponse:
    servable = manager.resolve(request.model_spec)
    outputs = servable.predict(request.model_spec.signature_name, dict(request.inputs),
                               list(request.output_filter))
    response = predict_pb2.PredictResponse()
    response.model_spec.name = servable.name
    response.model_spec.version.value = servable.version
    response.model_spec.signature_name = request.model_spec.signature_name or SERVING_DEFAULT
    for alias, value in outputs.items():
        response.outputs[alias].CopyFrom(as_proto_field(value))
    return response


def status_response(states: dict[int, VersionState]):
    """Every entry has `status` set: OK, or the load error (ToStatusProto)."""
    response = get_model_status_pb2.GetModelStatusResponse()
    for version, state in states.items():
        entry = response.model_version_status.add(version=version, state=state.state)
        entry.status.SetInParent()
        if state.error:
            entry.status.error_code = Code.UNKNOWN.value[0]
            entry.status.error_message = state.error
    return response


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, manager: ModelManager):
        self.manager = manager

    def Predict(self, request, context):
        try:
            return predict(self.manager, request)
        except RequestError as err:
            context.abort(err.code, err.message)

    def GetModelMetadata(self, request, context):
        try:
            check_metadata_request(request)
            return metadata_response(self.manager.resolve(request.model_spec))
        except RequestError as err:
            context.abort(err.code, err.message)


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, manager: ModelManager):
        self.manager = manager

    def GetModelStatus(self, request, context):
        try:
            if not request.HasField("model_spec"):
                raise RequestError(Code.INVALID_ARGUMENT, "Missing ModelSpec")
            return status_response(self.manager.version_states(request.model_spec))
        except RequestError as err:
            context.abort(err.code, err.message)

    def HandleReloadConfigRequest(self, request, context):
        """The status travels in the response, the call itself succeeds
        (model_service_impl.cc)."""
        response = model_management_pb2.ReloadConfigResponse()
        try:
            self.manager.reload_config(from_proto(request.config, "ReloadConfigRequest"))
        except RequestError as err:
            response.status.error_code = err.code.value[0]
            response.status.error_message = err.message
        return response


class RequireMetadata(grpc.ServerInterceptor):
    """Rejects calls without the given headers, like an auth proxy in front of TF Serving
    (for the clients' credential tests; TF Serving itself has no such check)."""

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
