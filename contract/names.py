"""Signature names, tensor names and the numbers every layer must agree on."""
from __future__ import annotations

# The label of pixels that are not scored and not learned from: KITTI's don't-care area,
# COCO crowds and overlaps, padding. Class ids are uint8, so a model has at most 255 classes.
IGNORE_LABEL = 255
MAX_CLASSES = 255

# --- Signatures of an exported SavedModel ---------------------------------------------------
SERVING_DEFAULT = "serving_default"        # raw uint8 arrays in, compact uint8 maps out
SEGMENT_ENCODED = "segment_encoded"        # PNG/JPEG bytes in, PNG bytes out
SEGMENT_PROBABILITIES = "segment_probabilities"  # raw arrays in, float32 probabilities out
SIGNATURES = (SERVING_DEFAULT, SEGMENT_ENCODED, SEGMENT_PROBABILITIES)

# --- Tensor names -----------------------------------------------------------------------------
# Inputs
IMAGES = "images"              # uint8 [N, H, W, 3]
IMAGE_BYTES = "image_bytes"    # string [N]; the `_bytes` suffix makes TF Serving's REST API
                               # accept {"b64": ...} for it (util/json_tensor.cc)
# Outputs
CLASS_IDS = "class_ids"        # uint8 [N, H, W] (segment_encoded: padded with IGNORE_LABEL)
CONFIDENCE = "confidence"      # uint8 [N, H, W], probability x 255 (road for a binary model)
PROBABILITIES = "probabilities"  # float32 [N, H, W, C]
HEIGHTS = "heights"            # int32 [N]
WIDTHS = "widths"              # int32 [N]
# TF Serving's REST API base64-encodes a string output only when its name ends in "_bytes"
# (tensorflow_serving/util/json_tensor.cc); any other name is sent as raw bytes in a JSON
# string, which generic JSON clients cannot read.
MASK_PNG_BYTES = "mask_png_bytes"
CONFIDENCE_PNG_BYTES = "confidence_png_bytes"

# Recorded in the metadata. The only format read: an export without the key (format 1, PNG
# outputs without `_bytes`) is refused and must be exported again.
EXPORT_FORMAT = 2

# What a client asks serving_default for by default (TF Serving's output_filter).
DEFAULT_OUTPUT_FILTER = (CLASS_IDS, CONFIDENCE)

# zlib level of segment_encoded's PNGs (the export's graph, and every backend that answers
# that signature). Level 1, as beam_jobs.outputs writes its PNGs: the encoding sits on every
# request's critical path; at zlib's default (6) segment_encoded ran 0.93x of
# serving_default at batch 8 on a 2-core CPU, at 1 0.99x. The files double (KITTI: mask +
# confidence 9.8 -> 17.6 kB, 2 % of the input PNG; docs/results.md).
PNG_COMPRESSION = 1

# --- Message limits ---------------------------------------------------------------------------
# gRPC's default limit on a received message, on clients and servers alike (4 MiB).
GRPC_DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024

# --- Tasks --------------------------------------------------------------------------------------
KITTI_TASKS = ("road", "lane")

# --- Inference geometry -----------------------------------------------------------------------
# An export's `inference_size` is [H, W] (every image resized to it) or NATIVE (each image
# padded to a multiple of SIZE_MULTIPLE, run at its own resolution, cropped back).
NATIVE = "native"
SIZE_MULTIPLE = 32  # FCN's output stride: pool5 is 1/32 of the input
# COCO label rules (model/data/coco.py): the project's own, or torchvision's segmentation
# reference (references/segmentation/coco_utils.py), whose mIoU figures are published.
COCO_PROTOCOLS = ("fcnseg", "torchvision")
