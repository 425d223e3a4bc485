"""model.data.image_io: modes converted to 8-bit RGB, bad files named in the error."""
import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from model.data.image_io import (ImageReadError, decode_image_bytes, read_image, read_label_png,
                                 write_png)


def _png16(arr: np.ndarray, colour_type: int) -> bytes:
    """A 16-bit PNG written by hand (Pillow cannot write 16-bit RGB)."""
    h, w = arr.shape[:2]
    raw = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(h))

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw))
            + chunk(b"IEND", b""))


def _encode(img: Image.Image, fmt="PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def test_rgb_png_round_trip(tmp_path):
    arr = np.random.default_rng(0).integers(0, 256, (7, 9, 3), dtype=np.uint8)
    write_png(tmp_path / "a.png", arr)
    out = read_image(tmp_path / "a.png")
    assert out.dtype == np.uint8 and out.shape == (7, 9, 3)
    np.testing.assert_array_equal(out, arr)


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "LA", "CMYK"])
def test_modes_become_rgb(mode):
    base = Image.fromarray(np.array([[[10, 20, 30], [200, 100, 0]]], np.uint8))
    img = base.convert(mode) if mode != "P" else base.quantize(4)
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    out = decode_image_bytes(_encode(img, fmt), f"x.{fmt.lower()}")
    assert out.shape == (1, 2, 3) and out.dtype == np.uint8
    if mode == "L":
        assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
    if mode in ("RGBA", "P"):
        np.testing.assert_array_equal(out, np.asarray(base))


def test_16bit_gray_is_scaled_not_clipped():
    arr = np.array([[0, 257 * 128, 65535, 300]], np.uint16)
    out = decode_image_bytes(_png16(arr, 0), "gray16.png")
    # Clipping would give 255 for everything above 255; scaling keeps the gradation.
    np.testing.assert_array_equal(out[..., 0], [[0, 128, 255, 1]])
    assert (out[..., 0] == out[..., 2]).all()


def test_16bit_rgb_is_8bit():
    arr = np.stack([np.array([[0, 65535, 32896]], np.uint16)] * 3, axis=-1)
    out = decode_image_bytes(_png16(arr, 2), "rgb16.png")
    np.testing.assert_array_equal(out[0, :, 0], [0, 255, 128])


def test_missing_file_named(tmp_path):
    with pytest.raises(ImageReadError, match=r"nope\.png: file not found"):
        read_image(tmp_path / "nope.png")


def test_empty_file_named(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageReadError, match=r"empty\.png: empty file"):
        read_image(tmp_path / "empty.png")


def test_not_an_image_named(tmp_path):
    (tmp_path / "notes.jpg").write_text("hello, I am text")
    with pytest.raises(ImageReadError, match=r"notes\.jpg: not an image"):
        read_image(tmp_path / "notes.jpg")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_file_named(tmp_path, fmt):
    img = Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    data = _encode(img, fmt)
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match=rf"cut\.{fmt.lower()}: truncated"):
        read_image(path)


def test_error_is_value_error_with_attributes(tmp_path):
    with pytest.raises(ValueError) as info:
        read_image(tmp_path / "x.png")
    assert info.value.name.endswith("x.png") and info.value.reason == "file not found"


def test_label_png_modes(tmp_path):
    ids = np.array([[0, 1, 2], [255, 7, 0]], np.uint8)
    write_png(tmp_path / "l.png", ids)
    np.testing.assert_array_equal(read_label_png(tmp_path / "l.png"), ids)
    p = Image.fromarray(ids, mode="L").convert("P")  # palette indices = ids
    p.putpalette(list(range(256)) * 3)
    p.save(tmp_path / "p.png")
    np.testing.assert_array_equal(read_label_png(tmp_path / "p.png"), ids)
    Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(ImageReadError, match=r"rgb\.png: expected a single-channel"):
        read_label_png(tmp_path / "rgb.png")


def test_write_png_rejects_float(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        write_png(tmp_path / "f.png", np.zeros((2, 2), np.float32))
