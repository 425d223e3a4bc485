"""tf.data input pipeline: parallel decode, scale-crop or resize, flips, photometric jitter.

Every dataset reaches training as (image path, label path) pairs plus a label format:
'kitti' ground truth is the benchmark's RGB PNG decoded by the devkit's rule (road = blue > 0,
valid = red > 0), 'ids' is a single-channel PNG of class ids. Ignored pixels are 255 and stay
255 through every augmentation (padding included), so the loss and metrics skip them.
"""
from __future__ import annotations

import tensorflow as tf

from contract.names import IGNORE_LABEL

LABEL_FORMATS = ("kitti", "ids")
# Datasets at most this large keep decoded images in memory after the first epoch.
CACHE_MAX_PAIRS = 2000


def decode_label(data: tf.Tensor, label_format: str) -> tf.Tensor:
    """Encoded label PNG -> uint8 [H, W, 1] class ids with 255 = ignore."""
    if label_format == "kitti":
        rgb = tf.io.decode_png(data, channels=3)
        road = rgb[..., 2:3] > 0
        valid = rgb[..., 0:1] > 0
        return tf.where(valid, tf.cast(road, tf.uint8), tf.constant(IGNORE_LABEL, tf.uint8))
    if label_format == "ids":
        return tf.io.decode_png(data, channels=1)
    raise ValueError(f"label_format must be one of {LABEL_FORMATS}, got {label_format!r}")


def decode_rgb(data):
    """Encoded image bytes -> uint8 [H, W, 3], in a graph: the one in-graph decode of training
    and the serving signatures. channels=3 turns grayscale and RGBA into RGB. JPEGs use
    libjpeg's accurate integer DCT, which is how Pillow decodes them (model.evaluate and the
    Beam job read images with Pillow): TF's default fast DCT differs in most pixel values, by
    up to 17."""
    return tf.cond(
        tf.io.is_jpeg(data),
        lambda: tf.io.decode_jpeg(data, channels=3, dct_method="INTEGER_ACCURATE"),
        lambda: tf.io.decode_image(data, channels=3, expand_animations=False))


def _load(image_path, label_path, label_format):
    image = decode_rgb(tf.io.read_file(image_path))
    label = decode_label(tf.io.read_file(label_path), label_format)
    image = tf.ensure_shape(image, [None, None, 3])
    same = tf.reduce_all(tf.equal(tf.shape(image)[:2], tf.shape(label)[:2]))
    with tf.control_dependencies([tf.debugging.Assert(
            same, ["image and label sizes differ:", image_path, label_path])]):
        return tf.identity(image), label


def _resize(image, label, size):
    image = tf.image.resize(image, size, method="bilinear")
    label = tf.image.resize(label, size, method="nearest")
    return image, tf.cast(label, tf.uint8)


def _scale_crop(image, label, size, scale_range, crop):
    """Resize to the target geometry `size` times a random scale, then pad and random-crop a
    window of `crop` (size itself, or smaller: crops of a larger view)."""
    scale = tf.random.uniform([], *scale_range)
    sh = tf.cast(tf.round(size[0] * scale), tf.int32)
    sw = tf.cast(tf.round(size[1] * scale), tf.int32)
    image, label = _resize(image, label, tf.stack([sh, sw]))
    h, w = crop
    ph, pw = tf.maximum(h, sh), tf.maximum(w, sw)
    image = tf.image.pad_to_bounding_box(image, 0, 0, ph, pw)
    # Padded label pixels must be ignored, not background: shift, pad with 0, shift back.
    label = tf.image.pad_to_bounding_box(tf.cast(label, tf.int32) + 1, 0, 0, ph, pw) - 1
    label = tf.where(label < 0, IGNORE_LABEL, label)
    stacked = tf.concat([image, tf.cast(label, tf.float32)], axis=-1)
    stacked = tf.image.random_crop(stacked, [h, w, 4])
    return stacked[..., :3], tf.cast(stacked[..., 3:], tf.uint8)


def _photometric(image):
    image = image / 255.0
    image = tf.image.random_brightness(image, 0.15)
    image = tf.image.random_contrast(image, 0.8, 1.2)
    image = tf.image.random_saturation(image, 0.8, 1.2)
    image = tf.image.random_hue(image, 0.03)
    return tf.clip_by_value(image, 0.0, 1.0) * 255.0


def check_pairs(pairs) -> None:
    """Fail before training starts, naming the file, when a pair cannot be used.

    Reads only the image headers (fast); tf.data's own decode errors do not name files.
    """
    from PIL import Image, UnidentifiedImageError

    for image_path, label_path in pairs:
        sizes = []
        for path in (image_path, label_path):
            try:
                with Image.open(path) as im:
                    sizes.append(im.size)
            except FileNotFoundError:
                raise FileNotFoundError(f"{path}: file not found") from None
            except (UnidentifiedImageError, OSError) as e:
                raise ValueError(f"{path}: not a readable image ({e})") from None
        if sizes[0] != sizes[1]:
            raise ValueError(f"{label_path}: label size {sizes[1]} differs from image "
                             f"{image_path} size {sizes[0]}")


def make_dataset(pairs, label_format: str, image_size, batch_size: int, training: bool,
                 seed: int = 0, augment: bool = True, scale_range=(0.8, 1.25),
                 hflip: bool = True, cache: bool | None = None,
                 crop_size=None) -> tf.data.Dataset:
    """(images float32 [B,H,W,3] 0..255, labels uint8 [B,H,W]) batches.

    Training batches are shuffled, scale-cropped, flipped and colour-jittered; evaluation
    batches are resized to `image_size` and kept in order. `crop_size` (augmented training
    only): windows of that size cut from the image at `image_size` times the random scale,
    so that a network trained on crops meets objects at the scale it will see at image_size.
    """
    if not pairs:
        raise ValueError("no (image, label) pairs to build a dataset from")
    if label_format not in LABEL_FORMATS:
        raise ValueError(f"label_format must be one of {LABEL_FORMATS}, got {label_format!r}")
    size = tf.constant(list(image_size), tf.int32)
    out_size = tuple(crop_size) if crop_size and training and augment else tuple(image_size)
    images = [str(p[0]) for p in pairs]
    labels = [str(p[1]) for p in pairs]
    ds = tf.data.Dataset.from_tensor_slices((images, labels))
    ds = ds.map(lambda i, l: _load(i, l, label_format), num_parallel_calls=tf.data.AUTOTUNE,
                deterministic=not training)
    if cache if cache is not None else len(pairs) <= CACHE_MAX_PAIRS:
        ds = ds.cache()
    if training:
        ds = ds.shuffle(min(len(pairs), 1000), seed=seed, reshuffle_each_iteration=True)

    def prepare(image, label):
        image = tf.cast(image, tf.float32)
        if training and augment:
            image, label = _scale_crop(image, label, image_size, scale_range, out_size)
            if hflip:
                flip = tf.random.uniform([]) < 0.5
                image = tf.cond(flip, lambda: tf.image.flip_left_right(image), lambda: image)
                label = tf.cond(flip, lambda: tf.image.flip_left_right(label), lambda: label)
            image = _photometric(image)
        else:
            image, label = _resize(image, label, size)
        image = tf.ensure_shape(image, [out_size[0], out_size[1], 3])
        return image, tf.ensure_shape(label[..., 0], [out_size[0], out_size[1]])

    ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=not training)
    ds = ds.batch(batch_size, drop_remainder=False)
    return ds.prefetch(tf.data.AUTOTUNE)
