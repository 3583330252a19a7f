"""Decoding one image file into a fixed-size RGB uint8 array.

Images are decoded and resized one at a time, and JPEGs are decoded at reduced scale
(PIL's draft mode) when far larger than the target, so a 10000x10000 photo costs
little memory. EXIF orientation is applied; grayscale, palette, CMYK and RGBA become RGB;
16-bit, 32-bit integer and float images are scaled onto 0..255.
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


def _to_8bit(image: "PIL.Image.Image") -> "PIL.Image.Image":
    """Map 16-bit, 32-bit integer and float pixels onto 0..255 (Pillow's own conversion clips them).

    Pillow converts an ``I;16`` pixel of 40000 to 255, so a 16-bit photo would decode all white.
    Integer data is scaled by the range its values use (8, 16 bit or its maximum); float data in 0..1
    is taken as a fraction of full scale.
    """
    from PIL import Image

    if not (image.mode.startswith("I") or image.mode == "F"):
        return image
    values = np.asarray(image, dtype=np.float64)
    finite = values[np.isfinite(values)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    if image.mode == "F" and low >= 0.0 and high <= 1.0:
        scale = 255.0
    elif low >= 0.0 and high <= 255.0 and not image.mode.startswith("I;16"):
        scale = 1.0
    elif low >= 0.0 and high <= 65535.0:
        scale = 255.0 / 65535.0
    else:
        values = values - low
        scale = 255.0 / (high - low) if high > low else 1.0
    pixels = np.clip(np.nan_to_num(values * scale), 0, 255).round().astype(np.uint8)
    return Image.fromarray(pixels, mode="L")


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
                image = _to_8bit(image).convert("RGB")
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
