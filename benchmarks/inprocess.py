"""In process: the SavedModel's two signatures called through model.exported (the one
loader), on KITTI-sized images, at several batch sizes."""
from __future__ import annotations

from benchmarks.common import log, measure, throughput

SIGNATURES = ("serving_default", "segment_encoded")


def call(mut, images, signature: str, batch: int, start: int = 0):
    """One call of `signature` on `batch` benchmark images; returns the outputs."""
    if signature == "serving_default":
        return mut.loaded.segment(images.batch(batch, start))
    return mut.loaded.segment_encoded(images.blob_batch(batch, start))


def run(mut, images, args) -> dict:
    results = []
    for signature in SIGNATURES:
        for batch in args.batch_sizes:
            counter = iter(range(10**9))  # a different slice of images on every call
            times = measure(lambda: call(mut, images, signature, batch, next(counter) * batch),
                            warmup=args.warmup, repeats=args.repeats,
                            min_seconds=args.min_seconds, max_repeats=args.max_repeats)
            row = {"signature": signature, "batch": batch, **throughput(times, batch)}
            results.append(row)
            log(f"in-process {signature} batch {batch}: {row['images_per_s']:.2f} images/s, "
                f"p50 {row['p50_ms']:.0f} ms per call")
    return {"image_size": list(images.arrays[0].shape[:2]), "results": results}


def best(section: dict, signature: str | None = None) -> dict:
    rows = [r for r in section["results"] if signature in (None, r["signature"])]
    return max(rows, key=lambda r: r["images_per_s"])
