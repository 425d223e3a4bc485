"""Keras training metrics that skip ignored pixels (label 255)."""
import keras
from keras import ops

IGNORE = 255


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


def iou_metric(num_classes: int):
    """Road IoU for binary tasks, mean IoU otherwise; named 'iou' either way."""
    if num_classes == 2:
        return keras.metrics.IoU(num_classes, target_class_ids=[1], name="iou",
                                 sparse_y_pred=False, ignore_class=IGNORE)
    return keras.metrics.MeanIoU(num_classes, name="iou", sparse_y_pred=False,
                                 ignore_class=IGNORE)
