"""The copy of the Keras model that goes into the serving graph: in the chosen compute dtype,
with fc6 computed as one matrix product of its input's 7x7 patches."""
from __future__ import annotations

import warnings

import keras

from common.cpu import bfloat16_advice
from model.fcn8s import free_size_config

COMPUTE_DTYPES = ("float32", "bfloat16")
# Keras' policy for bfloat16 compute: variables stay float32 and are cast at use.
_POLICIES = {"float32": "float32", "bfloat16": "mixed_bfloat16"}


# Layers computed as patches @ kernel in the serving graph (PatchConv2D).
MATMUL_LAYERS = ("fc6",)


@keras.saving.register_keras_serializable(package="fcnseg")
class PatchConv2D(keras.layers.Conv2D):
    """A stride-1 Conv2D computed as one matmul of its input's k x k patches with the kernel
    reshaped to (k*k*in, out): the same weights, the same result up to float rounding.

    fc6, a 7x7 convolution over the small pool5 map (5x18 at 160x576), is where TensorFlow's
    CPU convolution is slowest per FLOP; as one large matmul it runs on the GEMM kernels that
    reach the machine's floor (docs/results.md, "fc6 as a matmul"). TensorFlow only: the
    export is a TensorFlow SavedModel.
    """

    def convolution_op(self, inputs, kernel):
        import tensorflow as tf

        if tuple(self.strides) != (1, 1) or tuple(self.dilation_rate) != (1, 1) \
                or self.data_format != "channels_last" or self.groups != 1:
            return super().convolution_op(inputs, kernel)
        kh, kw, cin, cout = kernel.shape
        # extract_patches lays each window out as (row, column, channel), the kernel's order
        patches = tf.image.extract_patches(inputs, [1, kh, kw, 1], [1, 1, 1, 1], [1, 1, 1, 1],
                                           self.padding.upper())
        shape = tf.shape(patches)
        out = tf.matmul(tf.reshape(patches, [-1, kh * kw * cin]),
                        tf.reshape(kernel, [kh * kw * cin, cout]))
        return tf.reshape(out, [shape[0], shape[1], shape[2], cout])


class Bfloat16SlowWarning(RuntimeWarning):
    """bfloat16 was asked for on a CPU without bfloat16 arithmetic (AVX512-BF16 or AMX)."""


def check_bfloat16_hardware() -> str | None:
    """Warn, in plain words, when this CPU would run a bfloat16 export slower than float32.

    Checked where the export is made, which is often where it is benchmarked; a server with
    AVX512-BF16 or AMX runs the same SavedModel fast. Returns the warning (None: hardware ok).
    """
    advice = bfloat16_advice()
    if advice:
        warnings.warn(advice, Bfloat16SlowWarning, stacklevel=3)
    return advice


def serving_copy(keras_model: keras.Model, compute_dtype: str = "float32",
                 matmul_layers=MATMUL_LAYERS) -> keras.Model:
    """A fresh, uncompiled copy of a functional `keras_model` computing in `compute_dtype`.

    Rebuilt from its config rather than with keras.models.clone_model, which compiles the
    copy and so allocates optimizer slots (1 GB for FCN-8s) that serving never uses. Output
    layers keep their own dtype (FCN-8s' softmax is float32), so served probabilities stay
    float32. The weights are copied, not shared. The copy's input takes any height and width
    (the network is fully convolutional), so any inference geometry can run on it. The
    Conv2D layers named in `matmul_layers` become PatchConv2D (the benchmark compares both).
    """
    if compute_dtype not in COMPUTE_DTYPES:
        raise ValueError(f"compute_dtype must be one of {COMPUTE_DTYPES}, got {compute_dtype!r}")
    if compute_dtype == "bfloat16":
        check_bfloat16_hardware()
    config = keras_model.get_config()
    if "layers" not in config or "output_layers" not in config:
        raise ValueError(f"export needs a functional Keras model, got {type(keras_model).__name__}")
    outputs = config["output_layers"]
    if outputs and isinstance(outputs[0], str):  # a single output is stored unwrapped
        outputs = [outputs]
    output_layers = {entry[0] for entry in outputs}
    for layer in config["layers"]:
        if layer["class_name"] != "InputLayer" and layer["config"]["name"] not in output_layers:
            layer["config"]["dtype"] = _POLICIES[compute_dtype]
        if layer["class_name"] == "Conv2D" and layer["config"]["name"] in matmul_layers:
            layer.update(class_name="PatchConv2D", module=PatchConv2D.__module__,
                         registered_name="fcnseg>PatchConv2D")
    copy = keras.Model.from_config(free_size_config(config))
    copy.set_weights(keras_model.get_weights())
    return copy
