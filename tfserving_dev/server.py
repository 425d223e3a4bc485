"""Start the development server in this process: the version manager, the gRPC services
and, with a REST port, the REST API. Bound to 127.0.0.1 unless told otherwise (TF Serving
itself listens on 0.0.0.0: server.cc)."""
from __future__ import annotations

import dataclasses
import os
import pathlib
import threading
from concurrent import futures
from http.server import ThreadingHTTPServer

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format
from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

from tfserving_dev.config import ModelConfig, read_model_config_file, single_model
from tfserving_dev.grpc_service import ModelService, PredictionService, RequireMetadata
from tfserving_dev.manager import ModelManager
from tfserving_dev.rest_service import RestHandler

DEFAULT_HOST = "127.0.0.1"
# server.cc: builder.SetMaxMessageSize(INT32_MAX), so big batches get through.
MAX_MESSAGE_BYTES = 2**31 - 1


def _ssl_config_class():
    """tensorflow_serving/config/ssl_config.proto's SSLConfig (the pip package does not ship
    it): server_key, server_cert, custom_ca (PEM text), client_verify."""
    proto = descriptor_pb2.FileDescriptorProto(name="tfserving_dev/ssl_config.proto",
                                               package="tensorflow.serving", syntax="proto3")
    message = proto.message_type.add(name="SSLConfig")
    for number, (name, kind) in enumerate((("server_key", 9), ("server_cert", 9),
                                           ("custom_ca", 9), ("client_verify", 8)), 1):
        message.field.add(name=name, number=number, type=kind, label=1)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(
        pool.FindMessageTypeByName("tensorflow.serving.SSLConfig"))


def server_credentials(ssl_config_file) -> grpc.ServerCredentials:
    """server.cc BuildServerCredentials from a text SSLConfig file."""
    path = pathlib.Path(ssl_config_file)
    try:
        config = text_format.Parse(path.read_text(), _ssl_config_class()())
    except (OSError, text_format.ParseError) as err:
        raise ValueError(f"{path}: cannot read the SSL config: {err}") from err
    return grpc.ssl_server_credentials(
        [(config.server_key.encode(), config.server_cert.encode())],
        root_certificates=config.custom_ca.encode() or None,
        require_client_auth=config.client_verify)


@dataclasses.dataclass
class DevServer:
    """A running development server: `.address` (host:port for gRPC), `.rest_address`,
    `.manager`, `.stop()`."""

    address: str
    rest_address: str | None
    manager: ModelManager
    _grpc_server: grpc.Server
    _http_server: ThreadingHTTPServer | None

    def stop(self, grace: float | None = 0.5) -> None:
        if self._http_server:
            self._http_server.shutdown()
            self._http_server.server_close()
        self._grpc_server.stop(grace).wait()
        self.manager.stop()

    def wait(self) -> None:
        self._grpc_server.wait_for_termination()


def start_dev_server(model_base_path=None, model_name: str = "default", port: int = 0, *,
                     model_config_file=None, models: list[ModelConfig] | None = None,
                     rest_api_port: int | None = None, host: str = DEFAULT_HOST,
                     poll_interval: float = 1.0, config_poll_interval: float = 0.0,
                     max_load_retries: int = 5, load_retry_interval: float = 60.0,
                     allow_version_labels_for_unavailable_models: bool = False,
                     ssl_config_file=None, required_metadata: dict[str, str] | None = None,
                     max_workers: int = 8) -> DevServer:
    """Load the models and start serving; returns once the first config is applied (as
    ServerCore::Create waits for it), or raises why not.

    Give `model_base_path` (+ `model_name`: the newest version), `model_config_file`, or
    `models`. port=0 picks a free port; rest_api_port=0 likewise, None = no REST.
    """
    if models is None:
        if model_config_file:
            models = read_model_config_file(model_config_file)
        elif model_base_path:
            models = single_model(model_name, os.fspath(model_base_path))
        else:
            raise ValueError("Both server_options.model_base_path and "
                             "server_options.model_config_file are empty!")
    manager = ModelManager(models, poll_interval=poll_interval,
                           max_load_retries=max_load_retries,
                           load_retry_interval=load_retry_interval,
                           allow_labels_for_unavailable=allow_version_labels_for_unavailable_models,
                           config_file=os.fspath(model_config_file) if model_config_file else None,
                           config_poll_interval=config_poll_interval)
    manager.start()
    options = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
               ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
               # gRPC Python sets SO_REUSEPORT, which lets a second server bind the same port
               # and silently take half the connections: fail to start instead.
               ("grpc.so_reuseport", 0)]
    interceptors = [RequireMetadata(required_metadata)] if required_metadata else []
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers),
                         options=options, interceptors=interceptors)
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionService(manager), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(manager), server)
    try:
        if ssl_config_file:
            bound = server.add_secure_port(f"{host}:{port}", server_credentials(ssl_config_file))
        else:
            bound = server.add_insecure_port(f"{host}:{port}")
    except RuntimeError:
        bound = 0
    except ValueError:
        manager.stop()
        raise
    if not bound:
        manager.stop()
        raise OSError(f"cannot listen on {host}:{port} (is another server using the port?)")
    http_server = None
    if rest_api_port is not None:
        handler = type("BoundRestHandler", (RestHandler,), {"manager": manager})
        try:
            http_server = ThreadingHTTPServer((host, rest_api_port), handler)
        except OSError as err:
            manager.stop()
            raise OSError(f"cannot listen on {host}:{rest_api_port} for REST: {err}") from err
        http_server.daemon_threads = True
    server.start()
    rest_address = None
    if http_server is not None:
        threading.Thread(target=http_server.serve_forever, name="rest", daemon=True).start()
        rest_address = f"{host}:{http_server.server_address[1]}"
    return DevServer(f"{host}:{bound}", rest_address, manager, server, http_server)
