"""Which files are images: the one list every reader of "a folder of images" uses (training,
evaluation, the Beam job, the serving CLI)."""
from __future__ import annotations

# Compared lower-case.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")


def is_image_name(name: str) -> bool:
    return str(name).lower().endswith(IMAGE_EXTENSIONS)
