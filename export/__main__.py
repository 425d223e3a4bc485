"""python -m export --run-dir runs/X --model-dir models/fcn8s [--model-version N] [...]"""
from __future__ import annotations

import sys

from common import cli
from model import geometry

if __name__ == "__main__":
    cli.quiet_tensorflow()  # before anything below loads TensorFlow

import json
from pathlib import Path

from export.precision import COMPUTE_DTYPES
from export.savedmodel import export_saved_model, saved_model_sizes, weights_nbytes
from model.runs import checkpoint_path, load_checkpoint, load_run_config, read_json


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def parse_args(argv=None):
    p = cli.ArgumentParser(
        prog="python -m export",
        description="Export a training run's checkpoint as a TF Serving SavedModel version "
                    "<model-dir>/<version>/ (<model-dir> is TF Serving's --model_base_path).")
    p.add_argument("--run-dir", required=True, type=Path, help="run directory of model.train")
    p.add_argument("--checkpoint", type=Path,
                   help="Keras checkpoint (default <run-dir>/checkpoints/best.keras)")
    p.add_argument("--model-dir", required=True, type=Path,
                   help="the model folder the version is written into, e.g. models/fcn8s; "
                        "its name is the model's name in the metadata")
    p.add_argument("--model-version", type=int, help="version number (default: next free)")
    p.add_argument("--compute-dtype", choices=COMPUTE_DTYPES, default="float32",
                   help="dtype the exported graph computes in (weights stay float32)")
    p.add_argument("--inference-size", nargs="+", metavar="H W | native",
                   help="geometry the graph infers at: H W (every image resized to it), or "
                        "'native' (each image padded to a multiple of 32, no resize, cropped "
                        "back); default: the training size")
    p.add_argument("--overwrite", action="store_true", help="replace an existing version")
    args = p.parse_args(argv)
    if args.model_version is not None and args.model_version < 1:
        # TF Serving loads only positive numeric version folders (file_system_storage_path_source)
        raise cli.UserError("--model-version", f"must be 1 or more, got {args.model_version}")
    if args.inference_size is not None:
        args.inference_size = geometry.parse_size(args.inference_size)
    return args


def _main(argv=None) -> int:
    args = parse_args(argv)
    if not args.run_dir.is_dir():
        raise cli.UserError(args.run_dir, "no such run folder")
    target = args.model_dir / str(args.model_version)
    if args.model_version is not None and target.exists() and not args.overwrite:
        # Checked again by export_saved_model; here so we fail before loading the checkpoint.
        raise cli.UserError(target, "already exists (pass --overwrite to replace it, or choose "
                                    "another --model-version)")
    config = load_run_config(args.run_dir)
    checkpoint = args.checkpoint or checkpoint_path(args.run_dir, "best")
    metrics_path = args.run_dir / "metrics.json"
    metrics = read_json(metrics_path) if metrics_path.is_file() else None
    print(f"loading {checkpoint}", file=sys.stderr)
    keras_model = load_checkpoint(checkpoint)
    print(f"exporting ({args.compute_dtype}) ...", file=sys.stderr)
    try:
        path = export_saved_model(keras_model, config, args.model_dir.parent, args.model_dir.name,
                                  version=args.model_version, metrics=metrics, source=checkpoint,
                                  compute_dtype=args.compute_dtype, run_dir=args.run_dir,
                                  overwrite=args.overwrite, inference_size=args.inference_size)
    except FileExistsError as err:  # "<version folder>: <why>", e.g. written meanwhile
        what, _, why = str(err).partition(": ")
        raise cli.UserError(what, why) from None
    sizes = saved_model_sizes(path)
    print(path)
    print(json.dumps({"path": str(path), "weights_bytes": weights_nbytes(keras_model), **sizes},
                     indent=2))
    print(f"total {_mb(sizes['total_bytes'])}, variables {_mb(sizes['variables_bytes'])} "
          f"(weights {_mb(weights_nbytes(keras_model))}), saved_model.pb "
          f"{_mb(sizes['saved_model_pb_bytes'])}, warmup {_mb(sizes['warmup_bytes'])}",
          file=sys.stderr)
    return 0


def main(argv=None) -> int:
    return cli.run(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
