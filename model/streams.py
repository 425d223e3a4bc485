"""How much each FCN stream adds to the logits: is the FCN-8s really using its skips?

    python -m model.streams --checkpoint runs/X/checkpoints/best.keras IMAGES...
    python -m model.streams --model-dir models/fcn8s[/3] IMAGES...

Everything after the score layers (score_fr, score_pool4, score_pool3) is linear: bilinear-
initialised transposed convolutions without bias and additions. So the logits are exactly the
sum of three streams, each a score layer's output taken through the upsampling layers that
follow it. For each stream we print its spread: the standard deviation over all pixels of the
logit contrast l_c - l_0 (for a binary model the road-vs-not-road logit; with more classes the
root mean square over c >= 1), and that spread relative to fc7's. We also print the share of
pixels whose arg-max class the skips change (full logits vs the fc7 stream alone). A trained
FCN-8s whose pool4 and pool3 rows are tiny is an FCN-32s in disguise.

Images are run at the model's geometry: the run's (or export's) image_size,
`--inference-size H W`, or `--inference-size native` (padded to a multiple of 32, no resize).
Folders are expanded.
"""
from __future__ import annotations

from common import cli

if __name__ == "__main__":
    cli.quiet_tensorflow()  # before anything below imports TensorFlow

import argparse
import pathlib

import numpy as np

from contract.files import is_image_name
from contract.names import NATIVE
from model import geometry

# (score layer, the upsampling layers that take it to the output), by variant.
STREAMS = {
    "fcn8s": (("score_fr", ("upscore2", "upscore_pool4", "upscore8")),
              ("score_pool4", ("upscore_pool4", "upscore8")),
              ("score_pool3", ("upscore8",))),
    "fcn16s": (("score_fr", ("upscore2", "upscore16")), ("score_pool4", ("upscore16",))),
    "fcn32s": (("score_fr", ("upscore32",)),),
}
LABELS = {"score_fr": "fc7 (score_fr)", "score_pool4": "pool4 skip (score_pool4)",
          "score_pool3": "pool3 skip (score_pool3)"}


def stream_logits(model, batch) -> dict[str, np.ndarray]:
    """{score layer name: its stream's logits [N, H, W, C] (float32)} for a float batch."""
    import keras

    from model.fcn8s import variant_of

    streams = STREAMS[variant_of(model)]
    scores = keras.Model(model.input, [model.get_layer(n).output for n, _ in streams])
    outputs = scores(batch, training=False)
    outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    result = {}
    for (name, ups), x in zip(streams, outputs):
        for up in ups:
            x = model.get_layer(up)(x)
        result[name] = np.asarray(keras.ops.convert_to_numpy(x), dtype=np.float32)
    return result


def _contrast(logits: np.ndarray) -> np.ndarray:
    """[P, C] -> [P, C-1]: each class' logit minus class 0's."""
    return logits[:, 1:] - logits[:, :1]


def contributions(streams: dict[str, np.ndarray]) -> dict:
    """Spread of each stream, relative to fc7, and the share of pixels the skips change.

    `streams` values are [P, C] arrays (pixels of all images stacked)."""
    spread = {name: float(np.sqrt(np.mean(np.var(_contrast(s), axis=0))))
              for name, s in streams.items()}
    base = spread["score_fr"]
    total = sum(streams.values())
    changed = np.argmax(total, axis=-1) != np.argmax(streams["score_fr"], axis=-1)
    return {"streams": {name: {"spread": spread[name],
                               "relative_to_fc7": spread[name] / base if base else float("nan")}
                        for name in streams},
            "pixels_changed_by_skips": float(np.mean(changed)),
            "num_pixels": int(total.shape[0])}


def _pad(image: np.ndarray):
    from model.inference import padded_size

    h, w = image.shape[:2]
    ph, pw = padded_size(h, w)
    return np.pad(image, ((0, ph - h), (0, pw - w), (0, 0)))


def measure(model, images, image_size) -> dict:
    """Stream contributions of `model` over uint8 `images` at `image_size` ([H, W] or
    'native'), pooled over all pixels of all images."""
    import tensorflow as tf

    from model.fcn8s import with_free_size

    if image_size == NATIVE:
        model = with_free_size(model)
    pooled: dict[str, list] = {}
    for image in images:
        if image_size == NATIVE:
            batch = _pad(image).astype(np.float32)[None]
            crop = image.shape[:2]
        else:
            batch = tf.image.resize(image.astype(np.float32)[None], tuple(image_size)).numpy()
            crop = tuple(image_size)
        for name, s in stream_logits(model, batch).items():
            s = s[0, :crop[0], :crop[1]]
            pooled.setdefault(name, []).append(s.reshape(-1, s.shape[-1]))
    return contributions({name: np.concatenate(v) for name, v in pooled.items()})


def format_table(result: dict) -> str:
    lines = [f"{'stream':<26}{'spread':>10}{'relative to fc7':>18}"]
    for name, row in result["streams"].items():
        lines.append(f"{LABELS[name]:<26}{row['spread']:>10.4g}{row['relative_to_fc7']:>18.3g}")
    lines.append(f"pixels whose class the skips change: "
                 f"{100 * result['pixels_changed_by_skips']:.2f} % of {result['num_pixels']}")
    return "\n".join(lines)


def model_from_saved_model(path):
    """Rebuild the Keras model of an fcnseg export (a model or version folder) from its
    metadata and variables; returns (model, ExportMetadata)."""
    from model.exported import load_exported
    from model.fcn8s import build_fcn8s

    exported = load_exported(path)
    meta, path = exported.metadata, exported.path
    if not meta.variant:
        raise ValueError(f"{path}: the export's metadata records no model variant (exported "
                         f"before fcnseg recorded it, possibly with fixed-scaled skips); run "
                         f"the diagnostic on its checkpoint with --checkpoint instead")
    model = build_fcn8s(int(meta.num_classes), (None, None, 3), fc_width=int(meta.fc_width),
                        normalization=meta.normalization or "caffe", variant=meta.variant)
    stored = list(exported.module.model_variables)
    if len(stored) != len(model.variables):
        raise ValueError(f"{path}: holds {len(stored)} model variables, a {meta.variant} "
                         f"with fc_width {meta.fc_width} has {len(model.variables)}")
    for var, value in zip(model.variables, stored):
        if tuple(var.shape) != tuple(value.shape):
            raise ValueError(f"{path}: variable {var.path} has shape {tuple(value.shape)}, "
                             f"expected {tuple(var.shape)}")
        var.assign(value.numpy().astype(var.dtype))
    return model, meta


def _image_paths(items) -> list[pathlib.Path]:
    paths = []
    for item in map(pathlib.Path, items):
        if item.is_dir():
            found = sorted(p for p in item.iterdir() if is_image_name(p.name))
            if not found:
                raise cli.UserError(item, "folder holds no images")
            paths.extend(found)
        elif item.is_file():
            paths.append(item)
        else:
            raise cli.UserError(item, "no such image or folder")
    return paths


def parse_args(argv=None):
    p = cli.ArgumentParser(prog="python -m model.streams", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--checkpoint", help="Keras checkpoint of model.train")
    which.add_argument("--model-dir", help="an export: a model folder (its newest version) "
                                           "or a version folder, e.g. models/fcn8s/3")
    p.add_argument("images", nargs="+", help="image files or folders")
    p.add_argument("--inference-size", nargs="+", metavar="H W | native",
                   help="geometry (default: the run's or export's image_size)")
    p.add_argument("--output", help="also write the figures to this JSON file")
    args = p.parse_args(argv)
    if args.inference_size is not None:
        args.inference_size = geometry.parse_size(args.inference_size)
    return args


def run(argv=None) -> dict:
    """Measure as the command line says; returns the figures."""
    args = parse_args(argv)
    from model import runs
    from model.data import image_io

    paths = _image_paths(args.images)  # before loading the model: fail fast on a bad name
    if args.checkpoint:
        model = runs.load_checkpoint(args.checkpoint)
        config_path = runs.run_dir_of(args.checkpoint) / runs.CONFIG
        size = runs.read_json(config_path)["image_size"] if config_path.is_file() else NATIVE
    else:
        model, meta = model_from_saved_model(args.model_dir)
        size = meta.image_size or NATIVE
    size = args.inference_size or size
    images = [image_io.read_image(p) for p in paths]
    result = measure(model, images, size)
    result.update(images=len(paths), image_size=size,
                  source=args.checkpoint or args.model_dir)
    print(f"{result['source']} on {len(paths)} images at "
          f"{size if size == NATIVE else 'x'.join(map(str, size))}")
    print(format_table(result))
    if args.output:
        runs.write_json(args.output, result)
    return result


def _main(argv) -> int:
    run(argv)
    return 0


def main(argv=None) -> int:
    return cli.run(_main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
