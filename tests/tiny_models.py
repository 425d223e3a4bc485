"""Tiny FCN-8s models for tests whose outputs depend on the input and on every skip.

FCN's score layers start at zero in the paper and near zero here (model/fcn8s.py: the pool4
and pool3 skips at stddev 1e-3 and 1e-4, as KittiSeg), so an untrained model answers almost
the same for every pixel and its skips hardly count: a test built on it cannot tell a
mirrored ground truth, a flipped class id or a dropped skip from the right answer. These
helpers give all three score layers random weights of one scale (std 1 / sqrt(fan-in)), so
the pool4 and pool3 streams change the masks as much as the fc7 stream does.
"""
from __future__ import annotations

import numpy as np

SCORE_LAYERS = (("score_fr", 1.0), ("score_pool4", 1.0), ("score_pool3", 1.0))


def randomize_scores(model, seed: int = 0):
    """Random score layers (normal, std scale / sqrt(fan-in), zero bias); returns the model."""
    rng = np.random.default_rng(seed)
    present = {layer.name for layer in model.layers}
    for name, scale in SCORE_LAYERS:
        if name not in present:  # FCN-16s / FCN-32s have fewer skips
            continue
        layer = model.get_layer(name)
        kernel, bias = layer.get_weights()
        kernel = rng.normal(0.0, scale / np.sqrt(kernel.shape[2]), kernel.shape)
        # Zero biases: a trained model's biases hold the class prior, which would outvote
        # the random kernels and give every pixel the majority class again.
        layer.set_weights([kernel.astype("float32"), np.zeros_like(bias)])
    return model


def tiny_fcn(num_classes: int, image_size, seed: int = 0, fc_width: int = 16):
    """An FCN-8s at `image_size` (H, W) with random encoder and random score layers."""
    import keras

    from model.fcn8s import build_fcn8s

    keras.utils.set_random_seed(seed)
    model = build_fcn8s(num_classes, (*image_size, 3), fc_width=fc_width)
    return randomize_scores(model, seed)


def balance_road(model, image: np.ndarray):
    """Shift the road logit by its median road-vs-not-road margin on `image` (float32
    [H, W, 3] at the model's input size): a random encoder's features are all positive, which
    puts every pixel in one class; after the shift the model says road for about half of the
    pixels, so masks split and a wrong geometry or a wrong order shows."""
    import keras

    logits = np.asarray(keras.Model(model.input, model.get_layer("logits").output)(
        np.asarray(image, np.float32)[None]))
    layer = model.get_layer("score_pool3")
    kernel, bias = layer.get_weights()
    bias[1] -= np.median(logits[..., 1] - logits[..., 0])
    layer.set_weights([kernel, bias])
    return model
