"""A request that fails with a status, as TF Serving answers it."""
from __future__ import annotations

import grpc

Code = grpc.StatusCode


class RequestError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def grpc_code(tf_code: int) -> grpc.StatusCode:
    """TensorFlow's error codes are numerically the gRPC codes."""
    for code in grpc.StatusCode:
        if code.value[0] == tf_code:
            return code
    return grpc.StatusCode.UNKNOWN
