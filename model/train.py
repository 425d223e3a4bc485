"""Train FCN-8s: `python -m model.train --dataset kitti --data-root data/data_road ...`.

Writes a run directory (see model/runs.py): config, split, best/last checkpoints, TensorBoard
logs, CSV history, a curves plot and the final validation metrics of the best checkpoint.
"""
from __future__ import annotations

from common import cli

if __name__ == "__main__":
    cli.quiet_tensorflow()  # before anything below imports TensorFlow

import argparse
import math
import pathlib
import time

from contract.names import COCO_PROTOCOLS, KITTI_TASKS
from model import geometry, runs
from model.data import dataset_names, get_dataset


def parse_args(argv=None):
    p = cli.ArgumentParser(prog="python -m model.train", description=__doc__,
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--dataset", choices=dataset_names(), default="synthetic")
    p.add_argument("--data-root", help="kitti: the data_road folder; coco: folder with "
                   "annotations/ train2017/ val2017/; folder: folder with images/ labels/")
    p.add_argument("--task", choices=KITTI_TASKS, default="road", help="kitti task")
    p.add_argument("--categories", nargs="+", default=["all"],
                   help="coco: category names, 'all' (80) or 'voc' (20)")
    p.add_argument("--min-area-fraction", type=float, default=0.0,
                   help="coco (fcnseg protocol): drop images whose annotated area is below "
                        "this fraction")
    p.add_argument("--coco-protocol", choices=COCO_PROTOCOLS, default="fcnseg",
                   help="coco: label and filtering rules; torchvision = its segmentation "
                        "reference (comparable with its published mIoU), see docs/data.md")
    p.add_argument("--num-synthetic", type=int, default=300, help="synthetic: scenes")
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"),
                   help="training geometry, multiples of 32 (default depends on dataset)")
    p.add_argument("--variant", choices=["fcn32s", "fcn16s", "fcn8s"], default="fcn8s",
                   help="the paper's skip ablation: none, pool4, pool4+pool3")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--steps-per-epoch", type=int, help="default: one pass over the train split")
    # Defaults: Adam at 1e-4 (Udacity CarND semantic segmentation), L2 5e-4 on kernels and
    # gradient clipping at norm 1.0 (KittiSeg hypes/KittiSeg.json); see docs/training.md.
    p.add_argument("--optimizer", choices=["adam", "sgd"], default="adam",
                   help="Adam, or SGD with --momentum")
    p.add_argument("--momentum", type=float, default=0.9, help="sgd only")
    p.add_argument("--learning-rate", type=float, default=1e-4)
    p.add_argument("--lr-schedule", choices=["constant", "poly", "cosine"], default="constant",
                   help="poly: (1 - step/total)^0.9; cosine: to 0 over all steps")
    p.add_argument("--weight-decay", type=float, default=5e-4,
                   help="L2 coefficient on conv kernels (not biases, not upsampling kernels)")
    p.add_argument("--clip-norm", type=float, default=1.0,
                   help="clip the global gradient norm (0: off)")
    p.add_argument("--encoder-weights", default="imagenet",
                   help="'imagenet' (Keras download), a local VGG16 .h5 path, or 'none'")
    p.add_argument("--normalization", choices=["caffe", "torch"], default="caffe",
                   help="caffe matches Keras' ImageNet VGG16 weights")
    p.add_argument("--fc-width", type=int, default=4096)
    p.add_argument("--dropout", type=float, default=0.5)
    p.add_argument("--no-augment", action="store_true")
    p.add_argument("--crop-size", type=int, nargs=2, metavar=("H", "W"),
                   help="train on random windows of this size cut from the images at "
                        "--image-size (times the random scale); validation and inference "
                        "stay at --image-size (default: whole images)")
    p.add_argument("--mixed-precision", choices=["auto", "on", "off"], nargs="?", const="on",
                   default="off",
                   help="mixed_float16 on GPU, mixed_bfloat16 on CPU; auto: on with a GPU or "
                        "a CPU with AMX or AVX512-BF16 (where it measured 3.5x faster), off "
                        "elsewhere (bfloat16 is emulated and slower there)")
    p.add_argument("--jit-compile", choices=["auto", "on", "off"], default="auto",
                   help="XLA-compile the training step; auto: on in float32 on CPUs without "
                        "AVX-512 (where it measured faster, docs/training.md), off otherwise")
    p.add_argument("--seed", type=int, default=0,
                   help="weights, augmentation and batch order")
    p.add_argument("--data-seed", type=int, default=0,
                   help="the train/val split (and synthetic scenes): kept apart from --seed so "
                        "that runs differing in --seed are scored on the same validation pairs")
    p.add_argument("--run-dir", default="runs/fcn8s")
    p.add_argument("--cache-dir", default="cache", help="generated data and rendered masks")
    p.add_argument("--resume", action="store_true",
                   help="continue from <run-dir>/checkpoints/last.keras")
    p.add_argument("--eval-overlays", type=int, default=4,
                   help="overlay images written by the final evaluation")
    p.add_argument("--progress", type=int, default=1, choices=[0, 1, 2],
                   help="Keras' training output: 0 none, 1 a progress bar, 2 a line per epoch")
    args = p.parse_args(argv)
    if args.encoder_weights.lower() == "none":
        args.encoder_weights = None
    dataset = get_dataset(args.dataset)
    args.image_size = geometry.parse_size(args.image_size or dataset.default_image_size,
                                          "--image-size", allow_native=False)
    for flag, value in (("--batch-size", args.batch_size), ("--epochs", args.epochs),
                        ("--num-synthetic", args.num_synthetic)):
        if value < 1:
            raise cli.UserError(flag, f"must be >= 1, got {value}")
    if not 0.0 <= args.val_fraction < 1.0:
        raise cli.UserError("--val-fraction", f"must be in [0, 1), got {args.val_fraction}")
    if dataset.needs_root and not args.data_root:
        raise cli.UserError("--data-root", f"is required for --dataset {args.dataset}")
    if args.crop_size:
        args.crop_size = geometry.parse_size(args.crop_size, "--crop-size", allow_native=False)
        if args.no_augment:
            raise cli.UserError("--crop-size", "crops are an augmentation: drop --no-augment")
        if any(c > s for c, s in zip(args.crop_size, args.image_size)):
            raise cli.UserError("--crop-size", f"{args.crop_size[0]}x{args.crop_size[1]} is "
                                f"larger than --image-size {args.image_size[0]}x"
                                f"{args.image_size[1]}")
    if args.data_root and "://" not in args.data_root:
        # Absolute, so split.json and config.json mean the same files from any working
        # folder (model.evaluate, --resume); --data-root at evaluation moves them elsewhere.
        args.data_root = str(pathlib.Path(args.data_root).resolve())
    return args


def build_config(args, data) -> dict:
    dataset = get_dataset(args.dataset)
    return {
        "dataset": args.dataset, "data_root": args.data_root,
        # the KITTI task travels with the model (export metadata), so a lane model is never
        # scored as road; other datasets have none
        "task": args.task if dataset.tasks else None,
        "coco_protocol": args.coco_protocol if dataset.protocols else None,
        # COCO: the category names that classes 1..K stand for, resolved. 'voc' and 'all'
        # are requests, not names; the export copies this into its metadata, where the Beam
        # job and evaluate map annotations by these names.
        "categories": list(data.class_names[1:]) if dataset.has_categories else None,
        "class_names": list(data.class_names),
        "colours": [list(c) for c in data.colours], "label_format": data.label_format,
        "num_classes": len(data.class_names), "image_size": list(args.image_size),
        "normalization": args.normalization, "fc_width": args.fc_width,
        "dropout": args.dropout, "encoder_weights": args.encoder_weights, "seed": args.seed,
        "data_seed": args.data_seed,
        "batch_size": args.batch_size, "epochs": args.epochs, "variant": args.variant,
        "optimizer": args.optimizer, "momentum": args.momentum,
        "learning_rate": args.learning_rate, "lr_schedule": args.lr_schedule,
        "weight_decay": args.weight_decay, "clip_norm": args.clip_norm,
        "augment": not args.no_augment, "crop_size": args.crop_size,
        "mixed_precision": args.mixed_precision,
    }


def resolve_jit_compile(choice: str, mixed_precision: bool, cpu=None) -> bool:
    """Whether to XLA-compile the training step. Measured in float32 at the KITTI recipe's
    geometry (docs/results.md): XLA beat TensorFlow's oneDNN kernels with both held to AVX2
    and lost to them with AVX-512. bfloat16 (--mixed-precision) runs on oneDNN's AMX and
    AVX512-BF16 kernels, which XLA does not use."""
    if choice != "auto":
        return _on_or_off(choice, "jit-compile")
    if mixed_precision:
        return False
    cpu = cpu or _this_machine()
    return not cpu.has("avx512f")


def resolve_mixed_precision(choice: str, on_gpu: bool, cpu=None) -> bool:
    """Whether to train in mixed precision. bfloat16 pays on CPUs with AMX or AVX512-BF16
    (oneDNN's native kernels: the KITTI recipe's step 3.5x faster than float32 on a Sapphire
    Rapids, docs/results.md); without them it is emulated and slower than float32."""
    if choice != "auto":
        return _on_or_off(choice, "mixed-precision")
    if on_gpu:
        return True
    cpu = cpu or _this_machine()
    return cpu.has("amx_bf16") or cpu.has("avx512_bf16")


def _on_or_off(choice: str, what: str) -> bool:
    if choice not in ("on", "off"):
        raise ValueError(f"unknown {what} choice {choice!r}")
    return choice == "on"


def _this_machine():
    from common.cpu import this_machine

    return this_machine()


POLY_POWER = 0.9  # DeepLab's and KittiSeg's poly schedule exponent


def make_optimizer(name: str, learning_rate: float, schedule: str, total_steps: int,
                   clip_norm: float = 0.0, momentum: float = 0.9):
    import keras

    lr = learning_rate
    if schedule == "poly":
        lr = keras.optimizers.schedules.PolynomialDecay(learning_rate, max(1, total_steps),
                                                        end_learning_rate=0.0,
                                                        power=POLY_POWER)
    elif schedule == "cosine":
        lr = keras.optimizers.schedules.CosineDecay(learning_rate, max(1, total_steps))
    elif schedule != "constant":
        raise ValueError(f"unknown lr schedule {schedule!r}")
    clip = {"global_clipnorm": clip_norm} if clip_norm else {}
    if name == "adam":
        return keras.optimizers.Adam(lr, **clip)
    if name == "sgd":
        return keras.optimizers.SGD(lr, momentum=momentum, **clip)
    raise ValueError(f"unknown optimizer {name!r}")


def compile_for_training(model, num_classes: int, optimizer, jit_compile: bool = False):
    """Compile the logits view of `model` for training and `model` itself with the same
    optimizer, so that checkpoints of `model` (probabilities out) carry the optimizer state.
    `jit_compile`: XLA for the training step (resolve_jit_compile says when it pays).

    The loss is computed from logits: a loss on clipped softmax probabilities gives
    confidently wrong pixels no gradient."""
    import keras

    from contract.names import IGNORE_LABEL
    from model.fcn8s import logits_model
    from model.keras_metrics import MaskedAccuracy, MaskedCrossEntropy, iou_metric

    train_model = logits_model(model)
    train_model.compile(
        optimizer=optimizer, jit_compile=jit_compile,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True,
                                                        ignore_class=IGNORE_LABEL),
        metrics=[iou_metric(num_classes), MaskedAccuracy(), MaskedCrossEntropy()],
    )
    model.compile(optimizer=optimizer)
    return train_model


def make_callbacks(run_dir: pathlib.Path, model, best_so_far: float | None):
    """Save `model` (not the logits view that is being fitted): best.keras by validation
    IoU, last.keras with the optimizer state for --resume, and state.json."""
    import keras

    ckpt = run_dir / runs.CHECKPOINTS
    ckpt.mkdir(parents=True, exist_ok=True)

    class SaveCheckpoints(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.best = best_so_far if best_so_far is not None else -math.inf

        def on_epoch_end(self, epoch, logs=None):
            score = float((logs or {}).get("val_iou", -math.inf))
            if score > self.best:
                print(f"\nepoch {epoch + 1}: val_iou improved from {self.best:.4f} to "
                      f"{score:.4f}, saving {ckpt / runs.BEST}")
                self.best = score
                model.save(ckpt / runs.BEST)
            model.save(ckpt / runs.LAST)
            runs.write_json(ckpt / runs.STATE, {"epoch": epoch + 1, "best_val_iou": self.best})

    return [
        SaveCheckpoints(),
        keras.callbacks.CSVLogger(str(run_dir / "history.csv"), append=True),
        keras.callbacks.TensorBoard(str(run_dir / "tensorboard"), update_freq="epoch"),
    ]


def mixed_precision_policy(on_gpu: bool) -> str:
    """float16 where GPUs have fast half precision; bfloat16 on CPUs (AMX, AVX512-BF16)."""
    return "mixed_float16" if on_gpu else "mixed_bfloat16"


def run(argv=None) -> dict:
    """Train as the command line says; returns the final validation metrics."""
    args = parse_args(argv)
    import keras
    import tensorflow as tf

    from model.data import load_dataset
    from model.data.pipeline import check_pairs, make_dataset
    from model.fcn8s import build_fcn8s

    run_dir = pathlib.Path(args.run_dir)
    keras.utils.set_random_seed(args.seed)
    on_gpu = bool(tf.config.list_physical_devices("GPU"))
    mixed_precision = resolve_mixed_precision(args.mixed_precision, on_gpu)
    if mixed_precision:
        keras.mixed_precision.set_global_policy(mixed_precision_policy(on_gpu))

    if args.resume:
        config = runs.load_run_config(run_dir)
        # the checkpoint keeps its layers' dtype policies; the step follows the run's choice
        mixed_precision = bool(config.get("mixed_precision"))
        split = runs.load_split(run_dir)
        train_pairs, val_pairs = split["train"], split["val"]
        state = runs.read_json(run_dir / runs.CHECKPOINTS / runs.STATE)
        initial_epoch, best = state["epoch"], state["best_val_iou"]
        # compile=True restores the optimizer with its moments and step count.
        model = runs.load_checkpoint(runs.checkpoint_path(run_dir, "last"), compile=True)
        optimizer = model.optimizer
        print(f"resuming {run_dir} after epoch {initial_epoch} (best val_iou {best:.4f})")
    else:
        data = load_dataset(args.dataset, args.data_root, task=args.task,
                            categories=args.categories[0] if args.categories in (["all"], ["voc"])
                            else args.categories, val_fraction=args.val_fraction,
                            seed=args.data_seed, cache_dir=args.cache_dir,
                            image_size=tuple(args.image_size), num_synthetic=args.num_synthetic,
                            min_area_fraction=args.min_area_fraction,
                            coco_protocol=args.coco_protocol)
        config = build_config(args, data)
        config["mixed_precision"] = mixed_precision  # as resolved on this machine
        train_pairs = [list(map(str, p)) for p in data.train]
        val_pairs = [list(map(str, p)) for p in data.val]
        run_dir.mkdir(parents=True, exist_ok=True)
        for stale in ("history.csv",):
            (run_dir / stale).unlink(missing_ok=True)
        runs.write_run_config(run_dir, config)
        runs.write_json(run_dir / runs.SPLIT, {"train": train_pairs, "val": val_pairs})
        initial_epoch, best = 0, None
        # Crops: the graph takes any size (windows in training, whole images in validation).
        input_size = (None, None) if args.crop_size else tuple(args.image_size)
        model = build_fcn8s(config["num_classes"], (*input_size, 3),
                            fc_width=args.fc_width, dropout=args.dropout,
                            encoder_weights=args.encoder_weights,
                            normalization=args.normalization, variant=args.variant,
                            weight_decay=args.weight_decay)
        steps = args.steps_per_epoch or math.ceil(len(train_pairs) / args.batch_size)
        optimizer = make_optimizer(args.optimizer, args.learning_rate, args.lr_schedule,
                                   steps * args.epochs, args.clip_norm, args.momentum)
    jit_compile = resolve_jit_compile(args.jit_compile, mixed_precision)
    train_model = compile_for_training(model, config["num_classes"], optimizer,
                                       jit_compile=jit_compile)

    check_pairs(train_pairs + val_pairs)
    print(f"run {run_dir}: {config['dataset']} {config['class_names']}, "
          f"{len(train_pairs)} train / {len(val_pairs)} val images at "
          f"{config['image_size'][0]}x{config['image_size'][1]}, "
          f"{model.count_params() / 1e6:.1f}M parameters, XLA {'on' if jit_compile else 'off'}, "
          f"{keras.mixed_precision.global_policy().name}")
    size = tuple(config["image_size"])
    train_ds = make_dataset(train_pairs, config["label_format"], size, args.batch_size,
                            training=True, seed=args.seed, augment=not args.no_augment,
                            crop_size=config.get("crop_size"))
    val_ds = make_dataset(val_pairs, config["label_format"], size, args.batch_size,
                          training=False)
    if args.steps_per_epoch:
        train_ds = train_ds.repeat()

    start = time.time()
    train_model.fit(train_ds, validation_data=val_ds, epochs=args.epochs, shuffle=False,
                    initial_epoch=initial_epoch, steps_per_epoch=args.steps_per_epoch,
                    callbacks=make_callbacks(run_dir, model, best), verbose=args.progress)
    train_seconds = time.time() - start

    metrics = finish_run(run_dir, config, val_pairs, overlays=args.eval_overlays)
    metrics["train_seconds"] = round(train_seconds, 1)
    runs.write_json(run_dir / "metrics.json", metrics)
    from model.evaluate import format_summary

    print(format_summary(metrics))
    print(f"trained in {train_seconds:.0f} s; wrote {run_dir}/metrics.json")
    return metrics


def finish_run(run_dir: pathlib.Path, config: dict, val_pairs, overlays: int) -> dict:
    """Curves plot and the best checkpoint's validation metrics at original resolution."""
    from model.evaluate import evaluate_pairs
    from model.plots import save_training_curves

    if (run_dir / "history.csv").is_file():
        save_training_curves(run_dir / "curves.png", run_dir / "history.csv")
    checkpoint = runs.checkpoint_path(run_dir, "best")
    best = runs.load_checkpoint(checkpoint)
    # The checkpoint names the model in eval_val/'s metrics and report, as with evaluate.
    return evaluate_pairs(best, config, val_pairs, run_dir / "eval_val", overlays=overlays,
                          source={"checkpoint": str(checkpoint)})


def _main(argv) -> int:
    from model.encoder_weights import WeightsDownloadError

    try:
        run(argv)
    except WeightsDownloadError as exc:
        raise cli.UserError("--encoder-weights", exc) from None
    return 0


def main(argv=None) -> int:
    return cli.run(_main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
