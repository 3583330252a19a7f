"""Decoding one image file into a fixed-size RGB uint8 array.

Images are decoded and resized one at a time, and JPEGs are decoded at reduced scale
(PIL's draft mode) when far larger than the target, so a 10000x10000 photo costs
little memory. EXIF orientation is applied; grayscale, palette, CMYK and RGBA become RGB.
"""

from __future__ import annotations

import warnings
from enum import Enum
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
# Decompression-bomb guard, raised from PIL's default (89 Mpx) so that real 10000x10000 photos load.
MAX_PIXELS = 400_000_000


class SkipReason(str, Enum):
    """Why a file in the data directory was not used."""

    EMPTY = "empty file"
    NOT_AN_IMAGE = "not an image"
    TRUNCATED = "truncated or corrupted image"
    UNREADABLE = "unreadable file"
    TOO_LARGE = "image too large"


class ImageDecodeError(Exception):
    """A file could not be decoded; ``reason`` says why."""

    def __init__(self, reason: SkipReason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def decode_image(path: Path, size: int) -> np.ndarray:
    """Decode ``path`` to a ``(size, size, 3)`` uint8 RGB array, or raise :class:`ImageDecodeError`."""
    from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

    Image.MAX_IMAGE_PIXELS = MAX_PIXELS
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise ImageDecodeError(SkipReason.EMPTY, "zero bytes")
    except OSError as error:
        raise ImageDecodeError(SkipReason.UNREADABLE, str(error)) from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as image:
                if image.format == "JPEG":
                    # Decode at the smallest scale that still exceeds the target (keeps memory flat).
                    image.draft("RGB", (size * 2, size * 2))
                image.seek(0)  # first frame of GIF / WebP animations
                image.load()
                image = ImageOps.exif_transpose(image)
                if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
                    rgba = image.convert("RGBA")
                    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                    image = Image.alpha_composite(background, rgba)
                image = image.convert("RGB")
                image = image.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=3.0)
                return np.asarray(image, dtype=np.uint8).copy()
    except ImageDecodeError:
        raise
    except UnidentifiedImageError:
        raise ImageDecodeError(SkipReason.NOT_AN_IMAGE, "not a recognised image format") from None
    except Image.DecompressionBombError as error:
        raise ImageDecodeError(SkipReason.TOO_LARGE, str(error)) from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise ImageDecodeError(SkipReason.TRUNCATED, str(error) or type(error).__name__) from None
    except MemoryError:
        raise ImageDecodeError(SkipReason.TOO_LARGE, "out of memory while decoding") from None
