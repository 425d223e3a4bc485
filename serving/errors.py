"""The one exception type both clients raise, carrying a gRPC status code."""
from __future__ import annotations

import grpc

# Worth sending again later, by a caller with its own retries (Beam's RemoteModelHandler):
# the server was away or slow. The gRPC client itself retries only UNAVAILABLE, through its
# service config (serving/channel.py). RESOURCE_EXHAUSTED is not here: a reply over a
# message limit is as large the next time. INVALID_ARGUMENT, NOT_FOUND and the rest will
# not change by asking again.
RETRYABLE_CODES = frozenset({
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
})

# HTTP status -> gRPC code: the inverse of TF Serving's ToHTTPStatusCode
# (model_servers/http_server.cc), where it is one to one; the server side of that map is
# tfserving_dev.errors.GRPC_TO_HTTP.
HTTP_TO_GRPC = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.ABORTED,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    499: grpc.StatusCode.CANCELLED,
    500: grpc.StatusCode.INTERNAL,
    501: grpc.StatusCode.UNIMPLEMENTED,
    502: grpc.StatusCode.UNAVAILABLE,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}


class ServingError(Exception):
    """A request the server refused or could not answer.

    `code` is a `grpc.StatusCode` (REST errors are mapped to the same codes), `message` the
    server's text, `attempts` how many times the request was sent. `request_limit`: when the
    request itself was over the receiving end's message limit, that limit in bytes.
    """

    def __init__(self, code: grpc.StatusCode, message: str, attempts: int = 1,
                 target: str = "", request_limit: int | None = None):
        self.code = code
        self.request_limit = request_limit
        self.message = message
        self.attempts = attempts
        self.target = target
        where = f" from {target}" if target else ""
        tries = f" after {attempts} attempts" if attempts > 1 else ""
        super().__init__(f"{code.name}{where}{tries}: {message}")

    @property
    def retryable(self) -> bool:
        return self.code in RETRYABLE_CODES
