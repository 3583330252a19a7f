"""Decoding one image file for training: the device layer's decoder, so that training, export's
validation, ``edgeft predict`` and every app decode a file to the same pixels.

:func:`edgeft.targets.load_image` does the work (JPEG draft decoding, EXIF orientation,
transparency over white, 16-bit and float pixels onto 0..255, one image at a time); a file it
cannot use raises :class:`edgeft.targets.ImageError`, whose ``reason`` (a :class:`SkipReason`)
and ``detail`` go into the run's manifest.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeft.targets import ImageError, SkipReason, load_image

__all__ = ["IMAGE_SUFFIXES", "ImageError", "SkipReason", "decode_image"]

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})


def decode_image(path: Path, size: int) -> np.ndarray:
    """Decode ``path`` to a ``(size, size, 3)`` uint8 RGB array, or raise :class:`edgeft.targets.ImageError`."""
    return load_image(Path(path), (size, size))
