"""Through gRPC: the model behind the integration tests' server (serving.backends: real TF
Serving when it can be had, else tfserving_dev), with 1..k concurrent clients, plus the
bytes a request and its response take on the wire for each signature and output filter."""
from __future__ import annotations

import contextlib
import os
import pathlib
import tempfile
import threading
import time

import numpy as np

from benchmarks.common import log, percentiles
from export.wire import predict_request, predict_response
from serving.backends import start_backend
from serving.grpc_client import PredictionClient

# (signature, output filter) pairs whose wire sizes are reported; None = every output.
WIRE_VARIANTS = (
    ("serving_default", ("class_ids", "confidence")),   # serving.grpc_client's default
    ("serving_default", ("class_ids",)),
    ("serving_default", None),                          # a stock client: no filter
    ("segment_probabilities", None),                    # float maps, their own signature
    ("segment_encoded", ("mask_png_bytes", "confidence_png_bytes", "heights",
                         "widths")),                    # the Beam job's
    ("segment_encoded", ("mask_png_bytes",)),
    ("segment_encoded", None),
)
# The variants whose throughput is measured at each concurrency.
TIMED_VARIANTS = (WIRE_VARIANTS[0], WIRE_VARIANTS[4])


@contextlib.contextmanager
def serve(mut):
    """A running backend serving `mut` as version 1 of its model name (a symlink in a
    temporary model base, so nothing is written next to the user's models)."""
    with tempfile.TemporaryDirectory(prefix="fcnseg-bench-serving-") as tmp:
        base = pathlib.Path(tmp)
        (base / mut.name).mkdir()
        os.symlink(mut.path.resolve(), base / mut.name / "1")
        backend = start_backend(base, mut.name, labels={})
        try:
            yield backend
        finally:
            backend.close()  # stop() keeps a Docker container for restarts


def _inputs(images, signature: str, batch: int, start: int = 0) -> dict:
    if signature != "segment_encoded":  # serving_default, segment_probabilities: pixels
        return {"images": images.batch(batch, start)}
    return {"image_bytes": np.array(images.blob_batch(batch, start), dtype=object)}


def wire_sizes(client, mut, images) -> list[dict]:
    """Serialized PredictRequest / PredictResponse bytes per image (batch of one)."""
    rows = []
    for signature, output_filter in WIRE_VARIANTS:
        inputs = _inputs(images, signature, 1)
        request = predict_request(mut.name, signature, inputs, output_filter or ())
        outputs, version = client.predict(inputs, signature, output_filter)
        response = predict_response(mut.name, signature, outputs, version)
        rows.append({"signature": signature,
                     "output_filter": list(output_filter) if output_filter else "all",
                     "request_bytes": request.ByteSize(), "response_bytes": response.ByteSize(),
                     "image_png_bytes": len(images.blobs[0])})
    return rows


def concurrent_run(address: str, mut, images, signature: str, output_filter, clients: int,
                   requests_per_client: int, batch: int) -> dict:
    """`clients` threads, each with its own channel, sending requests back to back."""
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(clients + 1)

    def worker(index: int):
        try:
            # Replies of serving_default for several KITTI images pass gRPC's 4 MiB default
            # (int_val varints: ~7 MB for 8): the bench times them rather than fail.
            with PredictionClient(address, mut.name, timeout=600, max_retries=0,
                                  max_response_bytes=-1) as client:
                client.predict(_inputs(images, signature, batch, index), signature,
                               output_filter)
                barrier.wait()  # everyone warmed up and connected: start together
                mine = []
                for r in range(requests_per_client):
                    start = time.perf_counter()
                    client.predict(_inputs(images, signature, batch, index + r * clients),
                                   signature, output_filter)
                    mine.append(time.perf_counter() - start)
        except threading.BrokenBarrierError:
            return
        except Exception as err:  # noqa: BLE001 - reported in the results, not fatal
            barrier.abort()  # do not leave the others waiting for this client
            with lock:
                errors.append(f"{type(err).__name__}: {err}"[:300])
            return
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    try:
        barrier.wait()
    except threading.BrokenBarrierError:
        pass
    start = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    done = len(latencies) * batch
    return {"signature": signature, "output_filter": list(output_filter or []) or "all",
            "clients": clients, "batch": batch, "requests": len(latencies),
            "images_per_s": done / wall if wall > 0 and done else None,
            "ms_per_image": wall * 1e3 / done if done else None, "wall_s": wall,
            "errors": errors, **(percentiles(latencies) if latencies else {})}


def run(mut, images, args) -> dict:
    log("gRPC: starting the serving backend")
    with serve(mut) as backend:
        log(f"gRPC: backend {backend.description}")
        # Probabilities of a large image can exceed gRPC's 4 MiB default: measure them anyway.
        with PredictionClient(backend.address, mut.name, timeout=600,
                              max_response_bytes=-1) as client:
            sizes = wire_sizes(client, mut, images)
        results = []
        for signature, output_filter in TIMED_VARIANTS:
            for clients in args.clients:
                row = concurrent_run(backend.address, mut, images, signature, output_filter,
                                     clients, args.grpc_requests, args.grpc_batch)
                results.append(row)
                log(f"gRPC {signature} {clients} client(s): {row['images_per_s'] or 0:.2f} "
                    f"images/s, p50 {row.get('p50_ms', float('nan')):.0f} ms per request"
                    + (f"; FAILED: {row['errors'][0]}" if row["errors"] else ""))
        return {"backend": backend.kind, "backend_description": backend.description,
                "image_size": list(images.arrays[0].shape[:2]), "wire": sizes,
                "results": results}


def best(section: dict, signature: str | None = None) -> dict:
    rows = [r for r in section["results"] if signature in (None, r["signature"])
            and r["images_per_s"]]
    return max(rows, key=lambda r: r["images_per_s"])
