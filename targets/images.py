"""Any image an app holds -> uint8 RGB pixels at the model's input size, exactly as training decodes.

Training decodes files with ``edgeft.data.images.decode_image`` (JPEG draft decoding, EXIF
orientation, transparency composited over white, Pillow's bilinear resize with
``reducing_gap=3.0``). The device has no edgeft installed, so the same steps live here too;
a test checks that both give identical pixels on the same files. Standard library, numpy
and Pillow only (Pillow is optional for numpy arrays, needed for files).
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Tuple

from .contract import DeviceError
from .preprocess import resize_images


_ORIENTATION = 0x0112  # EXIF tag; 2-8 are mirrored or rotated


class ImageError(DeviceError):
    """An image the classifier cannot use (unreadable file, empty image, wrong array type or shape)."""


def _pil() -> Any:
    try:
        from PIL import Image, ImageOps  # type: ignore
    except ImportError:
        raise ImageError("reading image files needs Pillow: pip install pillow")
    return Image, ImageOps


def _bilinear(image_module: Any) -> Any:
    resampling = getattr(image_module, "Resampling", None)  # Pillow >= 9.1
    return resampling.BILINEAR if resampling is not None else image_module.BILINEAR


def _to_rgb(image: Any) -> Any:
    """A loaded PIL image -> RGB, upright (EXIF), transparency over white, first frame."""
    Image, ImageOps = _pil()
    image.load()
    # exif_transpose's own test: it and convert() copy even an upright RGB image; only copy when they change it
    if image.getexif().get(_ORIENTATION, 1) in range(2, 9):
        image = ImageOps.exif_transpose(image)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image if image.mode == "RGB" else image.convert("RGB")


def _check_size(width: int, height: int, what: str) -> None:
    if width <= 0 or height <= 0:
        raise ImageError("%s is empty (%dx%d pixels)" % (what, width, height))


def _resize_pil(image: Any, height: int, width: int) -> Any:
    import numpy as np

    Image, _ = _pil()
    if image.size != (width, height):
        image = image.resize((width, height), _bilinear(Image), reducing_gap=3.0)
    return np.asarray(image, dtype=np.uint8).copy()


def load_file(path: str, height: int, width: int) -> Any:
    """Decode an image file to uint8 RGB (height, width, 3), as training's decoder does."""
    Image, _ = _pil()
    try:
        size = os.stat(path).st_size
    except OSError as error:
        raise ImageError("cannot read image %s: %s" % (path, error.strerror or error))
    if os.path.isdir(path):
        raise ImageError("%s is a folder, not an image file" % path)
    if size == 0:
        raise ImageError("image file %s is empty (0 bytes)" % path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as image:
                if image.format == "JPEG":
                    # Decode at the smallest scale that still exceeds the target, as training does.
                    image.draft("RGB", (width * 2, height * 2))
                image.seek(0)
                image.load()
                _check_size(image.size[0], image.size[1], "image %s" % path)
                return _resize_pil(_to_rgb(image), height, width)
    except ImageError:
        raise
    except Exception as error:  # Pillow raises many types for unreadable, truncated or unknown files
        detail = str(error).splitlines()[0] if str(error) else type(error).__name__
        if type(error).__name__ == "UnidentifiedImageError":
            detail = "not a recognised image format"
        raise ImageError("cannot decode image %s: %s" % (path, detail))


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
