"""FCN-8s (Long, Shelhamer, Darrell, 2015) on a Keras VGG16 encoder.

The network takes raw RGB pixels (float, 0..255) of any height and width that are multiples
of 32, normalises them inside the graph, and returns per-pixel class probabilities at input
resolution. Because VGG16 here uses 'same' padding, pool3/pool4/pool5 are exactly 1/8, 1/16
and 1/32 of the input, so the skips add without the crop layers of the original Caffe model.
"""
from __future__ import annotations

import numpy as np
import keras
from keras import layers, ops

from model.encoder_weights import load_encoder_weights

# Keras' VGG16 ImageNet weights were trained on Caffe-style input: BGR, mean subtracted.
CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)
TORCH_RGB_MEAN = (0.485, 0.456, 0.406)
TORCH_RGB_STD = (0.229, 0.224, 0.225)
NORMALIZATIONS = ("caffe", "torch")

# At-once FCN-8s scales the skip scores so that the coarse stream dominates at the start.
POOL4_SCALE = 0.01
POOL3_SCALE = 0.0001

VGG_BLOCKS = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))


@keras.saving.register_keras_serializable(package="fcnseg")
class InputNormalization(layers.Layer):
    """Raw RGB 0..255 -> the encoder's expected input ('caffe' or 'torch' convention)."""

    def __init__(self, mode: str = "caffe", **kwargs):
        super().__init__(**kwargs)
        if mode not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {mode!r}")
        self.mode = mode

    def call(self, x):
        x = ops.cast(x, self.compute_dtype)
        if self.mode == "caffe":
            x = ops.flip(x, axis=-1)
            return x - ops.convert_to_tensor(CAFFE_BGR_MEAN, self.compute_dtype)
        mean = ops.convert_to_tensor(TORCH_RGB_MEAN, self.compute_dtype)
        std = ops.convert_to_tensor(TORCH_RGB_STD, self.compute_dtype)
        return (x / 255.0 - mean) / std

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


@keras.saving.register_keras_serializable(package="fcnseg")
class BilinearUpsampling(keras.initializers.Initializer):
    """Transposed-convolution kernel that performs bilinear upsampling, class by class."""

    def __call__(self, shape, dtype=None):
        return ops.convert_to_tensor(bilinear_kernel(shape), dtype=dtype or "float32")

    def get_config(self):
        return {}


def bilinear_kernel(shape) -> np.ndarray:
    """Kernel of shape (k, k, out, in) that maps channel i to channel i bilinearly."""
    size, size_w, out_ch, in_ch = shape
    if size != size_w or out_ch != in_ch:
        raise ValueError(f"bilinear kernel needs a square kernel and out == in, got {shape}")
    factor = (size + 1) // 2
    centre = factor - 1 if size % 2 == 1 else factor - 0.5
    og = np.arange(size, dtype=np.float64)
    filt1d = 1 - np.abs(og - centre) / factor
    filt = np.outer(filt1d, filt1d).astype(np.float32)
    kernel = np.zeros(shape, dtype=np.float32)
    for c in range(in_ch):
        kernel[:, :, c, c] = filt
    return kernel


def _vgg16(x):
    """VGG16 conv blocks with Keras' layer names; returns pool3, pool4, pool5."""
    pools = []
    for b, (width, n) in enumerate(VGG_BLOCKS, start=1):
        for i in range(1, n + 1):
            x = layers.Conv2D(width, 3, padding="same", activation="relu",
                              name=f"block{b}_conv{i}")(x)
        x = layers.MaxPooling2D(2, strides=2, name=f"block{b}_pool")(x)
        pools.append(x)
    return pools[2], pools[3], pools[4]


def _upscore(num_classes: int, factor: int, name: str):
    return layers.Conv2DTranspose(
        num_classes, 2 * factor, strides=factor, padding="same", use_bias=False,
        kernel_initializer=BilinearUpsampling(), name=name)


def build_fcn8s(num_classes: int, input_shape=(None, None, 3), fc_width: int = 4096,
                dropout: float = 0.5, encoder_weights: str | None = None,
                normalization: str = "caffe", name: str = "fcn8s") -> keras.Model:
    """Build FCN-8s.

    encoder_weights: None (random), 'imagenet' (Keras' download) or a path to a local .h5
    file in Keras' VGG16 layout. When the file also holds VGG16's fc1/fc2 and fc_width is
    4096, they are reshaped into fc6/fc7 as in the paper.
    """
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}")
    h, w = input_shape[0], input_shape[1]
    for side in (h, w):
        if side is not None and side % 32:
            raise ValueError(f"input sides must be multiples of 32, got {input_shape[:2]}")

    images = keras.Input(shape=tuple(input_shape), name="images")
    x = InputNormalization(normalization, name="normalize")(images)
    pool3, pool4, pool5 = _vgg16(x)

    x = layers.Conv2D(fc_width, 7, padding="same", activation="relu", name="fc6")(pool5)
    x = layers.Dropout(dropout, name="drop6")(x)
    x = layers.Conv2D(fc_width, 1, activation="relu", name="fc7")(x)
    x = layers.Dropout(dropout, name="drop7")(x)
    # Score layers start at zero as in the paper, so training begins from the bilinear path.
    score_fr = layers.Conv2D(num_classes, 1, kernel_initializer="zeros", name="score_fr")(x)

    upscore2 = _upscore(num_classes, 2, "upscore2")(score_fr)
    pool4_scaled = layers.Rescaling(POOL4_SCALE, name="scale_pool4")(pool4)
    score_pool4 = layers.Conv2D(num_classes, 1, kernel_initializer="zeros",
                                name="score_pool4")(pool4_scaled)
    fuse_pool4 = layers.Add(name="fuse_pool4")([upscore2, score_pool4])

    upscore_pool4 = _upscore(num_classes, 2, "upscore_pool4")(fuse_pool4)
    pool3_scaled = layers.Rescaling(POOL3_SCALE, name="scale_pool3")(pool3)
    score_pool3 = layers.Conv2D(num_classes, 1, kernel_initializer="zeros",
                                name="score_pool3")(pool3_scaled)
    fuse_pool3 = layers.Add(name="fuse_pool3")([upscore_pool4, score_pool3])

    logits = _upscore(num_classes, 8, "upscore8")(fuse_pool3)
    # Softmax in float32 so mixed-precision training keeps stable probabilities.
    probs = layers.Softmax(axis=-1, dtype="float32", name="probabilities")(logits)
    model = keras.Model(images, probs, name=name)

    if encoder_weights is not None:
        load_encoder_weights(model, encoder_weights, fc_width=fc_width)
    return model
