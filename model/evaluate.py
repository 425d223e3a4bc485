"""Evaluate a model on its run's split, or on any data root: KITTI devkit scores or IoU.

    python -m model.evaluate --checkpoint runs/X/checkpoints/best.keras [--split val]
    python -m model.evaluate --model-dir models/fcn8s/3 [--run-dir runs/X]
    python -m model.evaluate --model-dir models/fcn8s --dataset kitti --data-root DIR [--task lane]
    python -m model.evaluate --checkpoint F --dataset coco --data-root DIR [--annotations JSON]
    python -m model.evaluate --checkpoint F --dataset folder --data-root DIR

With --dataset the model is scored on every labelled image of --data-root (or its train/val
part with --split, split as model.train does); no run directory is needed. COCO masks are
rendered for the model's own categories, in its class order.
    (--model-dir: a model folder, its newest version, or a version folder)

Writes to --output (default <run_dir>/eval_<split>/): metrics.json, pr_curve.png (binary
models) or confusion_matrix.png (other models), per-image scores (image_scores.jsonl,
image_overlays/) and report.html (model/report.py), and with --overlays overlays/<name>.png
(prediction above ground truth) for every image, as the Beam job's --overlays does. Prints a
summary table. Probabilities are computed at each image's original size (model.inference),
so KITTI is scored at full resolution.

KITTI is scored twice: in the perspective view (the camera image) and in the bird's-eye view
the benchmark ranks (model/data/kitti_bev.py, from each image's training/calib file; also
pr_curve_bev.png). --task road|lane must match the task the model was trained for.
"""
from __future__ import annotations

from common import cli

if __name__ == "__main__":
    cli.quiet_tensorflow()  # before anything below imports TensorFlow

import argparse
import pathlib
from typing import Sequence

import numpy as np
from tqdm import tqdm

from contract import layout
from contract.names import COCO_PROTOCOLS, KITTI_TASKS
from contract.records import ExportMetadata, RecordError, require_task
from model import geometry, image_scores, plots, report, runs
from model.data import (Dataset, Options, dataset_names, get_dataset, image_io, kitti_bev,
                        palette)
from model.scoreboard import Scoreboard

KITTI_KEYS = ("MaxF", "AP", "PRE", "REC", "FPR", "FNR", "IoU")


def resolve_pairs(pairs: Sequence[Sequence[str]], config: dict,
                  data_root: str | None = None) -> list[tuple[pathlib.Path, pathlib.Path]]:
    """Image/label paths of a split. Relative paths are under the data root; with `data_root`
    given, absolute paths under the run's recorded data_root are moved under it (a run trained
    on another machine)."""
    recorded = config.get("data_root")
    root = pathlib.Path(data_root or recorded or ".")
    resolved = []
    for pair in pairs:
        if len(pair) != 2:
            raise ValueError(f"split entry {pair!r}: expected [image, label]")
        out = []
        for p in pair:
            path = pathlib.Path(p)
            if not path.is_absolute():
                path = root / path
            elif data_root and recorded:
                try:
                    path = pathlib.Path(data_root) / path.relative_to(recorded)
                except ValueError:
                    pass
            out.append(path)
        resolved.append((out[0], out[1]))
    return resolved


def _argmax(prob: np.ndarray) -> np.ndarray:
    if prob.shape[-1] == 2:  # 4x faster than argmax; ties go to class 0 as with argmax
        return (prob[..., 1] > prob[..., 0]).astype(np.uint8)
    return np.argmax(prob, axis=-1).astype(np.uint8)


def _calib_files(pairs, dataset: Dataset, task) -> dict:
    """image -> its calibration file, or FileNotFoundError naming every missing one."""
    calibs = {image: pathlib.Path(dataset.calibration_path(str(image), task) or
                                  f"{image} (no calibration for this image name)")
              for image, _ in pairs}
    missing = sorted(str(c) for c in calibs.values() if not c.is_file())
    if missing:
        shown = ", ".join(missing[:5]) + (f" ... ({len(missing)} in all)" if len(missing) > 5 else "")
        raise FileNotFoundError(f"bird's-eye-view scores need each image's calibration; "
                                f"missing {shown} (or pass --no-bev for the perspective view "
                                f"only)")
    return calibs


def evaluate_pairs(model, config: dict, pairs, out_dir, overlays: int = 8,
                   batch_size: int = 4, source: dict | None = None, bev: bool = True,
                   dataset: Dataset | None = None) -> dict:
    """Score a model on (image, label) path pairs at original resolution.

    model: a keras.Model (run at config["image_size"] via model.inference), or any predictor
    callable taking a list of uint8 images and returning [H, W, C] probabilities (e.g.
    `inference.saved_model_predictor`). Writes out_dir/metrics.json, the PR curve or the
    confusion matrix, and `overlays` overlay PNGs; returns the metrics dict. KITTI is also
    scored in the bird's-eye view unless `bev` is False ("kitti_bev", pr_curve_bev.png).
    `dataset`: the registry entry the pairs come from (default: the model's, config's
    "dataset"); it reads the labels and says how scores are grouped.
    """
    from model import inference  # TensorFlow import only where a model is actually run

    if hasattr(model, "predict_on_batch"):
        predict = inference.keras_predictor(model, config["image_size"], batch_size)
    elif callable(model):
        predict = model
    else:
        raise TypeError(f"model must be a keras.Model or a predictor callable, got {type(model)}")
    pairs = [(pathlib.Path(image), pathlib.Path(label)) for image, label in pairs]
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    class_names = list(config["class_names"])
    num_classes = len(class_names)
    colours = config.get("colours")
    dataset = dataset or get_dataset(config["dataset"])
    # Any binary model (KITTI, synthetic roads, a two-class folder) gets the devkit's road
    # scores with class 1 as positive; only KITTI images are also grouped by category.
    if dataset.by_category and num_classes != 2:
        raise ValueError(f"{dataset.name} evaluation needs a binary model, config has "
                         f"{num_classes} classes")
    if not pairs:
        raise ValueError("no images to evaluate (empty split)")
    bev = bev and dataset.bird_eye_view
    task = dataset.task_of(config.get("task"), None)
    # before any work: a missing calibration file stops here
    calibs = _calib_files(pairs, dataset, task) if bev else {}

    board = Scoreboard(class_names, by_category=dataset.by_category)
    overlays_written = 0
    scored = image_scores.Writer(out_dir)  # per-image scores and overlays for report.html
    with tqdm(total=len(pairs), desc="evaluate", unit="img") as progress:
        for start in range(0, len(pairs), batch_size):
            chunk = pairs[start:start + batch_size]
            images = [image_io.read_image(image_path) for image_path, _ in chunk]
            probs = predict(images)
            for (image_path, label_path), image, prob in zip(chunk, images, probs):
                label = dataset.read_label(label_path)
                if label.shape != image.shape[:2]:
                    raise ValueError(f"{label_path}: label is {label.shape[1]}x{label.shape[0]} "
                                     f"but image {image_path} is "
                                     f"{image.shape[1]}x{image.shape[0]}")
                if prob.shape != (*image.shape[:2], num_classes):
                    raise ValueError(f"{image_path}: model returned {prob.shape}, expected "
                                     f"{(*image.shape[:2], num_classes)}")
                pred = _argmax(prob)
                table = (kitti_bev.lookup_for_file(calibs[image_path], label.shape)
                         if bev else None)
                category = dataset.category_of(image_path)
                road_confidence = prob[..., 1] if board.road_scores else None
                board.add(pred, label, road_confidence=road_confidence, category=category,
                          bev_table=table)
                scored.score(image_path.stem, image, label, class_names,
                             confidence=road_confidence, class_ids=pred, bev_table=table,
                             category=category, path=str(image_path))
                if overlays_written < overlays:
                    plots.save_overlay(out_dir / "overlays" / f"{image_path.stem}.png",
                                       image, pred, colours or palette(num_classes),
                                       ground_truth=label)
                    overlays_written += 1
                progress.update(1)

    for name, draw, draw_args, draw_kwargs in board.figures():
        draw(out_dir / name, *draw_args, **draw_kwargs)
    fields = {"task": task} if dataset.tasks else {}
    if dataset.protocols:
        fields["coco_protocol"] = config.get("coco_protocol") or dataset.protocols[0]
    result = board.result(label_format=dataset.label_format, **fields, **(source or {}))
    runs.write_json(out_dir / "metrics.json", result)
    scored.close()
    report.write_run_info(out_dir, model=report.model_description(config, source),
                          dataset=(source or {}).get("dataset") or config.get("dataset"),
                          seconds={"run": scored.run_seconds, "report": scored.seconds})
    report.build(out_dir)
    return result


def _coco_protocol_pairs(config: dict, pairs, args):
    """The split's images with masks of --coco-protocol (rendered when it is not the run's).

    torchvision filters only its training images, so --split train may lose some images
    under it; validation keeps every image under both protocols.
    """
    from model.data import coco

    trained = config.get("coco_protocol") or coco.DEFAULT_PROTOCOL
    wanted = args.coco_protocol or trained
    if wanted == trained:
        return {**config, "coco_protocol": trained}, pairs
    root = pathlib.Path(args.data_root or config["data_root"])
    folder = "train2017" if args.split == "train" else "val2017"
    rendered = coco.render_masks(coco.find_annotation_file(root, folder), root / folder,
                                 args.cache_dir, categories=_coco_categories(config),
                                 protocol=wanted, train=args.split == "train")
    masks = {pathlib.Path(image).name: pathlib.Path(mask) for image, mask in rendered}
    keep = [(image, masks[pathlib.Path(image).name]) for image, _ in pairs
            if pathlib.Path(image).name in masks]
    return {**config, "coco_protocol": wanted}, keep


def _coco_categories(config: dict):
    """The category request train used ('all', 'voc' or a list of names)."""
    cats = config.get("categories") or ["all"]
    if isinstance(cats, str):
        return cats
    return cats[0] if list(cats) in (["all"], ["voc"]) else list(cats)


def format_summary(result: dict) -> str:
    lines = []
    if result.get("coco_protocol"):
        lines.append(f"COCO masks: {result['coco_protocol']} protocol (docs/data.md says "
                     f"which published figures each compares with)")
    task = result.get("task", "road")
    views = (("kitti", "perspective view"),
             ("kitti_bev", "bird's-eye view, as the benchmark ranks"))
    for key, view in views:
        if key not in result:
            continue
        lines.append(f"{task.capitalize()} scores (KITTI devkit method, {view}; values in %)")
        lines.append(f"{'category':<10}{'images':>7}" + "".join(f"{k:>8}" for k in KITTI_KEYS)
                     + f"{'thresh':>8}")
        for name, scores in result[key].items():
            cells = "".join(f"{_pct(scores[k]):>8}" for k in KITTI_KEYS)
            thresh = scores["threshold"]
            lines.append(f"{name:<10}{scores['num_images']:>7}{cells}"
                         f"{'-' if thresh is None else f'{thresh:.3f}':>8}")
        lines.append("")
    lines.append(f"mean IoU {_pct(result['mean_iou'])}%   pixel accuracy "
                 f"{_pct(result['pixel_accuracy'])}%   mean accuracy "
                 f"{_pct(result['mean_accuracy'])}%   ({result['split_size']} images)")
    per_class = sorted(result["per_class_iou"].items(),
                       key=lambda kv: -1 if kv[1] is None else kv[1], reverse=True)
    width = max(len(name) for name, _ in per_class)
    lines.append("per-class IoU (%):")
    for name, iou in per_class:
        lines.append(f"  {name:<{width}} {_pct(iou):>7}")
    return "\n".join(lines)


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def parse_args(argv=None) -> argparse.Namespace:
    parser = cli.ArgumentParser(prog="python -m model.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--checkpoint", help="Keras checkpoint, e.g. runs/X/checkpoints/best.keras")
    which.add_argument("--model-dir", help="an export: a model folder (its newest version), "
                                           "e.g. models/fcn8s, or a version folder models/fcn8s/3")
    parser.add_argument("--run-dir", help="training run directory (default: from the checkpoint "
                                          "path or the SavedModel metadata)")
    parser.add_argument("--dataset", choices=[n for n in dataset_names()
                                              if get_dataset(n).needs_root],
                        help="score on this dataset at --data-root instead of the run's split")
    parser.add_argument("--split", choices=("val", "train", "all"),
                        help="default: val of the run's split; with --dataset: all")
    parser.add_argument("--data-root", help="with --dataset: the dataset folder (kitti: "
                        "data_road; coco: with annotations/ and <split>2017/, or an image "
                        "folder with --annotations; folder: with images/ labels/); without: "
                        "the run's dataset root, if it moved since training")
    parser.add_argument("--annotations", help="coco: instances JSON (default: "
                        "<data-root>/annotations/instances_val2017*.json)")
    parser.add_argument("--categories", nargs="+",
                        help="coco: category names of classes 1..K (default: the model's)")
    parser.add_argument("--seed", type=int, default=0,
                        help="with --dataset and --split train|val: the split's seed")
    parser.add_argument("--val-fraction", type=float, default=0.2,
                        help="with --dataset and --split train|val")
    parser.add_argument("--inference-size", nargs="+", metavar="H W | native",
                        help="checkpoint only: geometry to run at (default: the training "
                             "size; a SavedModel infers at its export's inference_size)")
    parser.add_argument("--output", help="output folder (default <run_dir>/eval_<split>, "
                                         "with --dataset eval_<dataset>_<split>)")
    parser.add_argument("--overlays", action="store_true",
                        help="also write overlays/<name>.png for every image (prediction "
                             "above ground truth), as the Beam job's --overlays")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--task", choices=KITTI_TASKS,
                        help="KITTI task; must be the one the model was trained for (default: "
                             "the model's)")
    parser.add_argument("--bev", action=argparse.BooleanOptionalAction, default=True,
                        help="KITTI: also score in the bird's-eye view (needs training/calib)")
    parser.add_argument("--coco-protocol", choices=COCO_PROTOCOLS,
                        help="COCO: score against masks of these label rules (default: the "
                             "run's); another protocol re-renders the split's masks")
    parser.add_argument("--cache-dir", default="cache",
                        help="COCO: where masks of another protocol (or of --dataset coco) are "
                             "rendered; folder: converted labels")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        raise cli.UserError("--batch-size", f"must be >= 1, got {args.batch_size}")
    if args.dataset and not args.data_root:
        raise cli.UserError("--dataset", f"{args.dataset} needs --data-root")
    if not args.dataset and (args.annotations or args.categories):
        raise cli.UserError("--annotations/--categories", "go with --dataset coco")
    if args.split is None:
        args.split = "all" if args.dataset else "val"
    elif args.split == "all" and not args.dataset:
        raise cli.UserError("--split all", "goes with --dataset (a run's split has train and "
                                           "val)")
    if args.inference_size is not None:
        if args.model_dir:
            raise cli.UserError("--inference-size", "is for --checkpoint; a SavedModel infers "
                                "at its export's inference_size (python -m export "
                                "--inference-size)")
        args.inference_size = geometry.parse_size(args.inference_size)
    return args


def dataset_pairs(args, config: dict, dataset: Dataset) -> list:
    """(image, label) pairs of --dataset at --data-root, split as model.train splits it."""
    task = dataset.task_of(config.get("task"), args.task)
    categories = (list(args.categories or config.get("categories")
                       or list(config["class_names"][1:])) if dataset.has_categories else "all")
    protocol = args.coco_protocol or config.get("coco_protocol") or (
        dataset.protocols[0] if dataset.protocols else None)
    options = Options(task=task or "road", categories=categories,
                      coco_protocol=protocol or "fcnseg", val_fraction=args.val_fraction,
                      seed=args.seed, cache_dir=args.cache_dir, annotations=args.annotations)
    if dataset.protocols:
        config["coco_protocol"] = protocol
    try:
        return dataset.labelled_pairs(args.data_root, args.split, options,
                                      num_classes=len(config["class_names"]))
    except ValueError as exc:  # labels or categories the model's classes do not fit
        raise cli.UserError(args.data_root, exc) from None


def _model_and_config(args):
    """(model or predictor, config, run_dir or None, source) of --checkpoint/--model-dir.
    Paths are checked before TensorFlow is imported (model.inference), so that a user error
    is answered at once."""
    needs_run = not args.dataset  # the run's split is read from its directory
    if args.checkpoint:
        run_dir = pathlib.Path(args.run_dir) if args.run_dir else runs.run_dir_of(args.checkpoint)
        if (run_dir / runs.CONFIG).is_file() or needs_run:
            config = runs.load_run_config(run_dir)
        else:
            raise cli.UserError(run_dir / runs.CONFIG, "not found; the checkpoint's class "
                                "names come from its run's config (pass --run-dir)")
        from model import inference

        model = runs.load_checkpoint(args.checkpoint)
        model = inference.keras_predictor(model, args.inference_size or config["image_size"],
                                          args.batch_size)
        source = {"checkpoint": str(args.checkpoint)}
        if args.inference_size:
            source["inference_size"] = args.inference_size
        return model, config, run_dir, source
    try:
        version_dir = layout.resolve_version_dir(args.model_dir)
    except FileNotFoundError as exc:
        raise cli.UserError(args.model_dir, f"no exported model here ({exc})") from None
    metadata = ExportMetadata.of_version(version_dir)
    run_dir = args.run_dir or metadata.run_dir
    if not run_dir and needs_run:
        raise cli.UserError(version_dir, "metadata names no run directory; pass --run-dir, "
                            "or score it on a data root with --dataset")
    run_dir = pathlib.Path(run_dir) if run_dir else None
    # The run's config is the reference (it has data_root); the metadata carries the
    # same model keys for a model whose run directory is gone.
    config = (runs.load_run_config(run_dir) if run_dir and (run_dir / runs.CONFIG).is_file()
              else metadata.to_dict())
    from model import inference

    model = inference.saved_model_predictor(version_dir, args.batch_size)
    return model, config, run_dir, {"saved_model": str(version_dir),
                                    "inference_size": metadata.inference_size}


def run(argv=None) -> dict:
    """Score as the command line says; returns the metrics (also in metrics.json)."""
    args = parse_args(argv)
    model, config, run_dir, source = _model_and_config(args)
    try:
        require_task(config.get("task"), args.task, str(args.checkpoint or args.model_dir))
    except RecordError as exc:
        raise cli.UserError("--task", exc) from None
    if args.dataset:
        config = dict(config)
        dataset = get_dataset(args.dataset)
        pairs = dataset_pairs(args, config, dataset)
        name = f"eval_{args.dataset}_{args.split}"
        out_dir = (pathlib.Path(args.output) if args.output
                   else (run_dir or pathlib.Path(".")) / name)
        source.update(dataset=args.dataset, data_root=str(args.data_root), split=args.split)
    else:
        split = runs.load_split(run_dir)
        if args.split not in split:
            raise cli.UserError(run_dir / runs.SPLIT, f"has no {args.split!r} split (has "
                                                      f"{sorted(split)})")
        pairs = resolve_pairs(split[args.split], config, args.data_root)
        dataset = get_dataset(config["dataset"])
        if dataset.protocols:
            config, pairs = _coco_protocol_pairs(config, pairs, args)
        out_dir = pathlib.Path(args.output) if args.output else run_dir / f"eval_{args.split}"
        source.update(run_dir=str(run_dir), split=args.split)
    if not pairs:
        raise cli.UserError("--split", f"{args.split}: no images to evaluate")
    result = evaluate_pairs(model, config, pairs, out_dir, len(pairs) if args.overlays else 0,
                            args.batch_size, source, bev=args.bev, dataset=dataset)
    print(format_summary(result))
    print(f"wrote {out_dir}/metrics.json")
    return result


def _main(argv) -> int:
    run(argv)
    return 0


def main(argv=None) -> int:
    return cli.run(_main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
