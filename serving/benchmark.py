"""Latency of one image in-process vs over gRPC, and bytes on the wire per image.

    python -m serving.benchmark --fc-width 16 --geometry 64 128
    python -m serving.benchmark --fc-width 4096 --geometry 160 576 --repeats 5

Exports a randomly initialised FCN-8s (weights do not change the cost), serves it with
serving.test_server in a subprocess (responses encoded like TF Serving, values in typed
fields), and times `serving_default` and `segment_encoded` on one image (KITTI um_000000,
1242x375, when the shared data is there; else random pixels of that size). Prints a table
and writes JSON with --out.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

KITTI_IMAGE = "kitti_road/testing/image_2/um_000000.png"


def load_image() -> tuple[np.ndarray, bytes, str]:
    from PIL import Image
    import io
    data_root = pathlib.Path(os.environ.get(
        "FCNSEG_DATA", pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"))
    path = data_root / KITTI_IMAGE
    if path.is_file():
        data = path.read_bytes()
        return np.array(Image.open(io.BytesIO(data)).convert("RGB")), data, str(path)
    image = np.random.default_rng(0).integers(0, 256, (375, 1242, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "PNG")
    return image, buffer.getvalue(), "random 1242x375"


def timed(fn, repeats: int) -> float:
    fn()  # warm-up (graph tracing, allocations)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serving.benchmark", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fc-width", type=int, default=16)
    parser.add_argument("--geometry", type=int, nargs=2, default=(64, 128), metavar=("H", "W"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args(argv)

    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc
    from export.savedmodel import export_saved_model, load_saved_model
    from model.fcn8s import build_fcn8s
    from serving.backends import free_port, wait_until_available
    from serving.grpc_client import PredictionClient

    image, encoded, source = load_image()
    work = pathlib.Path(tempfile.mkdtemp(prefix="fcnseg-bench-"))
    config = {"dataset": "synthetic", "class_names": ["background", "road"],
              "colours": [[0, 0, 0], [255, 0, 255]], "image_size": list(args.geometry),
              "num_classes": 2, "fc_width": args.fc_width, "normalization": "caffe"}
    start = time.perf_counter()
    model = build_fcn8s(2, (*args.geometry, 3), fc_width=args.fc_width)
    path = export_saved_model(model, config, work, "fcn8s", version=1)
    export_s = time.perf_counter() - start
    del model
    loaded = load_saved_model(path)

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "serving.test_server", "--host",
                               "127.0.0.1", "--port", str(port), "--model_name", "fcn8s",
                               "--model_base_path", str(path.parent)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    results = {"image": source, "fc_width": args.fc_width, "geometry": list(args.geometry),
               "export_seconds": round(export_s, 1), "repeats": args.repeats, "rows": []}
    try:
        address = f"127.0.0.1:{port}"
        wait_until_available(address, "fcn8s", [1], timeout=600)
        channel = grpc.insecure_channel(address, options=[
            ("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)])
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        client = PredictionClient(address, "fcn8s", timeout=600)
        cases = [
            ("serving_default", "class_ids+confidence", {"images": image[None]},
             ["class_ids", "confidence"]),
            ("serving_default", "+probabilities", {"images": image[None]}, []),
            ("segment_encoded", "all outputs", {"image_bytes": np.array([encoded], object)}, []),
            ("segment_encoded", "mask_png only", {"image_bytes": np.array([encoded], object)},
             ["mask_png", "heights", "widths"]),
        ]
        for signature, outputs, inputs, output_filter in cases:
            request = predict_pb2.PredictRequest()
            request.model_spec.name = "fcn8s"
            request.model_spec.signature_name = signature
            for name, value in inputs.items():
                request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
            request.output_filter.extend(output_filter)
            response = stub.Predict(request, timeout=600)
            fn = loaded.signatures[signature]
            feeds = {k: tf.constant(v) for k, v in inputs.items()}
            in_process = timed(lambda: fn(**feeds), args.repeats)
            over_grpc = timed(lambda: client.predict(inputs, signature, output_filter),
                              args.repeats)
            results["rows"].append({
                "signature": signature, "outputs": outputs,
                "in_process_ms": round(in_process, 1), "grpc_ms": round(over_grpc, 1),
                "request_bytes": request.ByteSize(), "response_bytes": response.ByteSize()})
        client.close()
        channel.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
        import shutil
        shutil.rmtree(work, ignore_errors=True)

    print(f"image {source} {image.shape[1]}x{image.shape[0]}, FCN-8s fc_width "
          f"{args.fc_width}, geometry {args.geometry[0]}x{args.geometry[1]}, median of "
          f"{args.repeats} (export took {export_s:.0f} s)")
    print(f"{'signature':16} {'outputs':22} {'in-process ms':>13} {'gRPC ms':>9} "
          f"{'sent B':>10} {'received B':>11}")
    for row in results["rows"]:
        print(f"{row['signature']:16} {row['outputs']:22} {row['in_process_ms']:13.1f} "
              f"{row['grpc_ms']:9.1f} {row['request_bytes']:10d} {row['response_bytes']:11d}")
    if args.out:
        pathlib.Path(args.out).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
