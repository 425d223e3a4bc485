"""FCN-32s / FCN-16s / FCN-8s (Long, Shelhamer, Darrell, 2015) on a Keras VGG16 encoder.

The network takes raw RGB pixels (float, 0..255) of any height and width that are multiples
of 32, normalises them inside the graph, and returns per-pixel class probabilities at input
resolution. Because VGG16 here uses 'same' padding, pool3/pool4/pool5 are exactly 1/8, 1/16
and 1/32 of the input, so the skips add without the crop layers of the original Caffe model.

Skips: the paper's at-once FCN-8s multiplies pool4 by 0.01 and pool3 by 0.0001 before their
score layers; that was tuned for SGD with momentum 0.99. Under Adam every weight moves by about
the learning rate per step whatever its gradient's scale, so the scaled skips stay 100x and
10,000x too small and the model trains as an FCN-32s. As KittiSeg (tensorflow-fcn's
fcn8_vgg.py, `_score_layer`) does, we do not scale the inputs and start the skip score layers
with small random weights instead (stddev 1e-3 for pool4, 1e-4 for pool3, He for score_fr).

The last layer before the softmax is `logits` (float32); training uses `logits_model(model)`
so that the loss is computed from logits, while the saved model outputs probabilities.
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

VARIANTS = ("fcn32s", "fcn16s", "fcn8s")
# Initial stddev of the skip score layers (KittiSeg / tensorflow-fcn fcn8_vgg.py).
POOL4_INIT_STDDEV = 1e-3
POOL3_INIT_STDDEV = 1e-4
# Score layers whose outputs are summed (the paper's names), by variant.
SCORE_LAYERS = {"fcn32s": ("score_fr",), "fcn16s": ("score_fr", "score_pool4"),
                "fcn8s": ("score_fr", "score_pool4", "score_pool3")}
LOGITS = "logits"

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


def _l2(weight_decay: float):
    # KittiSeg adds wd * tf.nn.l2_loss(kernel) = wd * sum(w^2) / 2 per conv kernel.
    return keras.regularizers.L2(weight_decay / 2) if weight_decay else None


def _vgg16(x, weight_decay: float = 0.0):
    """VGG16 conv blocks with Keras' layer names; returns pool3, pool4, pool5."""
    pools = []
    for b, (width, n) in enumerate(VGG_BLOCKS, start=1):
        for i in range(1, n + 1):
            x = layers.Conv2D(width, 3, padding="same", activation="relu",
                              kernel_regularizer=_l2(weight_decay),
                              name=f"block{b}_conv{i}")(x)
        x = layers.MaxPooling2D(2, strides=2, name=f"block{b}_pool")(x)
        pools.append(x)
    return pools[2], pools[3], pools[4]


def _upscore(num_classes: int, factor: int, name: str):
    # Bilinear start, trainable as in the paper's upscore2 layers; never weight-decayed.
    return layers.Conv2DTranspose(
        num_classes, 2 * factor, strides=factor, padding="same", use_bias=False,
        kernel_initializer=BilinearUpsampling(), name=name)


def _score(num_classes: int, stddev: float, weight_decay: float, name: str):
    return layers.Conv2D(num_classes, 1, name=name, kernel_regularizer=_l2(weight_decay),
                         kernel_initializer=keras.initializers.TruncatedNormal(stddev=stddev))


def build_fcn8s(num_classes: int, input_shape=(None, None, 3), fc_width: int = 4096,
                dropout: float = 0.5, encoder_weights: str | None = None,
                normalization: str = "caffe", name: str | None = None,
                variant: str = "fcn8s", weight_decay: float = 0.0) -> keras.Model:
    """Build FCN-8s (or the paper's FCN-16s / FCN-32s ablations with `variant`).

    encoder_weights: None (random), 'imagenet' (Keras' download) or a path to a local .h5
    file in Keras' VGG16 layout. When the file also holds VGG16's fc1/fc2 and fc_width is
    4096, they are reshaped into fc6/fc7 as in the paper.
    weight_decay: L2 coefficient on conv kernels (encoder, fc6/fc7, score layers), as
    KittiSeg's wd; biases and the bilinear upsampling kernels are not decayed.
    """
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}")
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    h, w = input_shape[0], input_shape[1]
    for side in (h, w):
        if side is not None and side % 32:
            raise ValueError(f"input sides must be multiples of 32, got {input_shape[:2]}")
    wd = weight_decay

    images = keras.Input(shape=tuple(input_shape), name="images")
    x = InputNormalization(normalization, name="normalize")(images)
    pool3, pool4, pool5 = _vgg16(x, wd)

    x = layers.Conv2D(fc_width, 7, padding="same", activation="relu",
                      kernel_regularizer=_l2(wd), name="fc6")(pool5)
    x = layers.Dropout(dropout, name="drop6")(x)
    x = layers.Conv2D(fc_width, 1, activation="relu", kernel_regularizer=_l2(wd),
                      name="fc7")(x)
    x = layers.Dropout(dropout, name="drop7")(x)
    score = _score(num_classes, (2 / fc_width) ** 0.5, wd, "score_fr")(x)

    if variant == "fcn32s":
        logits = _upscore(num_classes, 32, "upscore32")(score)
    else:
        score = _upscore(num_classes, 2, "upscore2")(score)
        score_pool4 = _score(num_classes, POOL4_INIT_STDDEV, wd, "score_pool4")(pool4)
        score = layers.Add(name="fuse_pool4")([score, score_pool4])
        if variant == "fcn16s":
            logits = _upscore(num_classes, 16, "upscore16")(score)
        else:
            score = _upscore(num_classes, 2, "upscore_pool4")(score)
            score_pool3 = _score(num_classes, POOL3_INIT_STDDEV, wd, "score_pool3")(pool3)
            score = layers.Add(name="fuse_pool3")([score, score_pool3])
            logits = _upscore(num_classes, 8, "upscore8")(score)
    # float32 logits and softmax so mixed-precision training keeps a stable loss and
    # probabilities.
    logits = layers.Activation("linear", dtype="float32", name=LOGITS)(logits)
    probs = layers.Softmax(axis=-1, dtype="float32", name="probabilities")(logits)
    model = keras.Model(images, probs, name=name or variant)

    if encoder_weights is not None:
        load_encoder_weights(model, encoder_weights, fc_width=fc_width)
    return model


def variant_of(model) -> str:
    """'fcn8s', 'fcn16s' or 'fcn32s' from the layers present (works for old checkpoints)."""
    names = {layer.name for layer in model.layers}
    if "score_pool3" in names:
        return "fcn8s"
    return "fcn16s" if "score_pool4" in names else "fcn32s"


def logits_model(model) -> keras.Model:
    """The same network (shared weights) ending at its logits, for a loss from logits."""
    try:
        logits = model.get_layer(LOGITS).output
    except ValueError:
        raise ValueError(
            f"model {model.name!r} has no {LOGITS!r} layer: it was saved by fcnseg before "
            f"training from logits (its skips were fixed-scaled). It still loads for "
            f"inference, export and evaluation, but cannot be trained further; start a new "
            f"run") from None
    return keras.Model(model.input, logits, name=f"{model.name}_logits")


def free_size_config(config: dict) -> dict:
    """A functional model's config with its input's height and width left free (in place).

    Training fixes them to the training geometry; the network itself is fully convolutional,
    so a copy built from this config runs at any size whose sides are multiples of 32."""
    for layer in config["layers"]:
        if layer["class_name"] == "InputLayer":
            shape = list(layer["config"]["batch_shape"])
            layer["config"]["batch_shape"] = (shape[0], *([None] * (len(shape) - 2)), shape[-1])
    return config


def with_free_size(model) -> keras.Model:
    """`model` itself when its input already takes any size, else a copy (weights copied)."""
    if all(d is None for d in model.input_shape[1:3]):
        return model
    copy = keras.Model.from_config(free_size_config(model.get_config()))
    copy.set_weights(model.get_weights())
    return copy
