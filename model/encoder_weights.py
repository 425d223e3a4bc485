"""VGG16 encoder weights for FCN-8s: Keras' ImageNet download or a local .h5 file.

Local files may use either layout Keras writes:
- Keras 2 / the files Keras downloads: one HDF5 group per layer, `weight_names` attribute
  listing kernel then bias (`keras.applications.VGG16(...).save_weights('x.h5')` in Keras 2);
- Keras 3 `.weights.h5` (`model.save_weights('x.weights.h5')`): `layers/conv2d_<i>/vars/0, 1`,
  keyed by layer class and position, not by layer name.
We read them with h5py ourselves so that loading works offline and every mismatch is
reported by layer name and shape.
"""
from __future__ import annotations

import os

import h5py
import numpy as np

# Keras' published VGG16 weights (keras/src/applications/vgg16.py) with their md5 sums.
WEIGHTS_BASE_URL = "https://storage.googleapis.com/tensorflow/keras-applications/vgg16/"
IMAGENET_FILES = {
    "top": ("vgg16_weights_tf_dim_ordering_tf_kernels.h5", "64373286793e3c8b2b4e3219cbf3544b"),
    "notop": ("vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
              "6d6bbae143d832006294945121d1f1fc"),
}
CONV_LAYERS = [f"block{b}_conv{i}" for b, n in enumerate((2, 2, 3, 3, 3), 1)
               for i in range(1, n + 1)]


class WeightsMismatchError(ValueError):
    """A weights file does not fit the encoder."""


class WeightsDownloadError(RuntimeError):
    """Keras' ImageNet weights could not be fetched (no network, blocked, server error)."""


def download_imagenet_weights(include_fc: bool, base_url: str = WEIGHTS_BASE_URL,
                              cache_dir: str | None = None) -> str:
    """Fetch (or reuse from Keras' cache) VGG16 ImageNet weights; md5 is verified."""
    import keras

    fname, md5 = IMAGENET_FILES["top" if include_fc else "notop"]
    url = base_url + fname
    try:
        return keras.utils.get_file(fname, url, cache_subdir="models",
                                    file_hash=md5, hash_algorithm="md5", cache_dir=cache_dir)
    except ValueError:
        raise  # a checksum mismatch: the file came, but corrupt
    except Exception as e:  # get_file wraps URLError/HTTPError in a plain Exception
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise WeightsDownloadError(
            f"cannot download the VGG16 ImageNet weights from {url} ({reason}); either "
            f"fetch that file elsewhere and pass its path (--encoder-weights /path/{fname}), "
            f"or train from random weights (--encoder-weights none)") from None


def read_h5_weights(path: str) -> dict[str, list[np.ndarray]]:
    """Layer name -> [kernel, bias] from a Keras-applications style .h5 file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"encoder weights file not found: {path}")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise WeightsMismatchError(f"{path}: not a readable HDF5 weights file ({e})") from e
    with f:
        out = _keras2_layout(f["model_weights"] if "model_weights" in f else f)
        if not out and "layers" in f:
            out = _keras3_layout(f["layers"])
        return out


def _keras2_layout(root) -> dict[str, list[np.ndarray]]:
    out = {}
    for name, group in root.items():
        if not isinstance(group, h5py.Group):
            continue
        names = [n.decode() if isinstance(n, bytes) else n
                 for n in group.attrs.get("weight_names", [])]
        if names:
            out[name] = [np.asarray(group[n]) for n in names]
    return out


def _keras3_layout(layers) -> dict[str, list[np.ndarray]]:
    """Keras 3 keys layers by class, not by layer name: layers/conv2d, conv2d_1, ... and
    dense, dense_1, ... in the model's layer order (a per-class counter in
    keras/src/saving/saving_lib.py). VGG16's first 13 convolutions are block1_conv1 ..
    block5_conv3 in that order, its first two dense layers fc1 and fc2."""
    def numbered(prefix):
        found = [k for k in layers if k == prefix or (k.startswith(prefix + "_")
                                                       and k[len(prefix) + 1:].isdigit())]
        found.sort(key=lambda k: 0 if k == prefix else int(k[len(prefix) + 1:]) + 1)
        return [_vars(layers[k]) for k in found]

    def _vars(group):
        variables = group.get("vars")
        if not isinstance(variables, h5py.Group):
            return []
        return [np.asarray(variables[k]) for k in sorted(variables, key=int)]

    out = dict(zip(CONV_LAYERS, numbered("conv2d")))
    dense = numbered("dense")
    if len(dense) >= 2 and dense[0] and dense[0][0].ndim == 2:
        out["fc1"], out["fc2"] = dense[0], dense[1]
    return {k: v for k, v in out.items() if v}


def load_encoder_weights(model, weights: str, fc_width: int = 4096,
                         base_url: str = WEIGHTS_BASE_URL) -> None:
    """Set VGG16 conv (and, when present and fc_width is 4096, fc6/fc7) weights on `model`."""
    if weights == "imagenet":
        path = download_imagenet_weights(include_fc=fc_width == 4096, base_url=base_url)
    else:
        path = weights
    stored = read_h5_weights(path)
    missing = [n for n in CONV_LAYERS if n not in stored]
    if missing:
        raise WeightsMismatchError(
            f"{path}: missing VGG16 layers {missing}; found {sorted(stored)[:20]}")
    for name in CONV_LAYERS:
        _assign(model.get_layer(name), stored[name], path, name)

    if fc_width == 4096 and "fc1" in stored and "fc2" in stored:
        # The paper's "convolutionalisation": fc1 sees a 7x7x512 flattened pool5.
        k1, b1 = stored["fc1"]
        k2, b2 = stored["fc2"]
        if k1.shape != (7 * 7 * 512, 4096) or k2.shape != (4096, 4096):
            raise WeightsMismatchError(
                f"{path}: fc1/fc2 have shapes {k1.shape}/{k2.shape}, "
                "expected (25088, 4096)/(4096, 4096)")
        _assign(model.get_layer("fc6"), [k1.reshape(7, 7, 512, 4096), b1], path, "fc1")
        _assign(model.get_layer("fc7"), [k2.reshape(1, 1, 4096, 4096), b2], path, "fc2")


def _assign(layer, arrays, path, stored_name):
    expected = [tuple(w.shape) for w in layer.weights]
    got = [tuple(a.shape) for a in arrays]
    if expected != got:
        raise WeightsMismatchError(
            f"{path}: layer {stored_name!r} has shapes {got}, model layer {layer.name!r} "
            f"expects {expected}")
    layer.set_weights(arrays)
