"""A development stand-in for TensorFlow Serving, for tests and local work, never production.

It answers TF Serving's gRPC API (Predict, GetModelMetadata, GetModelStatus,
HandleReloadConfigRequest) and REST API the way TF Serving 2.x does, each behaviour taken
from tensorflow/serving's source (named in each module), so that tests written against it
hold against the real server (tests/test_serving_conformance.py runs on both).

    config.py        models.config and --model_base_path
    servable.py      one loaded version: TF1 session, warm-up replay, RunPredict's checks
    manager.py       the version manager: aspired versions, availability-preserving swaps,
                     load retries, labels, ReloadConfig
    grpc_service.py  PredictionService and ModelService
    rest_service.py  the REST API
    flags.py         tensorflow_model_server's flags and start-up rules
    server.py        start_dev_server(): everything above in this process
    __main__.py      python -m tfserving_dev --port=8500 --model_base_path=...

It is a top-level package on purpose: not under serving/ (the clients' import path) and not
in the packages pyproject.toml installs (the Beam worker image). No batching, no
monitoring, one Python process.
"""
