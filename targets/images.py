"""Any image an app holds -> uint8 RGB pixels at the model's input size: the one image decoder.

Training (``edgeft.data.decode_image``), ``edgeft predict``, ``edgeft.runtime`` and a bundle's app
all decode files here: JPEG draft decoding (a 10000x10000 photo costs little memory), first frame of
animations, EXIF orientation, transparency composited over white, 16-bit and float pixels scaled
onto 0..255, Pillow's bilinear resize with ``reducing_gap=3.0``. Standard library, numpy and Pillow
only (Pillow is optional for numpy arrays, needed for files).
"""

from __future__ import annotations

import os
import warnings
from enum import Enum
from typing import Any, Optional, Tuple

from .contract import DeviceError
from .preprocess import resize_images

# Decompression-bomb guard, raised from Pillow's default (89 Mpx) so that real 10000x10000 photos load.
MAX_PIXELS = 400_000_000


class SkipReason(str, Enum):
    """Why an image file cannot be used; training skips such files and lists them by this reason."""

    EMPTY = "empty file"
    NOT_AN_IMAGE = "not an image"
    TRUNCATED = "truncated or corrupted image"
    UNREADABLE = "unreadable file"
    TOO_LARGE = "image too large"


_ORIENTATION = 0x0112  # EXIF tag; 2-8 are mirrored or rotated


class ImageError(DeviceError):
    """An image the classifier cannot use (unreadable file, empty image, wrong array type or shape).

    For a file, ``reason`` (a :class:`SkipReason`) says why and ``detail`` says what, without the path.
    """

    def __init__(self, message: str, reason: Optional[SkipReason] = None, detail: str = "") -> None:
        super().__init__(message)
        self.reason = reason
        self.detail = detail or message


def _pil() -> Any:
    try:
        from PIL import Image, ImageOps  # type: ignore
    except ImportError:
        raise ImageError("reading image files needs Pillow: pip install pillow")
    return Image, ImageOps


def _bilinear(image_module: Any) -> Any:
    resampling = getattr(image_module, "Resampling", None)  # Pillow >= 9.1
    return resampling.BILINEAR if resampling is not None else image_module.BILINEAR


def _to_8bit(image: Any) -> Any:
    """Map 16-bit, 32-bit integer and float pixels onto 0..255 (Pillow's own conversion clips them).

    Pillow converts an ``I;16`` pixel of 40000 to 255, so a 16-bit photo would decode all white.
    Integer data is scaled by the range its values use (8, 16 bit or its maximum); float data in 0..1
    is taken as a fraction of full scale.
    """
    if not (image.mode.startswith("I") or image.mode == "F"):
        return image
    import numpy as np

    Image, _ = _pil()
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


def _to_rgb(image: Any) -> Any:
    """A loaded PIL image -> RGB, upright (EXIF), transparency over white, 16-bit/float onto 0..255."""
    Image, ImageOps = _pil()
    image.load()
    # exif_transpose's own test: it and convert() copy even an upright RGB image; only copy when they change it
    if image.getexif().get(_ORIENTATION, 1) in range(2, 9):
        image = ImageOps.exif_transpose(image)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    image = _to_8bit(image)
    return image if image.mode == "RGB" else image.convert("RGB")


def _check_size(width: int, height: int, what: str) -> None:
    if width <= 0 or height <= 0:
        raise ImageError("%s is empty (%dx%d pixels)" % (what, width, height), SkipReason.EMPTY)


def _resize_pil(image: Any, height: int, width: int) -> Any:
    import numpy as np

    Image, _ = _pil()
    if image.size != (width, height):
        image = image.resize((width, height), _bilinear(Image), reducing_gap=3.0)
    return np.asarray(image, dtype=np.uint8).copy()


def _decode_failure(path: str, error: BaseException) -> ImageError:
    """Pillow's many exception types for a file it cannot decode -> one :class:`ImageError` with a reason."""
    name = type(error).__name__
    if name == "UnidentifiedImageError":
        reason, detail = SkipReason.NOT_AN_IMAGE, "not a recognised image format"
    elif name == "DecompressionBombError":
        reason, detail = SkipReason.TOO_LARGE, str(error)
    elif isinstance(error, MemoryError):
        reason, detail = SkipReason.TOO_LARGE, "out of memory while decoding"
    else:  # OSError, SyntaxError, ValueError, EOFError, ... from a truncated or damaged file
        reason, detail = SkipReason.TRUNCATED, str(error).splitlines()[0] if str(error) else name
    return ImageError("cannot decode image %s: %s" % (path, detail), reason, detail)


def load_file(path: str, height: int, width: int) -> Any:
    """Decode an image file to uint8 RGB (height, width, 3); raise :class:`ImageError` with a ``reason``."""
    Image, _ = _pil()
    if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < MAX_PIXELS:
        Image.MAX_IMAGE_PIXELS = MAX_PIXELS
    try:
        size = os.stat(path).st_size
    except OSError as error:
        detail = str(error.strerror or error)
        raise ImageError("cannot read image %s: %s" % (path, detail), SkipReason.UNREADABLE, detail)
    if os.path.isdir(path):
        raise ImageError("%s is a folder, not an image file" % path, SkipReason.UNREADABLE, "a folder")
    if size == 0:
        raise ImageError("image file %s is empty (0 bytes)" % path, SkipReason.EMPTY, "zero bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as image:
                if image.format == "JPEG":
                    # Decode at the smallest scale that still exceeds the target (keeps memory flat).
                    image.draft("RGB", (width * 2, height * 2))
                image.seek(0)  # first frame of GIF / WebP animations
                image.load()
                _check_size(image.size[0], image.size[1], "image %s" % path)
                return _resize_pil(_to_rgb(image), height, width)
    except ImageError:
        raise
    except Exception as error:  # Pillow raises many types for unreadable, truncated or unknown files
        raise _decode_failure(path, error)


def load_pil(image: Any, height: int, width: int) -> Any:
    """A PIL image (any mode) -> uint8 RGB (height, width, 3), as training's decoder does."""
    _check_size(image.size[0], image.size[1], "the image")
    return _resize_pil(_to_rgb(image), height, width)


def load_array(array: Any, height: int, width: int) -> Any:
    """A numpy image: uint8 (H, W, 3) RGB; (H, W) or (H, W, 1) grayscale and (H, W, 4) RGBA are converted."""
    import numpy as np

    array = np.asarray(array)
    if array.dtype != np.uint8:
        raise ImageError("an image array must be uint8 RGB (H, W, 3) with values 0-255, got %s %s "
                         "(convert floats with (x * 255).round().astype(np.uint8))"
                         % (array.dtype, tuple(array.shape)))
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise ImageError("an image array must be (H, W, 3) RGB, (H, W) grayscale or (H, W, 4) RGBA, got shape %s"
                         % (tuple(array.shape),))
    _check_size(array.shape[1], array.shape[0], "the image array")
    if array.ndim == 3 and array.shape[-1] == 3 and array.shape[:2] == (height, width):
        return np.ascontiguousarray(array)  # already the model's size: nothing to resize
    if array.ndim == 3 and array.shape[-1] == 3:
        try:
            _pil()
        except ImageError:  # no Pillow on this device: the numpy twin of Pillow's filter
            return resize_images(array[None], height, width)[0]
    Image, _ = _pil()
    # uint8 (H, W) / (H, W, 3) / (H, W, 4) arrays open as L / RGB / RGBA
    image = Image.fromarray(np.ascontiguousarray(array))
    if image.mode != "RGB":  # an RGB array has no EXIF and no alpha: skip the conversion copies
        image = _to_rgb(image)
    return _resize_pil(image, height, width)


def load_image(image: Any, size: Tuple[int, int]) -> Any:
    """A path, PIL image or numpy array -> uint8 RGB pixels (height, width, 3) for a model of ``size``."""
    height, width = int(size[0]), int(size[1])
    if isinstance(image, (str, os.PathLike)):
        return load_file(os.fspath(image), height, width)
    if hasattr(image, "getbands") and hasattr(image, "size"):
        return load_pil(image, height, width)
    if hasattr(image, "__array__") or isinstance(image, (list, tuple)):
        return load_array(image, height, width)
    raise ImageError("an image must be a file path, a PIL image or a numpy array, got %s" % type(image).__name__)
