"""One loaded version, run the way TF Serving runs it.

Loading (servables/tensorflow/saved_model_bundle_factory, saved_model_warmup.cc): the 'serve'
MetaGraph into a TF1 Session (restore op, then the init op); then the warm-up records in
assets.extra are replayed and a failing one fails the load.

Predict follows servables/tensorflow/predict_util.cc RunPredict, in its order:
  1. the signature (FailedPrecondition `Serving signature key "X" not found.`);
  2. VerifyRequestInputsSize: only more inputs than the signature has, or fewer without
     defaults, fail here ("input size does not match signature: ...");
  3. saved_model::GetInputValues (tensorflow/cc/saved_model/util.cc): a signature input
     missing from the request ("Signature input alias: ... not found in request ..."), an
     unparsable TensorProto ("tensor parsing error: ALIAS");
  4. output_filter aliases ("output tensor alias not found in signature: ...", "duplicate
     output tensor alias: ...");
  5. Session::Run: no shape pre-check; a wrong dtype or rank is the graph's own error.
Replies are encoded with Tensor::AsProtoField (export.wire.as_proto_field).
"""
from __future__ import annotations

import pathlib

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2
from tensorflow_serving.apis import prediction_log_pb2

from contract.layout import WARMUP_PATH
from contract.names import SERVING_DEFAULT
from tfserving_dev.errors import Code, RequestError, grpc_code


class Servable:
    def __init__(self, name: str, version: int, path: pathlib.Path):
        self.name, self.version, self.path = name, version, pathlib.Path(path)
        graph = tf.Graph()
        self._session = tf.compat.v1.Session(graph=graph)
        with graph.as_default():
            meta_graph = tf.compat.v1.saved_model.loader.load(self._session, ["serve"],
                                                              str(self.path))
        self.signature_defs = dict(meta_graph.signature_def)
        self.warmup_count = self._replay_warmup()

    def close(self) -> None:
        self._session.close()

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

    def _run(self, feeds: list[tuple[str, np.ndarray]], fetches: list[str]) -> list:
        """Session::Run through TF's C API, as RunPredict calls it: the tensors go to the C++
        session as they are. Session.run would check shapes and cast dtypes in Python
        first, which TF Serving does not do (a float fed to a uint8 input is the session's
        "Expects arg[0] to be uint8 but float is provided")."""
        graph = self._session.graph
        feed = {graph.get_tensor_by_name(name)._as_tf_output(): value for name, value in feeds}
        fetch = [graph.get_tensor_by_name(name)._as_tf_output() for name in fetches]
        return self._session._call_tf_sessionrun(None, feed, fetch, [], None)

    def predict(self, signature_name: str, inputs: dict[str, tensor_pb2.TensorProto],
                output_filter: list[str]) -> dict[str, np.ndarray]:
        signature_name = signature_name or SERVING_DEFAULT
        signature = self.signature_defs.get(signature_name)
        if signature is None:
            raise RequestError(Code.FAILED_PRECONDITION,
                               f'Serving signature key "{signature_name}" not found.')
        _verify_inputs_size(signature, inputs)
        feeds = _input_values(signature, inputs)
        seen = set()
        for alias in output_filter:
            if alias not in signature.outputs:
                raise RequestError(
                    Code.INVALID_ARGUMENT,
                    f"output tensor alias not found in signature: {alias} Outputs expected to "
                    f"be in the set {{{','.join(sorted(signature.outputs))}}}.")
            if alias in seen:
                raise RequestError(Code.INVALID_ARGUMENT,
                                   f"duplicate output tensor alias: {alias}")
            seen.add(alias)
        aliases = list(output_filter) or sorted(signature.outputs)
        try:
            values = self._run(feeds, [signature.outputs[a].name for a in aliases])
        except tf.errors.OpError as err:
            raise RequestError(grpc_code(err.error_code), _op_error_message(err)) from err
        except (TypeError, ValueError) as err:  # numpy could not hand the value over
            raise RequestError(Code.INVALID_ARGUMENT, str(err)) from err
        return {alias: np.asarray(value) for alias, value in zip(aliases, values)}


def _verify_inputs_size(signature, inputs) -> None:
    """predict_util.cc VerifyRequestInputsSize."""
    sent, expected = set(inputs), set(signature.inputs)
    if len(sent) > len(expected) or (len(sent) < len(expected) and not signature.defaults):
        raise RequestError(
            Code.INVALID_ARGUMENT,
            f"input size does not match signature: {len(sent)}!={len(expected)} "
            f"len({{{','.join(sorted(sent))}}}) != len({{{','.join(sorted(expected))}}}). "
            f"Sent extra: {{{','.join(sorted(sent - expected))}}}. "
            f"Missing but required: {{{','.join(sorted(expected - sent))}}}.")


def _input_values(signature, inputs) -> list[tuple[str, np.ndarray]]:
    """tensorflow/cc/saved_model/util.cc GetInputValues (no defaults in our exports)."""
    feeds, seen = [], set()
    for alias in sorted(signature.inputs):
        info = signature.inputs[alias]
        if alias not in inputs:
            raise RequestError(
                Code.INVALID_ARGUMENT,
                f"Signature input alias: {alias}(feed name: {info.name}) not found in request "
                f"and no default value provided. Inputs expected to be in the request "
                f"{{{','.join(sorted(inputs))}}}, or default input alias set: ")
        try:
            value = tf.make_ndarray(inputs[alias])
        except Exception as err:  # content size vs shape, unknown dtype
            raise RequestError(Code.INVALID_ARGUMENT,
                               f"tensor parsing error: {alias}") from err
        seen.add(alias)
        feeds.append((info.name, value))
    if inputs and len(seen) != len(inputs):
        raise RequestError(
            Code.INVALID_ARGUMENT,
            f"Inputs contains invalid name. Used request inputs: {','.join(sorted(seen))}, "
            f"request input: {','.join(sorted(inputs))}")
    return feeds


def _op_error_message(err: tf.errors.OpError) -> str:
    """The kernel's own message and node, as TF Serving's session reports it, without the
    Python wrapper's 'Graph execution error' / 'Detected at node' preamble."""
    lines = [line for line in err.message.splitlines() if line.strip()
             and not line.startswith(("Graph execution error", "Detected at node", "<stack"))]
    return "\n".join(lines) or err.message
