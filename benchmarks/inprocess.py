"""In process: the SavedModel's two signatures called through model.exported (the one
loader), on KITTI-sized images, at several batch sizes, on each runtime of --backends."""
from __future__ import annotations

from benchmarks.common import log, measure, measure_in_turns, throughput

SIGNATURES = ("serving_default", "segment_encoded")


def call(mut, images, signature: str, batch: int, start: int = 0, backend: str = "tensorflow"):
    """One call of `signature` on `batch` benchmark images; returns the outputs."""
    model = mut.runtime(backend)
    if signature == "serving_default":
        return model.segment(images.batch(batch, start))
    return model.segment_encoded(images.blob_batch(batch, start))


def run(mut, images, args) -> dict:
    """Every configuration, timed in turns (benchmarks.common.measure_in_turns)."""
    configs = [(backend, signature, batch)
               for backend in getattr(args, "backends", ["tensorflow"])
               for signature in SIGNATURES for batch in args.batch_sizes]

    def caller(backend, signature, batch):
        counter = iter(range(10**9))  # a different slice of images on every call
        return lambda: call(mut, images, signature, batch, next(counter) * batch, backend)
    log(f"in-process: {len(configs)} configurations, one call each in turn")
    times = measure_in_turns({c: caller(*c) for c in configs}, warmup=args.warmup,
                             repeats=args.repeats, min_seconds=args.min_seconds,
                             max_repeats=args.max_repeats)
    results = []
    for (backend, signature, batch), t in times.items():
        row = {"backend": backend, "signature": signature, "batch": batch,
               **throughput(t, batch)}
        results.append(row)
        log(f"in-process {backend} {signature} batch {batch}: "
            f"{row['images_per_s']:.2f} images/s, p50 {row['p50_ms']:.0f} ms per call")
    return {"image_size": list(images.arrays[0].shape[:2]), "results": results}


def best(section: dict, signature: str | None = None) -> dict:
    rows = [r for r in section["results"] if signature in (None, r["signature"])]
    return max(rows, key=lambda r: r["images_per_s"])


def remeasure_best(mut, images, section: dict, args) -> None:
    """Time the best configuration again at the end of the run: the other paths' ratios
    divide by its first timing, and the distance between the two says how far the machine
    (its clock, other work) moved in between, i.e. how precise those ratios are."""
    first = best(section)
    log(f"in-process: timing the best configuration ({first['backend']} "
        f"{first['signature']} batch {first['batch']}) again at the end of the run")
    counter = iter(range(10**9))
    times = measure(lambda: call(mut, images, first["signature"], first["batch"],
                                 next(counter) * first["batch"], first["backend"]),
                    warmup=args.warmup, repeats=args.repeats, min_seconds=args.min_seconds,
                    max_repeats=args.max_repeats)
    again = throughput(times, first["batch"])
    section["best_again"] = {"backend": first["backend"], "signature": first["signature"],
                             "batch": first["batch"], **again,
                             "vs_first": again["images_per_s"] / first["images_per_s"]}
    log(f"in-process: {again['images_per_s']:.2f} images/s at the end against "
        f"{first['images_per_s']:.2f} at first ({section['best_again']['vs_first']:.2f}x)")

