"""Where the time goes: one KITTI image's request split into its stages, each timed on its
own with the same TensorFlow ops the serving graph uses (decode, resize to the geometry, the
network, resize back + argmax, PNG encode) and the proto work a gRPC client does; what a
path's measured time leaves over is its framework's own overhead (signature dispatch, gRPC
transport and the server's Python, Beam's runner and file I/O). Plus a cProfile of the Beam
job, summed by package, to show where its Python side spends the milliseconds."""
from __future__ import annotations

import contextlib
import cProfile
import pstats
import re
import time

import numpy as np
import tensorflow as tf

from benchmarks import beam, grpc_serving, inprocess
from benchmarks.common import log
from benchmarks.grpc_serving import WIRE_VARIANTS, serve
from contract.names import PNG_COMPRESSION
from export.signatures import class_ids_of, confidence_of, from_geometry, to_geometry
from export.wire import predict_request
from serving.grpc_client import PredictionClient


TOTAL_SE = "total: in-process segment_encoded"
TOTAL_SD = "total: in-process serving_default"
TOTAL_GRPC = "total: gRPC serving_default"
# The paths compared with the floor, by the keys of path_times().
PATH_NAMES = {"inprocess_best": "in process (best configuration)",
              "grpc_best": "gRPC (best configuration)",
              "beam_inprocess": "Beam job, in-process mode", "beam_grpc": "Beam job, gRPC mode"}


def stage_times(mut, images, args, client=None) -> dict:
    """Fastest and median milliseconds of each stage for one image (batch of one), and of
    the whole in-process (and, given a client, gRPC) call. They are timed in interleaved
    rounds, so that the parts and the totals they are compared with share the machine load."""
    blob = images.blobs[0]
    image = tf.io.decode_png(blob, channels=3)
    size = tf.shape(image)[:2]
    resized = to_geometry(image[None], mut.image_size)
    model = mut.keras_model()
    network = tf.function(lambda x: model(x, training=False))
    probs = network(resized)

    @tf.function
    def postprocess(p, hw):
        p = from_geometry(p, hw, tuple(mut.image_size))
        return class_ids_of(p), confidence_of(p)

    ids, conf = postprocess(probs, size)
    arrays = {"class_ids": ids.numpy(), "confidence": conf.numpy()}
    protos = {k: tf.make_tensor_proto(v) for k, v in arrays.items()}
    calls = {
        "png_decode": lambda: tf.io.decode_png(blob, channels=3).numpy(),
        "resize_to_geometry": lambda: to_geometry(image[None], mut.image_size).numpy(),
        "network": lambda: network(resized).numpy(),
        "resize_back_argmax_confidence": lambda: [t.numpy() for t in postprocess(probs, size)],
        "png_encode_mask_and_confidence": lambda: (
            tf.io.encode_png(ids[..., None], compression=PNG_COMPRESSION).numpy(),
            tf.io.encode_png(conf[..., None], compression=PNG_COMPRESSION).numpy()),
        "request_proto_uint8_image": lambda: predict_request(
            mut.name, "serving_default", {"images": image.numpy()[None]}).SerializeToString(),
        "request_proto_png_bytes": lambda: predict_request(
            mut.name, "segment_encoded",
            {"image_bytes": np.array([blob], dtype=object)}).SerializeToString(),
        "response_proto_parse_class_ids_confidence": lambda: [
            tf.make_ndarray(p) for p in protos.values()],
        TOTAL_SE: lambda: mut.loaded.segment_encoded([blob]),
        TOTAL_SD: lambda: mut.loaded.segment(image.numpy()[None]),
    }
    if client is not None:
        calls[TOTAL_GRPC] = lambda: client.predict({"images": image.numpy()[None]},
                                                   "serving_default", WIRE_VARIANTS[0][1])
    for fn in calls.values():
        for _ in range(args.warmup):
            fn()
    samples: dict[str, list] = {name: [] for name in calls}
    for _ in range(max(args.repeats, 5)):
        for name, fn in calls.items():
            start = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - start)
    # Other load only ever adds time, so the fastest round is the steadiest estimate of a
    # part's own cost; the decomposition uses it, the median is reported beside it.
    return ({name: float(np.min(v)) * 1e3 for name, v in samples.items()},
            {name: float(np.median(v)) * 1e3 for name, v in samples.items()})


def _package(filename: str, function: str) -> str:
    match = re.search(r"site-packages/([A-Za-z0-9_]+)", filename)
    if match:
        return match.group(1)
    match = re.search(r"/(beam_jobs|model|export|serving|benchmarks)/", filename)
    if match:
        return f"fcnseg:{match.group(1)}"
    if filename == "~":  # C functions: name the library when the name says it
        for name in ("tensorflow", "_pywrap_tfe", "grpc", "numpy", "PIL", "zlib", "pickle"):
            if name in function:
                return "tensorflow" if name == "_pywrap_tfe" else name
        return "python builtins"
    return "python stdlib"


def profile_beam(mut, images, args, mode: str = "inprocess") -> dict:
    """cProfile of one Beam job run: own seconds by package and the functions with the most
    own time. Only the calling thread is profiled: in gRPC mode the in-process test server's
    threads are not (its time shows as waiting in grpc)."""
    n = args.beam_images
    with serve(mut) if mode == "grpc" else contextlib.nullcontext() as backend:
        profiler = cProfile.Profile()
        profiler.enable()
        row = beam.run_job(mut, images, n, mode, args.beam_batch,
                           backend.address if backend else None)
        profiler.disable()
    stats = pstats.Stats(profiler)
    by_package: dict[str, float] = {}
    functions = []
    for (filename, line, function), (_, calls, own, cumulative, _) in stats.stats.items():
        package = _package(filename, function)
        by_package[package] = by_package.get(package, 0.0) + own
        functions.append({"function": f"{function} ({filename.split('site-packages/')[-1]}:"
                                      f"{line})", "package": package, "calls": calls,
                          "own_s": own, "cumulative_s": cumulative})
    functions.sort(key=lambda f: -f["own_s"])
    profiled = sum(by_package.values())
    return {"mode": mode, "images": n, "wall_s": row["wall_s"], "profiled_s": profiled,
            "by_package": dict(sorted(((k, v) for k, v in by_package.items()),
                                      key=lambda kv: -kv[1])),
            "top_functions": functions[:15]}


def run(mut, images, args, sections: dict) -> dict:
    log("where the time goes: timing each stage of one image, interleaved with whole calls")
    with serve(mut) as backend, PredictionClient(backend.address, mut.name,
                                                 timeout=600) as client:
        stages, stage_medians = stage_times(mut, images, args, client)
    floor = sections.get("floor", {}).get("floor_ms_per_image")
    paths = path_times(sections)
    decomposition = {}
    model_side = (stages["png_decode"] + stages["resize_to_geometry"] + stages["network"]
                  + stages["resize_back_argmax_confidence"]
                  + stages["png_encode_mask_and_confidence"])
    total = stages[TOTAL_SE]
    decomposition["in-process segment_encoded (batch 1)"] = _rows(total, {
        **{k: stages[k] for k in ("png_decode", "resize_to_geometry", "network",
                                  "resize_back_argmax_confidence",
                                  "png_encode_mask_and_confidence")},
        "signature dispatch, map_fn, outputs to numpy (rest)": total - model_side})
    total, inner = stages[TOTAL_GRPC], stages[TOTAL_SD]
    proto = stages["request_proto_uint8_image"] + stages[
        "response_proto_parse_class_ids_confidence"]
    decomposition[f"gRPC serving_default (1 client, {backend.kind})"] = _rows(total, {
        "resize_to_geometry": stages["resize_to_geometry"], "network": stages["network"],
        "resize_back_argmax_confidence": stages["resize_back_argmax_confidence"],
        "signature rest (dispatch, outputs to numpy)":
            inner - stages["resize_to_geometry"] - stages["network"]
            - stages["resize_back_argmax_confidence"],
        "client request serialization + response parsing": proto,
        "gRPC transport + server (Python, proto conversion) (rest)": total - inner - proto})
    beam = sections.get("beam", {})
    if "results" in beam:
        row = {r["mode"]: r for r in beam["results"]}["inprocess"]
        n, inner = beam["images"], beam["inprocess_reference"]["ms_per_image"]
        total = row["ms_per_image"]
        fit = row.get("at_scale") or sections.get("scaling", {}).get("by_images", {}).get(
            "fit") or {}
        # The fixed cost per run (pipeline start-up, model load, first-call warm-up) from the
        # line through the section's two job lengths, spread over this run's N images.
        fixed = min(max(fit.get("fixed_s", 0.0), 0.0) * 1e3 / n, max(total - inner, 0.0))
        decomposition[f"Beam in-process ({n} images)"] = _rows(total, {
            "segment_encoded in process (same images and batches)": inner,
            "fixed per run: start-up, model load, warm-up (line fit) / N": fixed,
            "Beam per image: read, validate, RunInference, write (rest)":
                total - inner - fixed})
    slowest, efficiencies = None, {}
    if floor:
        efficiencies = {PATH_NAMES[k]: floor / v for k, v in paths.items()
                        if k in PATH_NAMES and v}
        if efficiencies:
            slowest = min(efficiencies, key=efficiencies.get)
    out = {"stages_ms": stages, "stages_median_ms": stage_medians,
           "paths_ms_per_image": paths, "decomposition": decomposition,
           "slowest_path": slowest, "efficiency_by_path": efficiencies}
    if args.profile_beam and "results" in beam:
        mode = "grpc" if slowest == PATH_NAMES["beam_grpc"] else "inprocess"
        log(f"where the time goes: cProfile of one Beam job run ({mode} mode)")
        out["beam_cprofile"] = profile_beam(mut, images, args, mode)
    return out


def _rows(total: float, parts: dict) -> dict:
    return {"total_ms": total, "parts_ms": parts,
            "shares": {k: v / total for k, v in parts.items()} if total else {}}


def path_times(sections: dict) -> dict:
    """ms per image of each path, from the sections that ran."""
    paths = {}
    section = sections.get("inprocess")
    if section and "results" in section:
        for row in section["results"]:
            if row["batch"] == 1:
                paths[f"inprocess_{row['signature']}_b1"] = row["p50_ms"]
        paths["inprocess_best"] = inprocess.best(section)["ms_per_image"]
    section = sections.get("grpc")
    if section and "results" in section:
        rows = [r for r in section["results"] if r["signature"] == "serving_default"
                and r["clients"] == 1 and r.get("p50_ms")]
        if rows:
            paths["grpc_serving_default"] = rows[0]["p50_ms"] / rows[0]["batch"]
        paths["grpc_best"] = grpc_serving.best(section)["ms_per_image"]
    section = sections.get("beam")
    if section and "results" in section:
        for row in section["results"]:
            paths[f"beam_{row['mode']}"] = row["ms_per_image"]
        paths["beam_reference"] = section["inprocess_reference"]["ms_per_image"]
    return paths
