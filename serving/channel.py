"""The gRPC channel of the clients: retries, limits and credentials from gRPC itself.

gRPC does what serving/retry.py once hand-wrote, and does it better: a service config
(https://github.com/grpc/grpc/blob/master/doc/service_config.md) names the methods,
`retryPolicy` retries UNAVAILABLE with exponential backoff inside the call's deadline,
`retryThrottling` stops retries when most calls fail (a server that is down is not hammered
by every client at once), `waitForReady` lets a call wait for a (re)connecting channel until
its deadline instead of failing at once, and `maxResponseMessageBytes` bounds replies.

Not retried, on purpose: RESOURCE_EXHAUSTED (a reply over the limit is as large the next
time; TF Serving answers a full batching queue with UNAVAILABLE) and DEADLINE_EXCEEDED (the
deadline is the whole call's, retries included). The reconnect backoff is gRPC's own:
overriding `grpc.min_reconnect_backoff_ms` also shortens the connect timeout (20 s by
default) to that value, so a slow handshake never completes.
"""
from __future__ import annotations

import errno
import json
import socket
import ssl
from typing import Mapping

import grpc

from common.cli import UserError
from contract.names import GRPC_DEFAULT_MAX_MESSAGE_BYTES

SERVICES = ("tensorflow.serving.PredictionService", "tensorflow.serving.ModelService")
# gRPC caps retryPolicy.maxAttempts at 5 (service_config.md); more is silently 5.
GRPC_MAX_ATTEMPTS = 5


def service_config(max_attempts: int, initial_backoff: float, max_backoff: float,
                   max_request_bytes: int | None, max_response_bytes: int | None) -> dict:
    """The service config for TF Serving's two services (gRPC's JSON form)."""
    method = {"name": [{"service": s} for s in SERVICES], "waitForReady": True}
    if max_attempts > 1:
        method["retryPolicy"] = {
            "maxAttempts": min(int(max_attempts), GRPC_MAX_ATTEMPTS),
            "initialBackoff": f"{initial_backoff:.3f}s",
            "maxBackoff": f"{max_backoff:.3f}s",
            "backoffMultiplier": 2,
            "retryableStatusCodes": ["UNAVAILABLE"],
        }
    if max_request_bytes is not None:
        method["maxRequestMessageBytes"] = int(max_request_bytes)
    if max_response_bytes is not None:
        method["maxResponseMessageBytes"] = int(max_response_bytes)
    return {"methodConfig": [method],
            # Each failure costs a token, each success gives back 0.1; below half the tokens
            # no retries are made (gRPC's retry throttling).
            "retryThrottling": {"maxTokens": 10, "tokenRatio": 0.1}}


def system_root_certificates() -> bytes | None:
    """The system's CA bundle (what OpenSSL is configured with), or None for gRPC's own
    bundled roots when the system has none at a known path."""
    paths = ssl.get_default_verify_paths()
    for path in (paths.cafile, paths.openssl_cafile):
        if path:
            try:
                with open(path, "rb") as f:
                    return f.read()
            except OSError:
                continue
    return None


def has_credentials(headers: Mapping[str, str]) -> bool:
    return any(k.lower() in ("authorization", "x-api-key") for k in headers)


def refuse_plaintext_credentials(headers: Mapping[str, str], secure: bool, allowed: bool,
                                 target: str) -> None:
    """A token sent without TLS can be read by anyone on the path: refuse unless the caller
    says so explicitly (e.g. a sidecar on localhost that adds TLS)."""
    if has_credentials(headers) and not secure and not allowed:
        raise ValueError(f"{target}: refusing to send an authorization header over a "
                         f"plaintext connection; use TLS, or allow it explicitly "
                         f"(allow_plaintext_credentials=True / --allow-plaintext-auth)")


def make_channel(address: str, *, max_attempts: int = GRPC_MAX_ATTEMPTS,
                 initial_backoff: float = 0.1, max_backoff: float = 5.0,
                 max_response_bytes: int = GRPC_DEFAULT_MAX_MESSAGE_BYTES,
                 tls: bool = False, root_certificates: bytes | None = None,
                 private_key: bytes | None = None, certificate_chain: bytes | None = None,
                 server_name_override: str | None = None) -> grpc.Channel:
    """A channel to TF Serving. max_response_bytes: -1 = no limit. tls: verify the server
    against root_certificates, else the system's roots."""
    receive = None if max_response_bytes < 0 else max_response_bytes
    config = service_config(max_attempts, initial_backoff, max_backoff, None, receive)
    options = [
        ("grpc.enable_retries", 1),
        ("grpc.service_config", json.dumps(config)),
        # Requests are chunked under max_request_bytes, but one image may be larger alone;
        # TF Serving accepts up to INT32_MAX (server.cc SetMaxMessageSize).
        ("grpc.max_send_message_length", -1),
        ("grpc.max_receive_message_length", -1 if receive is None else receive),
    ]
    if server_name_override:
        options.append(("grpc.ssl_target_name_override", server_name_override))
    if tls or root_certificates is not None or certificate_chain is not None:
        roots = root_certificates if root_certificates is not None \
            else system_root_certificates()
        credentials = grpc.ssl_channel_credentials(roots, private_key, certificate_chain)
        return grpc.secure_channel(address, credentials, options=options)
    return grpc.insecure_channel(address, options=options)


# What an HTTP/2 client sends first (RFC 9113 3.4); a gRPC server answers with a SETTINGS
# frame (frame type 4 in the 4th byte), an HTTP/1 server with an error page or status line.
_HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_SETTINGS_FRAME = 4


def split_address(address: str) -> tuple[str, int] | None:
    """(host, port) of "host:port", "[v6]:port" or "http://host:port/..."; None for what is
    not one (a unix: socket, a DNS scheme), which is then left to gRPC."""
    rest = address.split("://", 1)[-1].split("/", 1)[0]
    host, sep, port = rest.rpartition(":")
    if not sep or not port.isdigit() or address.startswith(("unix:", "dns:", "ipv4:", "ipv6:")):
        return None
    return host.strip("[]") or "localhost", int(port)


def check_server(address: str, protocol: str, timeout: float = 5.0) -> None:
    """Raise UserError when nothing listens at `address`, or when what answers there speaks
    the other protocol: a gRPC client waits for ready (service config above) and would only
    say DEADLINE_EXCEEDED at the end of its deadline. protocol: 'grpc', 'rest', or 'tls'
    (encrypted: only the connection is checked)."""
    where = split_address(address)
    if where is None:
        return
    try:
        sock = socket.create_connection(where, timeout=timeout)
    except socket.gaierror:
        raise UserError(address, f"cannot connect: unknown host {where[0]}") from None
    except socket.timeout:
        raise UserError(address, f"cannot connect: no answer within {timeout:g} s") from None
    except OSError as err:
        why = "connection refused" if err.errno == errno.ECONNREFUSED else \
            (err.strerror or str(err)).lower()
        raise UserError(address, f"cannot connect: {why}") from None
    with sock:
        if protocol == "tls":
            return
        try:
            sock.sendall(_HTTP2_PREFACE)
            first = sock.recv(16)
        except OSError:
            return  # said nothing useful: let the call itself report
    http2 = len(first) >= 4 and first[3] == _SETTINGS_FRAME
    if first and not http2 and protocol == "grpc":
        raise UserError(address, "not a gRPC server: it does not answer HTTP/2 (TF Serving's "
                                 "REST port? add --rest)")
    if http2 and protocol == "rest":
        raise UserError(address, "a gRPC (HTTP/2) server answered, not REST (TF Serving's "
                                 "gRPC port? drop --rest)")
