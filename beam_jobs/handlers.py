"""RunInference model handlers: the exported SavedModel in process, or TF Serving over gRPC.

Both take batches of `ImageItem` (encoded PNG/JPEG bytes, mixed sizes) and call the
SavedModel's `segment_encoded` signature once per batch. Each returns one PredictionResult
per item whose inference is a `Segmentation`, or an `InferenceFailure` for an image the model
refused: a graph fails a whole batch on one bad image (INVALID_ARGUMENT), so a failed batch is
retried image by image and only the bad image fails.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import os
import posixpath
import shutil
import tempfile
import threading
import time
import uuid
import weakref
from typing import Any, Callable, Optional, Sequence

import numpy as np
from apache_beam.io.filesystems import FileSystems
from apache_beam.ml.inference.base import ModelHandler, PredictionResult, RemoteModelHandler

from beam_jobs.sources import ImageItem
from contract import layout, names
from contract.layout import LABELS_PATH, METADATA_PATH, SAVED_MODEL_FILE

_LOGGER = logging.getLogger(__name__)
SIGNATURE = names.SEGMENT_ENCODED
# --batch-size auto: one model.batch_size.Probe per loaded model (SavedModelHandler._probe).
_PROBES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_PROBES_LOCK = threading.Lock()


@dataclasses.dataclass
class Segmentation:
    """One image's model output: class ids at the image's size and the PNGs to write."""
    class_ids: np.ndarray      # uint8 [H, W]
    mask_png: bytes            # PNG of class_ids
    confidence_png: bytes      # PNG 0..255 (road probability for a binary model)
    model_name: str
    model_version: Optional[int]
    latency_ms: float          # wall time of the call that produced it
    batch_size: int            # images in that call


@dataclasses.dataclass
class InferenceFailure:
    reason: str


# --- model directory --------------------------------------------------------------------

def resolve_model_dir(model_dir: str) -> str:
    """A version folder (models/fcn8s/3) as is; a model folder (models/fcn8s): its newest
    version by contract.layout's rule (TF Serving's), listed through Beam's FileSystems so
    that gs:// and s3:// folders work too."""
    if FileSystems.exists(FileSystems.join(model_dir, SAVED_MODEL_FILE)):
        return model_dir
    complete = {}
    listing = FileSystems.match([FileSystems.join(model_dir, "*", SAVED_MODEL_FILE)])[0]
    for m in listing.metadata_list:
        folder = posixpath.dirname(m.path)
        complete[posixpath.basename(folder)] = folder
    found = layout.versions_from_listing({name: True for name in complete})
    if not found:
        raise FileNotFoundError(f"{model_dir}: no SavedModel here (expected saved_model.pb, or "
                                f"numbered version folders as written by `python -m export`)")
    newest = max(found)
    return next(folder for name, folder in complete.items()
                if layout.version_number(name) == newest)


def read_model_metadata(model_dir: str) -> dict:
    """What the exporter wrote next to the SavedModel (export.metadata): class names, colours,
    dataset, categories, name, version.

    Always returns 'model_name', 'model_version' (from the path when the file lacks them) and
    'class_names' when known.
    """
    version_dir = resolve_model_dir(model_dir)
    meta: dict[str, Any] = {}
    path = FileSystems.join(version_dir, METADATA_PATH)
    if FileSystems.exists(path):
        with FileSystems.open(path, compression_type="uncompressed") as f:
            meta = json.loads(f.read().decode("utf-8"))
    labels = FileSystems.join(version_dir, LABELS_PATH)
    if not meta.get("class_names") and FileSystems.exists(labels):
        with FileSystems.open(labels, compression_type="uncompressed") as f:
            meta["class_names"] = [ln for ln in f.read().decode("utf-8").splitlines() if ln]
    folder = posixpath.basename(version_dir.rstrip("/"))
    number = layout.version_number(folder)
    meta["model_version"] = meta.get("version") or number
    meta.setdefault("model_name", posixpath.basename(posixpath.dirname(version_dir.rstrip("/")))
                    if number is not None else folder)
    meta["version_dir"] = version_dir
    return meta


def local_model_dir(version_dir: str, cache_root: Optional[str] = None) -> str:
    """A local folder holding the SavedModel at `version_dir` (itself when already local).

    TensorFlow reads only local paths (and gs:// in some builds), so a model on s3://, gs://
    or hdfs:// is copied through Beam's FileSystems to this machine's temporary folder first.
    The copy is shared by every worker process of the machine: it is made under a temporary
    name and renamed into place, so processes that race end with one complete copy.
    """
    if "://" not in version_dir:
        return version_dir
    root = cache_root or os.path.join(tempfile.gettempdir(), "fcnseg-models")
    key = hashlib.sha256(version_dir.rstrip("/").encode()).hexdigest()[:16]
    target = os.path.join(root, f"{posixpath.basename(version_dir.rstrip('/'))}-{key}")
    if os.path.isfile(os.path.join(target, SAVED_MODEL_FILE)):
        return target
    prefix = version_dir.rstrip("/") + "/"
    files = [m for m in FileSystems.match([prefix + "**"])[0].metadata_list
             if not m.path.endswith("/")]
    if not any(m.path == prefix + SAVED_MODEL_FILE for m in files):
        raise FileNotFoundError(f"{version_dir}: no {SAVED_MODEL_FILE} to copy")
    staging = f"{target}.tmp-{uuid.uuid4().hex[:8]}"
    start = time.perf_counter()
    try:
        for m in files:
            local = os.path.join(staging, *m.path[len(prefix):].split("/"))
            os.makedirs(os.path.dirname(local), exist_ok=True)
            with FileSystems.open(m.path, compression_type="uncompressed") as src, \
                    open(local, "wb") as dst:
                shutil.copyfileobj(src, dst, 8 << 20)
        try:
            os.rename(staging, target)
        except OSError:  # another process of this machine finished first: use its copy
            if not os.path.isfile(os.path.join(target, SAVED_MODEL_FILE)):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    _LOGGER.info("copied the model %s to %s (%d files, %.1f MB, %.1f s)", version_dir, target,
                 len(files), sum(m.size_in_bytes for m in files) / 1e6,
                 time.perf_counter() - start)
    return target


# --- shared result assembly -------------------------------------------------------------

def _decode_png(data: bytes) -> np.ndarray:
    from PIL import Image
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img, dtype=np.uint8)


def _segmentations(outputs: dict, model_name: str, version: Optional[int],
                   latency_ms: float, n: int) -> list[Segmentation]:
    masks = outputs[names.MASK_PNG_BYTES]
    conf = outputs[names.CONFIDENCE_PNG_BYTES]
    heights, widths = outputs["heights"], outputs["widths"]
    padded = outputs.get("class_ids")
    results = []
    for i in range(n):
        if padded is not None:  # in process it is already there; no need to decode the PNG
            ids = np.ascontiguousarray(padded[i, : int(heights[i]), : int(widths[i])])
        else:
            ids = _decode_png(bytes(masks[i]))
        results.append(Segmentation(ids, bytes(masks[i]), bytes(conf[i]), model_name, version,
                                    latency_ms, n))
    return results


def _one_by_one(batch: Sequence[ImageItem], call: Callable[[list[bytes]], list],
                is_item_error: Callable[[Exception], bool]) -> list:
    """Run each image alone; images the model refuses get an InferenceFailure."""
    out = []
    for item in batch:
        try:
            out.append(call([item.data])[0])
        except Exception as exc:  # noqa: BLE001 - classified just below
            if not is_item_error(exc):
                raise
            out.append(InferenceFailure(_short(exc)))
    return out


def _short(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    # TF errors carry a multi-line graph trace; the first line says what went wrong.
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:500]


# --- in process -------------------------------------------------------------------------

class SavedModelSegmenter:
    """The loaded SavedModel's `segment_encoded`, callable with a list of encoded images, on
    the chosen backend (model.backends).

    A plain object with one method so that Beam can also proxy it to another process
    (model_copies), where only picklable bytes and numpy arrays cross the boundary.
    """

    def __init__(self, model_dir: str, device: Optional[str] = None,
                 backend: str = "tensorflow"):
        from model.exported import load_exported  # TensorFlow: only on workers that run it

        self.meta = read_model_metadata(model_dir)
        self._exported = load_exported(local_model_dir(self.meta["version_dir"]),
                                       backend=backend)
        self._exported.signature(SIGNATURE)  # a model without it fails here, not per batch
        self._device = device

    def segment(self, images: list[bytes]) -> dict:
        return self._exported.call(SIGNATURE, device=self._device,
                                   **{names.IMAGE_BYTES: images})

    def describe(self) -> tuple[str, Optional[int]]:
        return self.meta["model_name"], self.meta["model_version"]


class SavedModelHandler(ModelHandler[ImageItem, PredictionResult, SavedModelSegmenter]):
    """In-process inference with `tf.saved_model.load` (works for the Keras 3 exports, which
    Beam's TFModelHandlerTensor cannot load).

    One model per worker process is shared by all its threads (Beam's default); with
    `model_copies=N` Beam instead loads N copies per machine, shared across processes (for
    large models on a GPU, or to cap memory). Batches: min/max_batch_size images; with
    `max_batch_bytes` a batch is split into model calls of at most that much encoded data;
    with `call_size="auto"` into calls of the size that measured fastest on this worker
    (probed once per loaded model, i.e. per process, on its first images, whose results are
    kept: model.batch_size.Probe).
    `backend`: the runtime (model.backends), TensorFlow unless told.
    """

    def __init__(self, model_dir: str, *, min_batch_size: int = 1, max_batch_size: int = 8,
                 max_batch_bytes: Optional[int] = None, model_copies: Optional[int] = None,
                 device: Optional[str] = None, backend: str = "tensorflow",
                 call_size: Optional[str] = None):
        # Beam 2.77's BatchElements does not accept ModelHandler's max_batch_weight, so the
        # byte limit is applied here, by splitting a batch into calls (_calls_within).
        super().__init__(min_batch_size=min_batch_size, max_batch_size=max_batch_size,
                         model_copies=model_copies)
        self._max_batch_bytes = max_batch_bytes
        self._model_dir = model_dir
        self._device = device
        self._backend = backend
        self._call_size = call_size

    def load_model(self) -> SavedModelSegmenter:
        return SavedModelSegmenter(self._model_dir, self._device, self._backend)

    def run_inference(self, batch: Sequence[ImageItem], model: SavedModelSegmenter,
                      inference_args: Optional[dict] = None) -> list[PredictionResult]:
        name, version = model.describe()

        def call(images: list[bytes]) -> list:
            start = time.perf_counter()
            outputs = model.segment(images)
            ms = (time.perf_counter() - start) * 1000.0
            return _segmentations(outputs, name, version, ms, len(images))

        def run_part(part: list) -> tuple[list, bool]:
            """The part's inferences, and whether it ran as one call."""
            try:
                return call([item.data for item in part]), True
            except Exception as exc:  # noqa: BLE001 - a bad image, or a bad batch: split it
                if len(part) == 1:
                    return [InferenceFailure(_short(exc))], False
                _LOGGER.warning("batch of %d failed (%s); retrying image by image",
                                len(part), _short(exc))
                return _one_by_one(part, call, lambda e: True), False

        inferences = []
        for part in _calls_within(batch, self._max_batch_bytes):
            if self._call_size == "auto":
                inferences += self._probe(model).run(part, run_part)
            else:
                inferences += run_part(part)[0]
        return [PredictionResult(item, inf, model_id=f"{name}/{version}")
                for item, inf in zip(batch, inferences)]

    def _probe(self, model):
        """The batch size probe (model.batch_size.Probe) of this loaded model. Kept beside
        it, not in it, since with model_copies `model` is a proxy to another process; the
        handler cannot hold it either: every thread's DoFn has its own copy of the handler,
        while the threads of a process share the model."""
        from model.batch_size import CANDIDATES, Probe

        with _PROBES_LOCK:
            if model not in _PROBES:
                largest = self.batch_elements_kwargs()["max_batch_size"]
                _PROBES[model] = Probe([n for n in CANDIDATES if n <= largest])
            return _PROBES[model]

    def get_num_bytes(self, batch: Sequence[ImageItem]) -> int:
        return sum(len(item.data) for item in batch)

    def get_metrics_namespace(self) -> str:
        return "fcnseg_inference"


def _calls_within(batch: Sequence[ImageItem], max_bytes: Optional[int]) -> list[list]:
    """Split a batch into consecutive parts of at most max_bytes of encoded images each (an
    image bigger than that goes alone): the clients' rule (serving.chunking), on the images'
    bytes alone."""
    from serving.chunking import chunk_slices

    items = list(batch)
    if not max_bytes:
        return [items]
    return [items[s] for s in chunk_slices([len(i.data) for i in items], max_bytes, overhead=0)]


# --- TF Serving over gRPC ---------------------------------------------------------------

def _is_retryable(exc: Exception) -> bool:
    """What Beam's retry loop should send again: transient server states, not bad input.

    Besides the client's retryable codes: CANCELLED and ABORTED, which this job only sees when
    the server (or a proxy) drops calls in flight, e.g. while restarting.
    """
    code = getattr(getattr(exc, "code", None), "name", None)
    return bool(getattr(exc, "retryable", False)) or code in ("CANCELLED", "ABORTED")


def _refused_image(exc: Exception) -> bool:
    """What one image can cause alone: bad input, or a request over a message limit."""
    return _is_bad_input(exc) or bool(getattr(exc, "request_limit", None))


def _is_bad_input(exc: Exception) -> bool:
    """The server refused what was sent (an image it cannot decode): worth splitting the batch.
    Other errors (NOT_FOUND model, UNIMPLEMENTED signature) fail every image alike."""
    code = getattr(exc, "code", None)
    return getattr(code, "name", None) == "INVALID_ARGUMENT"


class TFServingHandler(RemoteModelHandler[ImageItem, PredictionResult, Any]):
    """Inference through TF Serving's PredictionService with serving.grpc_client.

    One client (one gRPC channel) per worker process, shared by its threads. Transient errors
    (UNAVAILABLE, DEADLINE_EXCEEDED, CANCELLED, ABORTED: a restarting or slow server; only
    UNAVAILABLE by the client itself) are retried by Beam with exponential backoff and
    client-side throttling; a batch the server refuses (INVALID_ARGUMENT) is retried image by
    image.
    A batch goes in one request (TF Serving accepts messages up to 2 GiB), or in requests of
    at most `max_batch_bytes` of encoded images. A request refused as over a message limit
    (a proxy, or a server with gRPC's default 4 MiB) is split in halves until it passes, and
    later batches stay under that limit; an image over it alone is a dead letter.
    """

    def __init__(self, address: str, model_name: str, *, version: Optional[int] = None,
                 version_label: Optional[str] = None, timeout: float = 60.0,
                 client_retries: int = 4, num_retries: int = 5, throttle_delay_secs: int = 5,
                 min_batch_size: int = 1, max_batch_size: int = 8,
                 max_batch_bytes: Optional[int] = None):
        super().__init__(namespace="fcnseg_tfserving", num_retries=num_retries,
                         throttle_delay_secs=throttle_delay_secs, retry_filter=_is_retryable)
        self._batching_kwargs = {"min_batch_size": min_batch_size,
                                 "max_batch_size": max_batch_size}
        self._max_batch_bytes = max_batch_bytes
        self._address = address
        self._model_name = model_name
        self._version = version
        self._version_label = version_label
        self._timeout = timeout
        self._client_retries = client_retries

    def create_client(self):
        from serving.grpc_client import PredictionClient
        return PredictionClient(self._address, self._model_name, version=self._version,
                                version_label=self._version_label, timeout=self._timeout,
                                max_retries=self._client_retries)

    def check_model(self) -> None:
        """One GetModelMetadata call, as the job's requests will ask (model, version or
        label): raises ServingError where the server does not answer or has no such model,
        ValueError where the model has no segment_encoded signature."""
        client = self.create_client()
        try:
            signatures = client.get_model_metadata()["signature_def"]
        finally:
            client.close()
        if SIGNATURE not in signatures:
            raise ValueError(f"{self._address}/{self._model_name}: the served model has no "
                             f"{SIGNATURE} signature (it has {', '.join(sorted(signatures))}): "
                             f"serve a model exported by fcnseg")

    def request(self, batch: Sequence[ImageItem], model,
                inference_args: Optional[dict] = None) -> list[PredictionResult]:
        def call(images: list[bytes]) -> list:
            start = time.perf_counter()
            # The client asks for the names the served export uses, and answers in format 2's.
            outputs, version = model.predict(
                {names.IMAGE_BYTES: np.array(images, dtype=object)}, signature_name=SIGNATURE,
                output_filter=[names.MASK_PNG_BYTES, names.CONFIDENCE_PNG_BYTES, names.HEIGHTS,
                               names.WIDTHS])
            ms = (time.perf_counter() - start) * 1000.0
            return _segmentations(outputs, self._model_name, version, ms, len(images))

        def run_part(part: list) -> list:
            try:
                return call([item.data for item in part])
            except Exception as exc:  # noqa: BLE001
                limit = getattr(exc, "request_limit", None)
                if limit and len(part) > 1:  # over a message limit on the way: smaller requests
                    self._learn_request_limit(limit)
                    half = len(part) // 2
                    return run_part(part[:half]) + run_part(part[half:])
                if not _refused_image(exc):
                    raise  # retryable: Beam retries with backoff; else dead-lettered as a batch
                if len(part) == 1:
                    return [InferenceFailure(_short(exc))]
                _LOGGER.warning("batch of %d refused (%s); retrying image by image",
                                len(part), _short(exc))
                return _one_by_one(part, call, _refused_image)

        inferences = []
        for part in _calls_within(batch, self._max_batch_bytes):
            inferences += run_part(part)
        return [PredictionResult(item, inf, model_id=f"{self._model_name}/{inf.model_version}"
                                 if isinstance(inf, Segmentation) else self._model_name)
                for item, inf in zip(batch, inferences)]

    def _learn_request_limit(self, limit: int) -> None:
        """Requests from now on stay under a message limit met on the way to the server."""
        from serving.chunking import REQUEST_OVERHEAD_BYTES

        cap = max(1, limit - REQUEST_OVERHEAD_BYTES)
        if self._max_batch_bytes is None or cap < self._max_batch_bytes:
            _LOGGER.warning("the server (or a proxy) refuses requests over %d bytes; sending "
                            "at most %d bytes of images per request from now on (set "
                            "--max-batch-bytes to start there)", limit, cap)
            self._max_batch_bytes = cap

    def get_num_bytes(self, batch: Sequence[ImageItem]) -> int:
        return sum(len(item.data) for item in batch)

    def get_metrics_namespace(self) -> str:
        return "fcnseg_inference"
