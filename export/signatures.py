"""The serving graph: a tf.Module that holds the model's variables and the three signatures.

    serving_default        uint8 images [N,H,W,3] -> class_ids, confidence (uint8 [N,H,W])
    segment_probabilities  uint8 images [N,H,W,3] -> probabilities (float32 [N,H,W,C])
    segment_encoded        PNG/JPEG bytes [N] -> mask_png_bytes, confidence_png_bytes,
                           class_ids (padded), heights, widths

serving_default holds only the compact outputs: a stock client sends no output_filter (and
REST has none), and with float probabilities one 1242x375 reply was 4.76 MB, over gRPC's
4 MiB default. The float maps have their own signature. String outputs end in `_bytes`,
the suffix TF Serving's REST API needs to send them as {"b64": ...} (util/json_tensor.cc).

All signatures share one pre/post-processing path (`to_geometry`, `from_geometry`), chosen
at export as the inference geometry (metadata `inference_size`):
- [h, w] (default: the training size): images of any size are resized bilinearly to it, the
  model runs once on the whole batch, and its probabilities are resized back to each image's
  own size before argmax;
- 'native': each image is padded at its bottom and right with zeros to a multiple of 32, the
  fully convolutional model runs at the image's own resolution, and the padding is cropped
  off. No resize anywhere. segment_encoded then runs the model once per image (the images
  of one request may differ in size).
"""
from __future__ import annotations

import tensorflow as tf

from contract import names
from contract.names import NATIVE, PNG_COMPRESSION, SIZE_MULTIPLE
from model.data import pipeline
from contract.names import SEGMENT_ENCODED, SEGMENT_PROBABILITIES, SERVING_DEFAULT

# Padding value of the batched class_ids of segment_encoded: the project's 'ignore' label.
PAD_CLASS_ID = names.IGNORE_LABEL


def to_geometry(images, geometry):
    """uint8/float images [N,H,W,3] -> float32 [N,h,w,3] at the model's geometry (0..255):
    resized to `geometry` (h, w), or for NATIVE zero-padded to multiples of 32."""
    if geometry == NATIVE:
        size = tf.shape(images)[1:3]
        pad = -size % SIZE_MULTIPLE
        return tf.pad(tf.cast(images, tf.float32), [[0, 0], [0, pad[0]], [0, pad[1]], [0, 0]])
    return tf.image.resize(images, geometry, method="bilinear")


def from_geometry(probabilities, size, geometry):
    """Probabilities [N,h,w,C] at the geometry -> float32 [N,H,W,C] at `size` (H, W):
    resized back, or for NATIVE the padding cropped off."""
    probabilities = tf.cast(probabilities, tf.float32)
    if geometry == NATIVE:
        return probabilities[:, :size[0], :size[1]]
    return tf.image.resize(probabilities, size, method="bilinear")


def geometry_of(inference_size):
    """NATIVE or an (h, w) tuple of ints, multiples of 32; anything else is refused."""
    if inference_size == NATIVE:
        return NATIVE
    try:
        h, w = (int(s) for s in inference_size)
    except (TypeError, ValueError):
        raise ValueError(f"inference size must be [H, W] or {NATIVE!r}, "
                         f"got {inference_size!r}") from None
    if h <= 0 or w <= 0 or h % SIZE_MULTIPLE or w % SIZE_MULTIPLE:
        raise ValueError(f"inference size sides must be positive multiples of "
                         f"{SIZE_MULTIPLE}, got {h}x{w}")
    return (h, w)


def class_ids_of(probabilities):
    """Arg-max class ids as uint8 (so at most 255 classes; 255 itself is 'ignore')."""
    return tf.cast(tf.argmax(probabilities, axis=-1), tf.uint8)


def confidence_of(probabilities):
    """uint8 0..255 confidence: road (class 1) probability for a binary model, else the
    winning class' probability. For a KITTI road model this is the submission format."""
    if probabilities.shape[-1] == 2:
        p = probabilities[..., 1]
    else:
        p = tf.reduce_max(probabilities, axis=-1)
    return tf.cast(tf.round(tf.clip_by_value(p, 0.0, 1.0) * 255.0), tf.uint8)


def require_images(batch):
    """An empty batch is a bad request: INVALID_ARGUMENT with a message saying so (TF Serving
    passes the graph's InvalidArgumentError through), rather than empty outputs."""
    check = tf.debugging.assert_positive(
        tf.shape(batch)[0], message="empty batch: a request must hold at least one image")
    with tf.control_dependencies([check]):
        return tf.identity(batch)


class ServingModule(tf.Module):
    """What tf.saved_model.save writes.

    Only the model's variables are tracked, not the Keras model object: a loaded or cloned
    Keras model also carries its optimizer (Adam's two slots per weight), which tracking the
    model would save too and triple the variables. The model itself is reached through the
    functions' closures, so its variables are captured once.
    """

    def __init__(self, keras_model, image_size, num_classes: int, labels_path: str):
        """image_size: the inference geometry, (h, w) or NATIVE (see geometry_of)."""
        super().__init__(name="fcnseg")
        # The tf.Variables under the Keras variables: tracking the Keras wrappers instead
        # makes tf.saved_model.save write a second variable per weight for the wrapper that
        # the checkpoint restores, while the graph reads the first one, which a TF1-style
        # loader (TF Serving) then never initialises.
        self.model_variables = [v.value for v in keras_model.variables]
        # Tracked asset: saved into <version>/assets/ and re-pointed there on load.
        self.labels = tf.saved_model.Asset(labels_path)
        geometry = geometry_of(image_size)
        native = geometry == NATIVE
        model = keras_model

        def run_model(x):
            probs = tf.cast(model(x, training=False), tf.float32)
            return tf.ensure_shape(probs, [None, *((None, None) if native else geometry),
                                           num_classes])

        def probabilities_at_input_size(images):
            images = require_images(images)
            size = tf.shape(images)[1:3]
            return from_geometry(run_model(to_geometry(images, geometry)), size, geometry)

        images_spec = tf.TensorSpec([None, None, None, 3], tf.uint8, name=names.IMAGES)

        @tf.function(input_signature=[images_spec])
        def serving_default(images):
            probs = probabilities_at_input_size(images)
            return {names.CLASS_IDS: class_ids_of(probs), names.CONFIDENCE: confidence_of(probs)}

        @tf.function(input_signature=[images_spec])
        def segment_probabilities(images):
            return {names.PROBABILITIES: probabilities_at_input_size(images)}

        def decode_rgb(data):
            # An undecodable image fails the whole request with INVALID_ARGUMENT (a graph
            # cannot skip one batch element).
            return pipeline.decode_rgb(data)

        def encode_batch(image_bytes):
            if native:
                # Sizes first (for the padded class_ids), then one model run per image.
                sizes = tf.map_fn(lambda d: tf.shape(decode_rgb(d))[:2], image_bytes,
                                  fn_output_signature=tf.TensorSpec([2], tf.int32))
            else:
                def decode(data):
                    image = decode_rgb(data)
                    return to_geometry(image[None], geometry)[0], tf.shape(image)[:2]

                resized, sizes = tf.map_fn(
                    decode, image_bytes,
                    fn_output_signature=(tf.TensorSpec([*geometry, 3], tf.float32),
                                         tf.TensorSpec([2], tf.int32)))
                probs = run_model(resized)  # one model call for the whole batch
            heights, widths = sizes[:, 0], sizes[:, 1]
            h_max, w_max = tf.reduce_max(heights), tf.reduce_max(widths)

            def finish(args):
                p, hw = args
                if native:
                    image = decode_rgb(p)[None]  # p is the encoded image here
                    p = from_geometry(run_model(to_geometry(image, geometry)), hw, geometry)[0]
                else:
                    p = from_geometry(p[None], hw, geometry)[0]
                ids, conf = class_ids_of(p), confidence_of(p)
                padded = tf.pad(ids, [[0, h_max - hw[0]], [0, w_max - hw[1]]],
                                constant_values=PAD_CLASS_ID)
                return (tf.io.encode_png(ids[..., None], compression=PNG_COMPRESSION),
                        tf.io.encode_png(conf[..., None], compression=PNG_COMPRESSION), padded)

            mask_png, confidence_png, class_ids = tf.map_fn(
                finish, (image_bytes if native else probs, sizes),
                fn_output_signature=(tf.TensorSpec([], tf.string),
                                     tf.TensorSpec([], tf.string),
                                     tf.TensorSpec([None, None], tf.uint8)))
            return {names.MASK_PNG_BYTES: mask_png, names.CONFIDENCE_PNG_BYTES: confidence_png,
                    names.CLASS_IDS: class_ids, names.HEIGHTS: heights, names.WIDTHS: widths}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=names.IMAGE_BYTES)])
        def segment_encoded(image_bytes):
            return encode_batch(require_images(image_bytes))

        self.serving_default = serving_default
        self.segment_probabilities = segment_probabilities
        self.segment_encoded = segment_encoded

    def signatures(self) -> dict:
        return {SERVING_DEFAULT: self.serving_default.get_concrete_function(),
                SEGMENT_PROBABILITIES: self.segment_probabilities.get_concrete_function(),
                SEGMENT_ENCODED: self.segment_encoded.get_concrete_function()}


def describe(signatures: dict) -> dict:
    """{name: {"inputs": {key: {dtype, shape}}, "outputs": {...}}} for the metadata file."""
    def spec(t):
        return {"dtype": t.dtype.name, "shape": [None if d is None else int(d)
                                                 for d in t.shape.as_list()]}
    out = {}
    for name, fn in signatures.items():
        args, kwargs = fn.structured_input_signature
        inputs = {**{a.name: a for a in args}, **kwargs}  # positional specs are keyed by name
        out[name] = {"inputs": {k: spec(v) for k, v in sorted(inputs.items())},
                     "outputs": {k: spec(v) for k, v in sorted(fn.structured_outputs.items())}}
    return out
