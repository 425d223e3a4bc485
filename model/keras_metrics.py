"""Keras training metrics that skip ignored pixels (contract.names.IGNORE_LABEL)."""
import keras
from keras import ops

from contract.names import IGNORE_LABEL

IGNORE = IGNORE_LABEL


@keras.saving.register_keras_serializable(package="fcnseg")
class MaskedAccuracy(keras.metrics.Mean):
    """Pixel accuracy over the pixels that are not ignored."""

    def __init__(self, name="pixel_accuracy", **kwargs):
        super().__init__(name=name, **kwargs)

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_true = ops.cast(y_true, "int32")
        valid = ops.cast(ops.not_equal(y_true, IGNORE), "float32")
        correct = ops.equal(ops.cast(ops.argmax(y_pred, axis=-1), "int32"), y_true)
        super().update_state(ops.cast(correct, "float32"), sample_weight=valid)


@keras.saving.register_keras_serializable(package="fcnseg")
class MaskedCrossEntropy(keras.metrics.Mean):
    """Mean cross-entropy from logits over the pixels that are not ignored.

    The training `loss` also holds the L2 term of the kernels; this is the data term alone
    (KittiSeg logs the two apart too)."""

    def __init__(self, name="xentropy", **kwargs):
        super().__init__(name=name, **kwargs)

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_true = ops.cast(y_true, "int32")
        valid = ops.not_equal(y_true, IGNORE)
        safe = ops.where(valid, y_true, ops.zeros_like(y_true))
        ce = ops.sparse_categorical_crossentropy(safe, ops.cast(y_pred, "float32"),
                                                 from_logits=True)
        super().update_state(ce, sample_weight=ops.cast(valid, "float32"))


def iou_metric(num_classes: int):
    """Road IoU for binary tasks, mean IoU otherwise; named 'iou' either way."""
    if num_classes == 2:
        return keras.metrics.IoU(num_classes, target_class_ids=[1], name="iou",
                                 sparse_y_pred=False, ignore_class=IGNORE)
    return keras.metrics.MeanIoU(num_classes, name="iou", sparse_y_pred=False,
                                 ignore_class=IGNORE)
