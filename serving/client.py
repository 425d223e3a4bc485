"""Command line client for a segmentation model on TF Serving.

    python -m serving.client segment --server 127.0.0.1:8500 --model-name fcn8s IMAGE... \
        --output DIR
    python -m serving.client segment --rest --server 127.0.0.1:8501 ... (REST instead of gRPC)
    python -m serving.client metadata --server 127.0.0.1:8500 --model-name fcn8s
    python -m serving.client status --server 127.0.0.1:8500 --model-name fcn8s

`segment` writes, per image, <stem>_mask.png (class ids, one uint8 channel, 255 = ignore),
<stem>_overlay.png (class colours over the image) and, from segment_encoded on a binary road
model, <stem>_confidence.png (road probability 0..255, the perspective map). Class
names and colours come from the export's fcnseg_metadata.json when --model-dir points at it
(TF Serving does not serve that file); otherwise classes are numbered and a default palette
is used.

KITTI: `segment --kitti-submission [--task road|lane] [--submission-zip]` also writes, for
each KITTI image (um_000012.png, ...), confidence/<cat>_<task>_<n>.png (the perspective map)
and kitti_submission/<cat>_<task>_<n>.png: the same map in the benchmark's bird's-eye view,
made with the image's calibration (<split>/calib/<cat>_<n>.txt, or --calib-dir), i.e. the
files to upload (kitti_submission.zip). With --model-dir, --task must be the model's.
"""
from __future__ import annotations

import argparse
import pathlib
import sys

from common import cli

if __name__ == "__main__":
    cli.quiet_tensorflow()  # before anything below loads TensorFlow

from collections import defaultdict

import grpc
import numpy as np
from tqdm import tqdm

from common.files import atomic_write_bytes, png_bytes
from contract import kitti as contract_kitti
from contract import names as tensor_names
from contract.files import IMAGE_EXTENSIONS
from contract.kitti import submission_zip_bytes
from contract.names import KITTI_TASKS
from contract.records import ExportMetadata, require_task
from model.data import kitti, kitti_bev, palette
from model.data.image_io import ImageReadError, decode_image_bytes, write_png
from model.plots import save_overlay
from serving.channel import check_server, refuse_plaintext_credentials
from serving.errors import ServingError
from serving.rest_client import RestPredictionClient


def read_export_metadata(path: str | None):
    """The ExportMetadata of --model-dir (a model folder: its newest version, or a version
    folder), or None without one. TF Serving does not serve this file, so it is read here."""
    if not path:
        return None
    try:
        return ExportMetadata.of_export(path)
    except (OSError, ValueError) as err:
        why = str(err).removeprefix(f"{path}: ")
        raise cli.UserError(path, f"cannot read export metadata: {why}") from None


def read_class_info(path: str | None) -> tuple[list[str] | None, list[list[int]] | None]:
    """class_names and colours of the export at --model-dir (None, None without one)."""
    metadata = read_export_metadata(path)
    return (None, None) if metadata is None else (metadata.class_names, metadata.colours)


def make_client(args):
    kwargs = dict(version=args.model_version, version_label=args.model_label, timeout=args.timeout,
                  max_retries=args.retries,
                  allow_plaintext_credentials=args.allow_plaintext_auth)
    tls = args.tls or bool(args.tls_ca)
    try:
        if args.rest:
            headers = {"Authorization": args.auth} if args.auth else None
            server = args.server
            if tls and "://" not in server:
                server = f"https://{server}"
            return RestPredictionClient(server, args.model_name, headers=headers,
                                        verify=args.tls_ca or True, **kwargs)
        # Imported here: it loads TensorFlow (for its tensor protos), which REST does not need.
        from serving.grpc_client import PredictionClient
        metadata = {"authorization": args.auth} if args.auth else None
        root = pathlib.Path(args.tls_ca).read_bytes() if args.tls_ca else None
        return PredictionClient(args.server, args.model_name, tls=tls, root_certificates=root,
                                metadata=metadata, max_response_bytes=args.max_response_bytes,
                                **kwargs)
    except OSError as err:  # the --tls-ca file
        raise cli.UserError(err.filename or args.tls_ca, (err.strerror or str(err)).lower()) \
            from None
    except ValueError as err:  # credentials refused over plaintext: "<server>: <why>"
        what, _, why = str(err).partition(": ")
        raise cli.UserError(what, why) from None


def _describe(class_ids: np.ndarray, names: list[str] | None) -> str:
    """'road 73.6%, background 26.4%' (class ids when there are no names)."""
    names = names or []
    counts = np.bincount(class_ids[class_ids != 255].ravel(), minlength=len(names))
    total = max(int(counts.sum()), 1)
    parts = [f"{names[i] if i < len(names) else i} {100 * c / total:.1f}%"
             for i, c in enumerate(counts) if c]
    return ", ".join(parts)


def expand_images(paths: list[str]) -> list[pathlib.Path]:
    """Files as given; folders replaced by the image files in them (sorted)."""
    files = []
    for path in map(pathlib.Path, paths):
        if path.is_dir():
            files += sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        else:
            files.append(path)
    return files


def _segment_batch(client, signature: str, paths: list[pathlib.Path]) -> list[dict]:
    """Send one batch; per image: image, class_ids, mask_png / confidence_png (or None),
    version. Raises ImageReadError/OSError naming a file that cannot be read."""
    blobs = [p.read_bytes() for p in paths]
    images = [decode_image_bytes(b, str(p)) for b, p in zip(blobs, paths)]  # fail early
    items = [{"image": image, "mask_png": None, "confidence_png": None} for image in images]
    if signature == tensor_names.SEGMENT_ENCODED:
        result = client.segment_encoded(blobs)
        for i, item in enumerate(items):
            h, w = result["heights"][i], result["widths"][i]
            item["class_ids"] = result[tensor_names.CLASS_IDS][i, :h, :w]
            item["mask_png"] = result[tensor_names.MASK_PNG_BYTES][i]
            if tensor_names.CONFIDENCE_PNG_BYTES in result:
                item["confidence_png"] = result[tensor_names.CONFIDENCE_PNG_BYTES][i]
            item["version"] = result["model_version"]
        return items
    # serving_default: one request per image size (a batch tensor has one height and width).
    by_size = defaultdict(list)
    for i, image in enumerate(images):
        by_size[image.shape].append(i)
    for indices in by_size.values():
        result = client.segment_images(np.stack([images[i] for i in indices]))
        for k, i in enumerate(indices):
            items[i]["class_ids"] = result[tensor_names.CLASS_IDS][k]
            items[i]["version"] = result["model_version"]
    return items


class KittiSubmission:
    """Writes the bird's-eye-view submission maps of `segment --kitti-submission`.

    An image that cannot get one (not a KITTI name, a category the task lacks, a missing or
    bad calibration file) is reported naming the file and counted; the others go on.
    """

    def __init__(self, out: pathlib.Path, task: str, calib_dir: str | None):
        self.out, self.task = out, task
        self.calib_dir = pathlib.Path(calib_dir) if calib_dir else None
        self.maps: dict[str, pathlib.Path] = {}
        self.failed = 0

    def add(self, image_path: pathlib.Path, confidence_png: bytes | None) -> str:
        """Write the maps of one image; returns a note for the progress line."""
        try:
            name = contract_kitti.submission_name(image_path.name, self.task)
            calib_path = (self.calib_dir / contract_kitti.calib_name(image_path.name)
                          if self.calib_dir else kitti.calib_path_for(image_path))
            if confidence_png is None:
                raise ValueError("the server sent no confidence map (use --signature-name "
                                 "segment_encoded on a binary road/lane model)")
            confidence = decode_image_bytes(confidence_png, f"{image_path} (confidence)")
            bev = kitti_bev.submission_map(confidence[..., 0] if confidence.ndim == 3
                                           else confidence, kitti.read_calib(calib_path))
        except (ValueError, FileNotFoundError) as err:
            self.failed += 1
            print(f"error: {image_path}: no KITTI submission map: {err}", file=sys.stderr)
            return ""
        atomic_write_bytes(self.out / "confidence" / name, confidence_png)
        self.maps[name] = atomic_write_bytes(self.out / "kitti_submission" / name,
                                             png_bytes(bev))
        return f", bird's-eye view -> kitti_submission/{name}"

    def write_zip(self) -> pathlib.Path:
        path = self.out / "kitti_submission.zip"
        atomic_write_bytes(path, submission_zip_bytes(
            {name: p.read_bytes() for name, p in self.maps.items()}))
        print(f"{path}: {len(self.maps)} bird's-eye-view maps for the {self.task} task")
        return path


def _submission_task(args) -> str:
    """--task, checked against the export's metadata when given (a lane model written as
    um_road_* would be scored against the wrong ground truth). A mismatch raises RecordError,
    a UserError."""
    metadata = read_export_metadata(args.model_dir)
    model_task = metadata.task if metadata is not None else None  # only KITTI records one
    require_task(model_task, args.task, str(args.model_dir))
    return args.task or model_task or "road"


def cmd_segment(args) -> int:
    if (args.task or args.submission_zip or args.calib_dir) and not args.kitti_submission:
        raise cli.UserError("--task, --calib-dir and --submission-zip",
                            "they go with --kitti-submission")
    if args.kitti_submission and args.signature_name != tensor_names.SEGMENT_ENCODED:
        raise cli.UserError("--kitti-submission", "needs --signature-name segment_encoded "
                                                  "(confidence maps)")
    out = pathlib.Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    submission = (KittiSubmission(out, _submission_task(args), args.calib_dir)
                  if args.kitti_submission else None)
    names, colours = read_class_info(args.model_dir)
    colours = colours or palette(255)  # any class id gets a colour
    paths = expand_images(args.images)
    if not paths:
        raise cli.UserError(" ".join(args.images), "no images there")
    batches = [paths[i:i + args.batch_size] for i in range(0, len(paths), args.batch_size)]
    with make_client(args) as client, tqdm(total=len(paths), unit="image",
                                           disable=len(batches) == 1) as progress:
        for batch in batches:
            try:
                items = _segment_batch(client, args.signature_name, batch)
            except ImageReadError as err:
                raise cli.UserError(err.name, err.reason) from None
            for path, item in zip(batch, items):
                mask_path = out / f"{path.stem}_mask.png"
                overlay_path = out / f"{path.stem}_overlay.png"
                if item["mask_png"] is not None:
                    mask_path.write_bytes(item["mask_png"])  # the server's own PNG, as is
                else:
                    write_png(mask_path, item["class_ids"])
                save_overlay(overlay_path, item["image"], item["class_ids"], colours)
                if item["confidence_png"] is not None:
                    (out / f"{path.stem}_confidence.png").write_bytes(item["confidence_png"])
                note = submission.add(path, item["confidence_png"]) if submission else ""
                h, w = item["class_ids"].shape
                tqdm.write(f"{path}: {w}x{h}, version {item['version']}: "
                           f"{_describe(item['class_ids'], names)} -> {mask_path}, "
                           f"{overlay_path}{note}")
            progress.update(len(batch))
    if submission and args.submission_zip:
        submission.write_zip()
    if submission and submission.failed:
        print(f"error: {submission.failed} image(s) got no KITTI submission map (see above)",
              file=sys.stderr)
        return 1
    return 0


def cmd_metadata(args) -> int:
    with make_client(args) as client:
        metadata = client.get_model_metadata()
    print(f"model {metadata['name']} version {metadata['version']}")
    for name, signature in sorted(metadata["signature_def"].items()):
        if name.startswith("__"):
            continue
        print(f"signature {name}:")
        for kind in ("inputs", "outputs"):
            for alias, info in sorted(_tensor_infos(signature, kind).items()):
                print(f"  {kind[:-1]:6} {alias}: {info}")
    return 0


def _tensor_infos(signature: dict, kind: str) -> dict[str, str]:
    """'uint8 [-1, -1, -1, 3]' per tensor of a signature in TF Serving's JSON form."""
    def dims(info):
        return [int(d.get("size", -1)) for d in info.get("tensor_shape", {}).get("dim", [])]
    return {alias: f"{info['dtype'][3:].lower()} {dims(info)}"
            for alias, info in signature.get(kind, {}).items()}


def cmd_status(args) -> int:
    with make_client(args) as client:
        for entry in client.get_model_status():
            message = f" ({entry['error_message']})" if entry["error_message"] else ""
            print(f"model {args.model_name} version {entry['version']}: {entry['state']}{message}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(prog="python -m serving.client", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--server", default=None,
                        help="host:port (default 127.0.0.1:8500, or :8501 with --rest)")
    common.add_argument("--model-name", default="fcn8s", help="model name (default fcn8s)")
    pin = common.add_mutually_exclusive_group()
    pin.add_argument("--model-version", type=int, help="model version (default: newest)")
    pin.add_argument("--model-label", help="version label, e.g. stable or canary")
    common.add_argument("--rest", action="store_true", help="use the REST API (port 8501)")
    common.add_argument("--timeout", type=float, default=30.0,
                        help="deadline per call in seconds, retries included (default 30)")
    common.add_argument("--retries", type=int, default=4,
                        help="retries while the server is UNAVAILABLE (gRPC: at most 4)")
    common.add_argument("--tls", action="store_true",
                        help="connect with TLS, verifying against the system's roots")
    common.add_argument("--tls-ca", help="PEM CA certificate: connect with TLS, verifying "
                                         "against it")
    common.add_argument("--auth", help="authorization header value, e.g. 'Bearer TOKEN' "
                                       "(needs --tls or --tls-ca)")
    common.add_argument("--allow-plaintext-auth", action="store_true",
                        help="send --auth without TLS (e.g. to a local TLS sidecar)")
    common.add_argument("--max-response-bytes", type=int,
                        default=tensor_names.GRPC_DEFAULT_MAX_MESSAGE_BYTES,
                        help="largest gRPC reply accepted (default 4 MiB, gRPC's; -1 = any)")
    commands = parser.add_subparsers(dest="command", required=True)
    segment = commands.add_parser("segment", parents=[common],
                                  help="segment images, write masks and overlays")
    segment.add_argument("images", nargs="+", metavar="IMAGE",
                         help="image files, or folders of them")
    segment.add_argument("--output", required=True, help="output folder")
    segment.add_argument("--batch-size", type=int, default=8,
                         help="images per request batch (default 8)")
    segment.add_argument("--signature-name", default=tensor_names.SEGMENT_ENCODED,
                         choices=[tensor_names.SEGMENT_ENCODED, tensor_names.SERVING_DEFAULT],
                         help="send encoded files (default) or decoded pixels")
    segment.add_argument("--kitti-submission", action="store_true",
                         help="KITTI images: also write confidence/ and the bird's-eye-view "
                              "kitti_submission/ maps the benchmark wants uploaded")
    segment.add_argument("--task", choices=KITTI_TASKS,
                         help="KITTI task of the maps (default: the model's from --model-dir, "
                              "else road); must be the model's")
    segment.add_argument("--calib-dir", help="KITTI calibration folder (default: calib/ "
                                             "beside each image's image_2/)")
    segment.add_argument("--submission-zip", action="store_true",
                         help="also write kitti_submission.zip (the maps, flat) for upload")
    segment.add_argument("--model-dir", help="the export being served (a model folder or a "
                                             "version folder), for class names, colours and "
                                             "task")
    segment.set_defaults(run=cmd_segment)
    commands.add_parser("metadata", parents=[common],
                        help="show the served signatures").set_defaults(run=cmd_metadata)
    commands.add_parser("status", parents=[common],
                        help="show the versions and their states").set_defaults(run=cmd_status)
    return parser


def _check_flags(args) -> None:
    if args.timeout <= 0:
        raise cli.UserError("--timeout", f"must be more than 0 seconds, got {args.timeout:g}")
    if args.retries < 0:
        raise cli.UserError("--retries", f"must be 0 or more, got {args.retries}")
    if getattr(args, "batch_size", 1) < 1:
        raise cli.UserError("--batch-size", f"must be 1 or more, got {args.batch_size}")


def serving_error(err: ServingError, server: str) -> cli.UserError:
    """The one line for a call the server refused or could not answer."""
    if err.code == grpc.StatusCode.UNIMPLEMENTED and err.message == "Method not found!":
        # gRPC's own answer for a service the server does not have (TF Serving has both).
        return cli.UserError(server, "not TF Serving: the gRPC server there has no "
                                     "tensorflow.serving.ModelService / PredictionService")
    if err.code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return cli.UserError(server, f"no answer within the deadline (--timeout): {err.message}")
    return cli.UserError(server, f"{err.code.name}: {' '.join(err.message.split())}")


def _main(argv) -> int:
    args = build_parser().parse_args(argv)
    if args.server is None:
        args.server = "127.0.0.1:8501" if args.rest else "127.0.0.1:8500"
    _check_flags(args)
    secure = args.tls or bool(args.tls_ca) or args.server.startswith("https://")
    try:  # before anything is sent anywhere
        refuse_plaintext_credentials({"authorization": args.auth} if args.auth else {}, secure,
                                     args.allow_plaintext_auth, args.server)
    except ValueError as err:
        raise cli.UserError(args.server, str(err).removeprefix(f"{args.server}: ")) from None
    check_server(args.server, "tls" if secure else "rest" if args.rest else "grpc",
                 timeout=min(args.timeout, 5.0))
    try:
        return args.run(args)
    except ServingError as err:
        raise serving_error(err, args.server) from None


def main(argv: list[str] | None = None) -> int:
    return cli.run(_main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
