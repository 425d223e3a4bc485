"""Tiny FCN-8s models for tests whose outputs depend on the input and on every skip.

FCN starts its three score layers at zero (model/fcn8s.py, as in the paper), so an untrained
model answers 0.5 / class 0 for every pixel: a test built on it cannot tell a mirrored ground
truth or a flipped class id from the right answer. These helpers give the score layers random
weights, scaled up by the inverse of the skip scaling (pool4 x 0.01, pool3 x 0.0001) so that
the pool4 and pool3 streams change the masks too and a dropped skip is visible.
"""
from __future__ import annotations

import numpy as np

SCORE_LAYERS = (("score_fr", 1.0), ("score_pool4", 30.0), ("score_pool3", 300.0))


def randomize_scores(model, seed: int = 0):
    """Random score layers (normal, std scale / sqrt(fan-in)); returns the model."""
    rng = np.random.default_rng(seed)
    for name, scale in SCORE_LAYERS:
        layer = model.get_layer(name)
        kernel, bias = layer.get_weights()
        kernel = rng.normal(0.0, scale / np.sqrt(kernel.shape[2]), kernel.shape)
        layer.set_weights([kernel.astype("float32"), bias])
    return model


def tiny_fcn(num_classes: int, image_size, seed: int = 0, fc_width: int = 16):
    """An FCN-8s at `image_size` (H, W) with random encoder and random score layers."""
    import keras

    from model.fcn8s import build_fcn8s

    keras.utils.set_random_seed(seed)
    model = build_fcn8s(num_classes, (*image_size, 3), fc_width=fc_width)
    return randomize_scores(model, seed)
