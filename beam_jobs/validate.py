"""Check each image's bytes before inference, so one bad file rarely reaches (and fails) a batch.

Each image is decoded once, by the model: validation reads headers and chunk structure only.
Rejected, each with its reason: empty files, files that are not images, images over a pixel
limit (from the header), truncated or corrupt PNGs (Pillow's `verify`: every chunk's length
and CRC up to IEND, without inflating the pixels). What only a decode can find (a truncated
JPEG) is refused by the model's decoder and dead-lettered at the inference stage, for that
image alone (handlers.py splits the batch). Grayscale, RGBA, palette and 16-bit images are
fine: PNG/JPEG in 8-bit modes go to the model as they are (the SavedModel decodes them to
RGB); other formats and 16-bit PNGs are decoded and re-encoded as 8-bit RGB PNG, since
TensorFlow's decoder reads only PNG/JPEG/GIF/BMP and keeps 16 bits.
"""
from __future__ import annotations

import io

import apache_beam as beam
from PIL import Image, UnidentifiedImageError

from beam_jobs.sources import DeadLetter, ImageItem
from model.data.image_io import ImageReadError, decode_image_bytes

DEFAULT_MAX_PIXELS = 40_000_000  # ~ 8000 x 5000; a 1242x375 KITTI image has 0.47 M
# Formats and modes the SavedModel's tf.io.decode_image(channels=3) reads as 8-bit RGB.
_PASS_THROUGH = {"PNG": {"1", "L", "LA", "P", "RGB", "RGBA"}, "JPEG": {"L", "RGB"}}


class ImageRejected(ValueError):
    pass


def check_image(item: ImageItem, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageItem:
    """Fill width/height/format of `item`, or raise ImageRejected with the reason."""
    data = item.data
    if not data:
        raise ImageRejected("empty file (0 bytes)")
    try:
        # The header alone: size and format without decoding the pixels.
        with Image.open(io.BytesIO(data)) as img:
            width, height, fmt, mode = img.width, img.height, img.format, img.mode
    except UnidentifiedImageError:
        raise ImageRejected("not an image (unrecognised format)") from None
    except Image.DecompressionBombError as exc:
        raise ImageRejected(f"image too large ({exc})") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageRejected(f"cannot read image header ({exc})") from None
    if width < 1 or height < 1:
        raise ImageRejected(f"image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise ImageRejected(f"image too large: {width}x{height} = {width * height} pixels, "
                            f"limit {max_pixels} (--max-pixels)")
    if fmt == "PNG":
        try:
            with Image.open(io.BytesIO(data)) as img:
                img.verify()  # chunk lengths and CRCs, no decompression
        except OSError as exc:  # Pillow: "Truncated File Read", "image file is truncated"
            raise ImageRejected(f"truncated PNG ({exc})") from None
        except (SyntaxError, ValueError) as exc:  # a chunk's CRC does not match
            raise ImageRejected(f"corrupt PNG ({exc})") from None
    if mode not in _PASS_THROUGH.get(fmt, ()):
        # The only decode outside the model: formats or bit depths it cannot read.
        try:
            rgb = decode_image_bytes(data, item.path)
        except ImageReadError as exc:
            raise ImageRejected(exc.reason) from None
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, format="PNG", compress_level=1)
        data = buf.getvalue()
    item.data, item.width, item.height, item.format = data, width, height, fmt
    return item


class ValidateImages(beam.DoFn):
    """ImageItem -> checked ImageItem, or DeadLetter(stage 'validate') on output 'dead'."""

    def __init__(self, max_pixels: int = DEFAULT_MAX_PIXELS):
        self.max_pixels = max_pixels
        self.rejected = beam.metrics.Metrics.counter("fcnseg", "failed_validate")

    def process(self, item: ImageItem):
        # Pillow warns (DecompressionBombWarning) well under our limit; the limit is ours.
        Image.MAX_IMAGE_PIXELS = max(self.max_pixels, Image.MAX_IMAGE_PIXELS or 0)
        try:
            yield check_image(item, self.max_pixels)
        except ImageRejected as exc:
            self.rejected.inc()
            yield beam.pvalue.TaggedOutput("dead", DeadLetter(item.path, "validate", str(exc)))
