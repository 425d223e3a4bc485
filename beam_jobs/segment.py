"""Batch segmentation with Apache Beam: images in, masks + results + dead letters (+ metrics) out.

    python -m beam_jobs.segment --input '../shared/data/kitti_road/training/image_2/*.png' \\
        --output out/kitti --dataset kitti --mode inprocess --model-dir models/fcn8s

    python -m beam_jobs.segment --input ... --output ... --dataset kitti \\
        --mode grpc --server localhost:8500 --model-name fcn8s

Each run writes into <output>/runs/<run id>/ and is published (<output>/LATEST, and the
<output>/latest symlink on local disks) only when it succeeds. Every input file ends up in
exactly one of its results-*.jsonl and dead_letter-*.jsonl. See docs/beam.md for outputs,
runners (Direct, Portable, Dataflow, Flink, Spark), storage and options.

KITTI (--task road|lane, default the model's): confidence/<cat>_<task>_<n>.png holds the
perspective confidence maps, kitti_submission/ the same maps in the benchmark's bird's-eye
view (what the benchmark wants uploaded; --submission-zip zips them); scores in both views.
"""
from __future__ import annotations

import sys

from common import cli

if __name__ == "__main__":
    cli.quiet_tensorflow()  # before anything below loads TensorFlow

import argparse
import json
import logging
import os
import time
from typing import Optional

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems
from apache_beam.ml.inference.base import PredictionResult, RunInference
from apache_beam.options.pipeline_options import (PipelineOptions, SetupOptions,
                                                  StandardOptions)

from beam_jobs import evaluation, outputs, runners, sources
from contract.names import COCO_PROTOCOLS, KITTI_TASKS
from contract.records import require_task
from model import backends, batch_size
from model.data import colours_for, get_dataset
from model.data.image_io import decode_image_bytes
from beam_jobs.handlers import (InferenceFailure, SavedModelHandler, Segmentation,
                                TFServingHandler, read_model_metadata)
from beam_jobs.sources import DeadLetter, ImageItem
from beam_jobs.validate import DEFAULT_MAX_PIXELS, ValidateImages

_LOGGER = logging.getLogger("beam_jobs.segment")
NAMESPACE = "fcnseg"
PROGRESS_EVERY = 50


def build_parser() -> argparse.ArgumentParser:
    # allow_abbrev=False: unknown options go to Beam, so a prefix must not be taken for one
    # of ours (Dataflow's --labels team=vision would otherwise become --labels-dir).
    p = cli.ArgumentParser(
        prog="python -m beam_jobs.segment", allow_abbrev=False,
        description="Segment images with an exported FCN-8s SavedModel (in process) or TF "
                    "Serving (gRPC). Unknown options go to Beam (--runner, "
                    "--direct_num_workers, Dataflow options, ...).")
    p.add_argument("--input", required=True,
                   help="file pattern or folder (local or gs://); for kitti the data_road root "
                        "works too; for coco the image folder (or a pattern inside it)")
    p.add_argument("--output", required=True,
                   help="output folder (local, gs:// or s3://); each run goes to "
                        "<output>/runs/<run id>, published in <output>/LATEST when it succeeds")
    p.add_argument("--dataset", choices=sources.datasets(), default="folder")
    p.add_argument("--annotations", help="coco: instances_*.json giving images and ground truth")
    p.add_argument("--labels-dir", help="folder: ground-truth class-id PNGs named <stem>.png")
    p.add_argument("--task", choices=KITTI_TASKS,
                   help="kitti: road or lane (um only); must be the model's task (default: "
                        "the model's, else road)")
    p.add_argument("--coco-protocol", choices=COCO_PROTOCOLS,
                   help="coco: label rules of the ground truth, fcnseg or torchvision "
                        "(default: the model's, else fcnseg); see docs/data.md")
    p.add_argument("--submission-zip", nargs="?", const="", metavar="PATH",
                   help="kitti: also zip kitti_submission/ for upload (default PATH "
                        f"{outputs.SUBMISSION_ZIP} in the run's folder)")
    p.add_argument("--mode", choices=("inprocess", "grpc"), default="inprocess")
    p.add_argument("--model-dir", help="inprocess: exported version folder (models/fcn8s/3) or "
                                       "model folder (newest version); grpc: optional, for class "
                                       "names and colours")
    p.add_argument("--server", help="grpc: TF Serving host:port")
    p.add_argument("--model-name", help="grpc: served model name")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--model-version", type=int, help="grpc: pin a version")
    g.add_argument("--model-label", help="grpc: pin a version label (stable, canary)")
    p.add_argument("--overlays", action="store_true", help="also write overlays/<stem>.png")
    p.add_argument("--evaluate", action=argparse.BooleanOptionalAction, default=True,
                   help="score against ground truth where it exists (default on)")
    p.add_argument("--batch-size", type=batch_size.batch_size_or_auto, default=8,
                   help="max images per model call, or 'auto' (inprocess): batches of "
                        f"{max(batch_size.CANDIDATES)} run in calls of the size that measured "
                        "fastest on the worker (probed once per worker process, logged)")
    p.add_argument("--min-batch-size", type=int, default=None,
                   help="smallest batch Beam's adaptive batching may send (default: "
                        "--batch-size, i.e. fixed batches; a bundle's last batch may be smaller)")
    p.add_argument("--max-batch-bytes", type=int, default=None,
                   help="max encoded bytes per call (default: whole batches; grpc: a request "
                        "refused as too large is split and later ones kept under the limit)")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                   help="images with more pixels are dead-lettered (default %(default)s)")
    p.add_argument("--model-copies", type=int, default=None,
                   help="inprocess: load this many copies per machine, shared across worker "
                        "processes (default: one per process, shared by its threads)")
    p.add_argument("--device", help="inprocess: TF device, e.g. /GPU:0 (default: TF's choice)")
    p.add_argument("--backend", choices=backends.BACKENDS, default=backends.TENSORFLOW,
                   help="inprocess: the runtime; openvino converts the export on load "
                        "(docs/beam.md)")
    p.add_argument("--timeout", type=float, default=60.0, help="grpc: deadline per request (s)")
    # --retries means what it means for serving.client: gRPC's own retries while the server
    # is UNAVAILABLE. What still fails after them (a server restart longer than the client's
    # backoff) is retried by Beam's RemoteModelHandler, --batch-retries times.
    p.add_argument("--retries", type=int, default=4,
                   help="grpc: retries while the server is UNAVAILABLE (gRPC's retryPolicy, at "
                        "most 4), as in serving.client")
    p.add_argument("--batch-retries", type=int, default=5,
                   help="grpc: Beam-level retries of a batch that still failed, with backoff")
    return p


def _check_args(args, parser) -> None:
    if args.mode == "inprocess" and not args.model_dir:
        parser.error("--mode inprocess needs --model-dir")
    if args.mode == "grpc" and not (args.server and args.model_name):
        parser.error("--mode grpc needs --server and --model-name")
    dataset = get_dataset(args.dataset)
    if dataset.lists_annotations and not args.annotations:
        parser.error(f"--dataset {args.dataset} needs --annotations")
    if not dataset.tasks and (args.task or args.submission_zip is not None):
        parser.error(f"--task and --submission-zip are for a dataset with tasks, not "
                     f"{args.dataset}")
    if not dataset.protocols and args.coco_protocol:
        parser.error(f"--coco-protocol is for a dataset with label protocols, not "
                     f"{args.dataset}")
    args.call_size = None
    if args.batch_size == batch_size.AUTO:
        if args.mode != "inprocess":
            parser.error("--batch-size auto is for --mode inprocess")
        args.call_size, args.batch_size = batch_size.AUTO, max(batch_size.CANDIDATES)
    if args.backend != backends.TENSORFLOW and args.mode != "inprocess":
        parser.error("--backend is for --mode inprocess")
    if args.min_batch_size is None:
        args.min_batch_size = args.batch_size
    if args.batch_size < 1 or args.min_batch_size < 1 or args.min_batch_size > args.batch_size:
        parser.error("need 1 <= --min-batch-size <= --batch-size")


def resolve_classes(args, meta: dict, coco_meta: Optional[dict]) -> dict:
    """Class names, colours and (coco) category mapping, from the model's metadata when known."""
    names = list(meta.get("class_names") or [])
    categories = meta.get("categories") or "all"
    if categories in (["all"], ["voc"]):  # exports made before train stored resolved names
        categories = categories[0]
    coco_map = None
    dataset = get_dataset(args.dataset)
    if dataset.has_categories:
        from types import SimpleNamespace

        from model.data.coco import select_categories
        cat_ids, coco_names = select_categories(SimpleNamespace(dataset=coco_meta), categories)
        if names and len(names) != len(coco_names):
            raise ValueError(f"the model has {len(names)} classes but its categories "
                             f"{categories!r} give {len(coco_names)} labels for "
                             f"{args.annotations}: was it trained on COCO?")
        names = names or coco_names
        coco_map = {"categories": coco_meta["categories"],
                    "cat_id_to_label": {cid: i + 1 for i, cid in enumerate(cat_ids)},
                    "protocol": (args.coco_protocol or meta.get("coco_protocol")
                                 or "fcnseg")}
    names = names or dataset.default_class_names(args.task)
    colours = meta.get("colours") or None
    if names and (not colours or len(colours) != len(names)):
        colours = colours_for(names)
    return {"class_names": names, "colours": colours, "coco": coco_map}


class FinishImage(beam.DoFn):
    """PredictionResult -> result record + files, or a dead letter; evaluation statistics.

    An image gets its outputs only once everything about it is known to be right (inference
    succeeded, ground truth readable and of the image's size), so each input ends in exactly
    one of the results and the dead letters. Only what is wrong with the input becomes a dead
    letter; a failed write (a full disk, a storage 503) is the job's problem and propagates,
    so that the runner retries the bundle and the image still comes out.
    """

    def __init__(self, output: str, dataset: str, classes: dict, overlays: bool,
                 evaluate: bool, task: str = "road"):
        self.output = output
        self.dataset = dataset
        self.task = task
        self.classes = classes
        self.overlays = overlays
        self.evaluate = evaluate
        self.board = evaluation.Scoreboard(classes["class_names"])  # its label check
        self.ok = beam.metrics.Metrics.counter(NAMESPACE, "images_ok")
        self.evaluated = beam.metrics.Metrics.counter(NAMESPACE, "images_evaluated")
        self.failed = {s: beam.metrics.Metrics.counter(NAMESPACE, f"failed_{s}")
                       for s in ("inference", "calibration", "ground_truth")}
        self.latency = beam.metrics.Metrics.distribution(NAMESPACE, "batch_latency_ms")

    def setup(self):
        self._done, self._start = 0, time.perf_counter()

    def _progress(self):
        # Beam shows no progress of its own on local runners; a line every 50 images per
        # worker does (Dataflow has its own UI).
        self._done += 1
        if self._done % PROGRESS_EVERY == 0:
            rate = self._done / max(time.perf_counter() - self._start, 1e-9)
            _LOGGER.info("segmented %d images in this worker (%.2f images/s)", self._done, rate)

    def _dead(self, item: ImageItem, stage: str, reason: str):
        self.failed[stage].inc()
        return beam.pvalue.TaggedOutput("dead", DeadLetter(item.path, stage, reason))

    def process(self, result: PredictionResult):
        item: ImageItem = result.example
        seg = result.inference
        if isinstance(seg, InferenceFailure):
            yield self._dead(item, "inference", seg.reason)
            return
        if seg.class_ids.shape != (item.height, item.width):
            yield self._dead(item, "inference", f"model returned a {seg.class_ids.shape[1]}x"
                             f"{seg.class_ids.shape[0]} mask for a {item.width}x{item.height} "
                             f"image")
            return
        label = None
        if self.evaluate and item.gt is not None:
            try:
                label = evaluation.load_label(item.gt, self.classes["coco"])
            except (evaluation.GroundTruthError, ValueError) as exc:
                yield self._dead(item, "ground_truth", str(exc))
                return
            if label.shape != (item.height, item.width):
                where = item.gt.path or "annotations"
                yield self._dead(item, "ground_truth",
                                 f"ground truth {where} is {label.shape[1]}x{label.shape[0]} "
                                 f"but the image is {item.width}x{item.height}")
                return
        table = confidence = None
        if item.calib is not None and len(self.classes["class_names"]) == 2:
            from model.data import kitti, kitti_bev
            try:
                table = kitti_bev.lookup(kitti.parse_calib(item.calib, item.calib_path),
                                         (item.height, item.width))
            except ValueError as exc:
                yield self._dead(item, "calibration", str(exc))
                return
            confidence = evaluation.decode_confidence(seg.confidence_png)
        scored = None
        if label is not None:
            try:
                self.board.check_label(label)
            except ValueError as exc:  # label values the model's classes do not cover
                yield self._dead(item, "ground_truth", f"{item.gt.path or 'annotations'}: {exc}")
                return
            scored = evaluation.ScoredImage(
                seg.class_ids, label, self._road_confidence(seg, confidence), item.category,
                table)
        # I/O errors propagate: the runner retries the bundle (a dead letter would drop the
        # image on a transient storage error and let the job "succeed").
        # Decoded once for what needs the pixels: the overlay file and the report's thumbnail.
        image = (decode_image_bytes(item.data, item.path)
                 if self.overlays or scored is not None else None)
        files = self._write(item, seg, label, table, confidence, image)
        self.ok.inc()
        self._progress()
        self.latency.update(int(seg.latency_ms))
        if scored is not None:
            self.evaluated.inc()
            yield beam.pvalue.TaggedOutput("scored", scored)
            yield beam.pvalue.TaggedOutput("image_scores", self._image_scores(
                item, image, scored))
        if "kitti_submission" in files:
            yield beam.pvalue.TaggedOutput("submission", files["kitti_submission"])
        yield json.dumps(self._record(item, seg, files, label is not None), sort_keys=True)

    def _road_confidence(self, seg: Segmentation, decoded):
        if not self.board.road_scores:
            return None
        return evaluation.decode_confidence(seg.confidence_png) if decoded is None else decoded

    def _write(self, item: ImageItem, seg: Segmentation, label, table=None,
               confidence=None, image=None) -> dict:
        stem = sources.stem_of(item.path)
        files = {"mask": FileSystems.join(self.output, outputs.MASKS, stem + ".png")}
        outputs.write_bytes(files["mask"], seg.mask_png)
        submission = get_dataset(self.dataset).submission_name(item.path, self.task)
        if table is not None and submission:
            from model.data import kitti_bev
            # perspective map as the model wrote it; the upload is its bird's-eye view
            files["confidence"] = FileSystems.join(self.output, outputs.CONFIDENCE_MAPS,
                                                   submission)
            outputs.write_bytes(files["confidence"], seg.confidence_png)
            files["kitti_submission"] = FileSystems.join(self.output, outputs.SUBMISSION,
                                                         submission)
            outputs.write_bytes(files["kitti_submission"], outputs.png_bytes(
                kitti_bev.confidence_to_bev(confidence, table), compress_level=6))
        if self.overlays:
            from model import plots
            picture = plots.overlay(image, seg.class_ids, self.classes["colours"])
            if label is not None:  # ground truth below the prediction, as model.plots does
                picture = np.concatenate(
                    [picture, plots.overlay(image, label, self.classes["colours"])], axis=0)
            files["overlay"] = FileSystems.join(self.output, outputs.OVERLAYS, stem + ".png")
            outputs.write_bytes(files["overlay"], outputs.png_bytes(picture))
        return files

    def _image_scores(self, item: ImageItem, image, scored) -> str:
        """The image's line of image_scores-*.jsonl (model.image_scores, as model.evaluate
        writes it) and its error overlays, for report.html."""
        from model import image_scores

        record, files = image_scores.score_image(
            sources.stem_of(item.path), image, scored.label, self.classes["class_names"],
            confidence=scored.road_confidence, class_ids=scored.prediction,
            bev_table=scored.bev_table, category=item.category, path=item.path)
        for relative, data in files.items():
            outputs.write_bytes(FileSystems.join(self.output, relative), data)
        return image_scores.to_json_line(record)

    def _record(self, item, seg, files, evaluated) -> dict:
        counts = np.bincount(seg.class_ids.ravel(), minlength=256)
        total = max(int(seg.class_ids.size), 1)
        names = self.classes["class_names"]
        fractions = {(names[i] if i < len(names) else str(i)): round(int(c) / total, 6)
                     for i, c in enumerate(counts) if c}
        return {"path": item.path, "width": item.width, "height": item.height,
                "category": item.category, "class_fractions": fractions,
                "model_name": seg.model_name, "model_version": seg.model_version,
                "latency_ms": round(seg.latency_ms / max(seg.batch_size, 1), 3),
                "batch_latency_ms": round(seg.latency_ms, 3), "batch_size": seg.batch_size,
                "evaluated": evaluated, **files}


def _failed_batch_to_dead(failed):
    """RunInference's dead letters are whole batches with the exception: one per image."""
    batch, (exc_type, exc_repr, _tb) = failed
    for item in batch:
        yield DeadLetter(item.path, "inference", f"{exc_type.__name__}: {exc_repr}"[:500])


def _write_summary(counts: dict, output: str) -> None:
    dead_by_stage: dict[str, int] = {}
    for stage, n in counts.get("dead_by_stage", []):
        dead_by_stage[stage] = n
    failed = sum(dead_by_stage.values())
    ok = counts.get("ok", 0)
    outputs.write_json(FileSystems.join(output, outputs.SUMMARY), {
        "images_in": ok + failed, "ok": ok, "failed": failed,
        "failed_by_stage": dead_by_stage})


def build_pipeline(p: beam.Pipeline, args, handler, classes: dict, output: str) -> dict:
    """The job's graph; everything it writes goes under `output` (this run's folder).

    Returns its named PCollections: "results" (one JSON record per image), "dead_letters"
    (DeadLetter), "scores" (the metrics.json record; only with evaluation)."""
    pattern = sources.expand_input(args.input, args.dataset, args.task or "road")
    read = p | "Read" >> sources.ReadImages(args.dataset, pattern, args.annotations,
                                            args.labels_dir, task=args.task or "road")
    checked = read.items | "Validate" >> beam.ParDo(
        ValidateImages(args.max_pixels)).with_outputs("dead", main="ok")
    predictions, dlq = (checked.ok
                        | "Segment" >> RunInference(handler).with_exception_handling())
    failed_batches = dlq.failed_inferences | "FailedBatches" >> beam.FlatMap(
        _failed_batch_to_dead)
    finished = predictions | "Finish" >> beam.ParDo(FinishImage(
        output, args.dataset, classes, args.overlays, args.evaluate,
        args.task or "road")).with_outputs("dead", "scored", "submission", "image_scores",
                                           main="results")
    if args.submission_zip is not None:
        zip_path = args.submission_zip or FileSystems.join(output, outputs.SUBMISSION_ZIP)
        _ = (finished.submission
             | "SubmissionFiles" >> beam.combiners.ToList()
             | "WriteSubmissionZip" >> beam.Map(
                 lambda files: outputs.write_submission_zip(zip_path, files)))

    dead = ((read.dead, checked.dead, failed_batches, finished.dead)
            | "AllDeadLetters" >> beam.Flatten())
    # Shards as the runner sees fit (one per writer), so no single worker writes them all.
    # No empty shards: Beam's S3 uploader cannot create an empty object (a multipart upload
    # without parts, refused by S3; apache/beam#21427), and none is needed to say "no rows".
    _ = (finished.results
         | "WriteResults" >> beam.io.WriteToText(
             FileSystems.join(output, outputs.RESULTS), file_name_suffix=".jsonl",
             skip_if_empty=True))
    _ = (finished.image_scores
         | "WriteImageScores" >> beam.io.WriteToText(
             FileSystems.join(output, outputs.IMAGE_SCORES), file_name_suffix=".jsonl",
             skip_if_empty=True))
    _ = (dead
         | "DeadToJson" >> beam.Map(DeadLetter.to_json)
         | "WriteDeadLetters" >> beam.io.WriteToText(
             FileSystems.join(output, outputs.DEAD_LETTERS), file_name_suffix=".jsonl",
             skip_if_empty=True))

    ok_count = finished.results | "CountOk" >> beam.combiners.Count.Globally()
    dead_by_stage = (dead
                     | "Stage" >> beam.Map(lambda d: d.stage)
                     | "CountPerStage" >> beam.combiners.Count.PerElement()
                     | "StagesToList" >> beam.combiners.ToList())
    _ = (p
         | "SummaryTrigger" >> beam.Create([None])
         | "WriteSummary" >> beam.Map(
             lambda _, ok, stages: _write_summary({"ok": ok, "dead_by_stage": stages},
                                                  output),
             beam.pvalue.AsSingleton(ok_count), beam.pvalue.AsSingleton(dead_by_stage)))

    named = {"results": finished.results, "dead_letters": dead}
    if args.evaluate:
        dataset = get_dataset(args.dataset)
        score_fields = {"task": args.task} if dataset.tasks else {}
        if classes.get("coco"):
            score_fields["coco_protocol"] = classes["coco"]["protocol"]
        named["scores"] = (
            finished.scored
            | "Score" >> beam.CombineGlobally(evaluation.ScoreboardFn(
                classes["class_names"], by_category=dataset.by_category))
            | "WriteMetrics" >> beam.Map(evaluation.write_evaluation, output, **score_fields))
    return named


def make_handler(args):
    if args.mode == "inprocess":
        return SavedModelHandler(args.model_dir, min_batch_size=args.min_batch_size,
                                 max_batch_size=args.batch_size,
                                 max_batch_bytes=args.max_batch_bytes,
                                 model_copies=args.model_copies, device=args.device,
                                 backend=args.backend, call_size=args.call_size)
    return TFServingHandler(args.server, args.model_name, version=args.model_version,
                            version_label=args.model_label, timeout=args.timeout,
                            client_retries=args.retries, num_retries=args.batch_retries,
                            min_batch_size=args.min_batch_size,
                            max_batch_size=args.batch_size, max_batch_bytes=args.max_batch_bytes)


def _check_serving(args, handler: TFServingHandler) -> None:
    """gRPC mode on a runner of this machine: the server and the model answer before the
    pipeline starts, so a wrong address, model name or version is one line now instead of
    every batch retried and then dead-lettered. Workers elsewhere (Dataflow, Flink, Spark,
    Dask) may reach a server this machine cannot, so those runs are not checked here."""
    from serving.channel import check_server
    from serving.client import serving_error
    from serving.errors import ServingError

    check_server(args.server, "grpc", timeout=min(args.timeout, 5.0))
    try:
        handler.check_model()
    except ServingError as err:
        raise serving_error(err, args.server) from None


def run(argv: Optional[list[str]] = None, test_pipeline: Optional[beam.Pipeline] = None,
        handler=None, inspect=None) -> dict:
    """Run the job; returns the summary (also written to <output>/summary.json).

    Tests: `handler` replaces the ModelHandler of --mode; `inspect` is called with
    build_pipeline's named PCollections before the pipeline runs (to attach assert_that)."""
    parser = build_parser()
    args, beam_args = parser.parse_known_args(argv)
    _check_args(args, parser)
    options = PipelineOptions(beam_args)
    options.view_as(SetupOptions).save_main_session = False
    runner_name = options.view_as(StandardOptions).runner
    # --runner DaskRunner: Beam's own loses data (docs/beam.md, "Dask"); ours is corrected.
    options.view_as(StandardOptions).runner = runners.resolve(runner_name)
    # Before the first path is touched here: s3:// needs --s3_endpoint_url etc. (Beam's
    # Pipeline does this too, but the inputs and the model are checked before it exists).
    FileSystems.set_options(options)
    if "://" not in args.output:
        args.output = os.path.abspath(args.output)

    meta: dict = {}
    if args.model_dir:
        meta = read_model_metadata(args.model_dir)
    dataset = get_dataset(args.dataset)
    if dataset.tasks:
        # The model says what it was trained for; asking for the other task is an error,
        # not lane scores of a road model (without --model-dir, grpc: trust --task).
        require_task(meta.get("task"), args.task, args.model_dir or "the model")
        args.task = dataset.task_of(meta.get("task"), args.task)
    coco_meta = None
    if dataset.lists_annotations:
        # Read here for the categories and an early error; the pipeline lists the images
        # itself, so a big annotation file does not end up in the pipeline graph.
        coco_entries, coco_meta = sources.load_coco_index(
            args.annotations, sources.expand_input(args.input, args.dataset))
        if not coco_entries:
            raise ValueError(f"{args.annotations}: no listed image matches {args.input}")
    else:
        pattern = sources.expand_input(args.input, args.dataset, args.task or "road")
        if not FileSystems.match([pattern], limits=[1])[0].metadata_list:
            raise FileNotFoundError(f"{args.input}: no files match {pattern}")
    classes = resolve_classes(args, meta, coco_meta)
    if args.mode == "inprocess" and not classes["class_names"]:
        raise ValueError(f"{args.model_dir}: no class names in the model's metadata")
    if args.evaluate and args.labels_dir and not classes["class_names"]:
        raise ValueError("scoring against --labels-dir in grpc mode needs --model-dir (for "
                         "the class names)")

    if handler is None:
        handler = make_handler(args)
        if args.mode == "grpc" and runners.is_local(runner_name):
            _check_serving(args, handler)

    # Nothing of an earlier run is touched until this one has finished (outputs.publish).
    run_id = outputs.new_run_id()
    output = outputs.run_folder(args.output, run_id)

    # DirectRunner: Beam 2.77 skips Prism for pipelines with with_exception_handling (ours)
    # and runs them on the FnApiRunner; --runner BundleBasedDirectRunner retries failed
    # bundles as distributed runners do.
    pipeline = test_pipeline if test_pipeline is not None else beam.Pipeline(options=options)
    named = build_pipeline(pipeline, args, handler, classes, output)
    if inspect is not None:
        inspect(named)

    start = time.perf_counter()
    result = pipeline.run()
    state = result.wait_until_finish()
    wall = time.perf_counter() - start
    if state is not None and str(state).rsplit(".", 1)[-1] not in ("DONE", "UNKNOWN"):
        raise RuntimeError(f"the pipeline ended {state}; {args.output} still holds the "
                           f"previous run ({outputs.published_run(args.output)})")

    summary = outputs.read_json(FileSystems.join(output, outputs.SUMMARY))
    summary.update({
        "wall_time_s": round(wall, 3),
        "images_per_s": round(summary["ok"] / wall, 3) if wall > 0 else None,
        "mode": args.mode, "dataset": args.dataset, "input": args.input,
        "runner": runner_name or "DirectRunner", "run_id": run_id, "run_dir": output,
        "model": args.model_dir if args.mode == "inprocess" else
        f"{args.server}/{args.model_name}",
        "counters": _counters(result)})
    if dataset.tasks:
        summary["task"] = args.task
    if args.submission_zip is not None:
        summary["submission_zip"] = (args.submission_zip
                                     or FileSystems.join(output, outputs.SUBMISSION_ZIP))
    metrics_path = FileSystems.join(output, outputs.METRICS)
    if FileSystems.exists(metrics_path):
        summary["metrics"] = outputs.read_json(metrics_path)
    outputs.write_json(FileSystems.join(output, outputs.SUMMARY), summary)
    if "metrics" in summary:
        _write_report(output, args, meta)
    replaced = outputs.publish(args.output, run_id)
    _LOGGER.info("published run %s in %s (replaced %d earlier run folders)", run_id,
                 args.output, len(replaced))
    return summary


def _write_report(output: str, args, meta: dict) -> None:
    """report.html in the run folder before it is published (model/report.py); on object
    stores the page is left to `python -m model.report` on a downloaded copy."""
    from model import report

    if "://" in output:
        _LOGGER.info("no report.html on %s: run python -m model.report on a local copy", output)
        return
    report.write_run_info(output, dataset=args.dataset, model={
        "name": meta.get("model_name") or args.model_name, "version": meta.get("model_version")
        or args.model_version or args.model_label, "variant": meta.get("variant"),
        "inference_size": meta.get("inference_size"),
        "path": args.model_dir or f"{args.server}/{args.model_name}"})
    report.build(output)


def _counters(result) -> dict:
    try:
        counters = result.metrics().query(beam.metrics.MetricsFilter().with_namespace(NAMESPACE))
    except Exception:  # noqa: BLE001 - not every runner reports metrics
        return {}
    out: dict[str, int] = {}
    for c in counters["counters"]:
        out[c.key.metric.name] = out.get(c.key.metric.name, 0) + int(c.committed or c.attempted or 0)
    return out


def _main(argv: Optional[list[str]]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("apache_beam").setLevel(logging.WARNING)
    try:
        summary = run(argv)
    except ValueError as exc:  # bad inputs or options, said as "<what>: <why>"
        what, sep, why = str(exc).partition(": ")
        raise (cli.UserError(what, why) if sep else cli.UserError("beam_jobs.segment", exc)) \
            from None
    brief = {k: summary.get(k) for k in ("images_in", "ok", "failed", "failed_by_stage",
                                          "wall_time_s", "images_per_s", "run_dir")}
    print(json.dumps(brief))
    if "metrics" in summary:
        m = summary["metrics"]
        brief = {k: m.get(k) for k in ("mean_iou", "pixel_accuracy")}
        if "kitti" in m:
            brief.update({k: m["kitti"]["overall"].get(k) for k in ("MaxF", "AP", "IoU")})
        if "kitti_bev" in m:  # the view the benchmark ranks
            brief.update({f"BEV_{k}": m["kitti_bev"]["overall"].get(k) for k in ("MaxF", "AP")})
        print(json.dumps(brief))
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    return cli.run(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
