"""Tiny FCN-8s models for tests whose outputs depend on the input and on every skip.

The model's own skip score layers start with tiny random weights (stddev 1e-3 / 1e-4, as
KittiSeg; model/fcn8s.py), so an untrained model's pool4 and pool3 streams barely show. These
helpers give all three score layers large random weights (pool4 and pool3 scaled up most) so
that every stream changes the masks and a dropped skip is visible. A random encoder's
features are all positive, so the masks may still fall into one class on flat inputs.
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
