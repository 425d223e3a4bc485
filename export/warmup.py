"""assets.extra/tf_serving_warmup_requests: requests TF Serving replays when it loads a
version, so that graph set-up and kernel selection happen before the first real request."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

from contract import names
from contract.names import SEGMENT_ENCODED, SEGMENT_PROBABILITIES, SERVING_DEFAULT
from export.wire import predict_request


def warmup_image(size) -> np.ndarray:
    """A deterministic, road-scene-like uint8 RGB image (sky over a darker ground)."""
    h, w = (int(s) for s in size)
    rows = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None, None]
    sky = np.array([150, 180, 220], np.float32)
    ground = np.array([90, 90, 90], np.float32)
    image = np.where(rows < 0.45, sky, ground) + np.random.default_rng(0).normal(0, 4, (h, w, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def warmup_requests(model_name: str, size) -> list:
    """One request per way clients call the model, with one image of `size` (H, W)."""
    image = warmup_image(size)
    png = tf.io.encode_png(image).numpy()
    return [
        predict_request(model_name, SERVING_DEFAULT, {names.IMAGES: image[None]}),
        predict_request(model_name, SEGMENT_PROBABILITIES, {names.IMAGES: image[None]}),
        predict_request(model_name, SEGMENT_ENCODED,
                        {names.IMAGE_BYTES: np.array([png], dtype=object)}),
    ]


def write_warmup_file(path, model_name: str, size) -> int:
    """Write the TFRecord of PredictionLog records; returns how many were written."""
    requests = warmup_requests(model_name, size)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for request in requests:
            log = prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())
    return len(requests)


def read_warmup_file(path) -> list:
    """The PredictionLog records of a warmup file (for checks and tests)."""
    logs = []
    for record in tf.data.TFRecordDataset(str(path)):
        log = prediction_log_pb2.PredictionLog()
        log.ParseFromString(record.numpy())
        logs.append(log)
    return logs
