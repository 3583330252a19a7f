"""Any image an app holds -> uint8 RGB pixels at the model's input size: the one image decoder.

Training (``edgeft.data.decode_image``), ``edgeft predict``, ``edgeft.runtime`` and a bundle's app
all decode files here: JPEG draft decoding (a 10000x10000 photo costs little memory), first frame of
animations, EXIF orientation, transparency composited over white, 16-bit and float pixels scaled
onto 0..255, Pillow's bilinear resize with ``reducing_gap=3.0``. Standard library, numpy and Pillow
only (Pillow is optional for numpy arrays, needed for files).

The resize runs Pillow's two passes one at a time, horizontal first, so that every Pillow version
gives the same pixels (see :func:`_resize_pil`). ``threads`` above 1 resizes a repeated image size
(a camera's frames) in column bands at once (Pillow releases the GIL while it resamples), bit for
bit the same; a size that cannot be split exactly is resized in one piece.
"""

from __future__ import annotations

import math
import os
import threading
import warnings
from enum import Enum
from typing import Any, List, Optional, Set, Tuple

from .contract import DeviceError
from .preprocess import reduction_factors, resize_bilinear_numpy

# Decompression-bomb guard, raised from Pillow's default (89 Mpx) so that real 10000x10000 photos load.
MAX_PIXELS = 400_000_000
# Below this many source pixels per band, handing a band to another thread costs more than it saves.
_MIN_BAND_SOURCE_PIXELS = 40_000
_MIN_BAND_SPAN = 16  # output pixels across a band


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


def _resize_pil(image: Any, height: int, width: int, threads: int = 1) -> Any:
    """Pillow's bilinear ``resize(..., reducing_gap=3.0)`` with its passes in a fixed order.

    The two one-axis passes round to uint8 in between, so their order shows in the pixels.
    Pillow 12 and earlier always run the horizontal pass first; Pillow 13 runs the vertical one
    first when the height shrinks much more than the width (a portrait photo to a square input),
    which moves 1 in 7 values by one level. Training and a device with another Pillow must agree,
    so the passes are called one at a time, horizontal first: the pixels of Pillow <= 12's resize
    under any Pillow (tested against the emulated Pi's Pillow 12).
    """
    import numpy as np

    if image.size == (width, height):
        return np.asarray(image, dtype=np.uint8).copy()
    image, box = _reduce_as_pillow_does(image, width, height)
    edges = [0, width]
    bands = min(threads, image.size[0] * image.size[1] // _MIN_BAND_SOURCE_PIXELS)
    # Bands pay off for a size seen again (a camera's frames), not for a folder of photos of many sizes.
    if bands > 1 and _seen_before((image.size, (width, height))):
        edges = _band_edges(box[0], width, bands) or edges
    if len(edges) == 2:
        return _resize_band(image, box, width, height, 0, width)
    others = [_band_pool().submit(_resize_band, image, box, width, height, start, end)
              for start, end in zip(edges[1:-1], edges[2:])]
    first = _resize_band(image, box, width, height, edges[0], edges[1])  # this thread's share meanwhile
    return np.concatenate([first] + [future.result() for future in others], axis=1)


def _reduce_as_pillow_does(image: Any, width: int, height: int) -> Tuple[Any, Tuple[float, float]]:
    """Pillow's ``reducing_gap`` step: an integer box reduction when the scale reaches the gap, and the
    (width, height) of the box left to resample in the reduced image (fractional when the size is not
    a multiple of the factor)."""
    source_width, source_height = image.size
    factor_x, factor_y = reduction_factors(source_width, source_height, width, height)
    if factor_x > 1 or factor_y > 1:
        image = image.reduce((factor_x, factor_y))
    return image, (source_width / factor_x, source_height / factor_y)


def _resize_band(image: Any, box: Tuple[float, float], width: int, height: int, start: int, end: int) -> Any:
    """Output columns ``start:end``: the horizontal pass over every row, then the vertical pass."""
    import numpy as np

    Image, _ = _pil()
    bilinear = _bilinear(Image)
    box_width, box_height = box
    if (start, end) == (0, width):
        left, right = 0.0, box_width
    else:  # band edges from _band_edges: whole source columns, so Pillow's float32 box and scale are exact
        left, right = start * int(box_width) // width, end * int(box_width) // width
    rows = image.size[1]
    horizontal = image.resize((end - start, rows), bilinear, box=(left, 0, right, rows))
    vertical = horizontal.resize((end - start, height), bilinear, box=(0, 0, end - start, box_height))
    return np.asarray(vertical, dtype=np.uint8).copy()


def _band_edges(box_width: float, width: int, bands: int) -> Optional[List[int]]:
    """Column band edges (output pixels) where ``edge * box_width / width`` is a whole number, about evenly spaced.

    Pillow takes the box as float32 and its scale as ``(box_end - box_start) / band``: on such
    edges both are exact and the scale is the whole resize's own float. None when no edge exists.
    """
    bands = min(bands, width // _MIN_BAND_SPAN)
    if bands < 2 or box_width != int(box_width):
        return None  # a fractional reduced box: its scale is rounded twice in Pillow, once in a band
    step = width // math.gcd(int(box_width), width)
    edges = sorted({round(width * band / bands / step) * step for band in range(bands)} | {0, width})
    return edges if len(edges) > 2 else None


def _seen_before(key: Tuple[Tuple[int, int], Tuple[int, int]]) -> bool:
    with _LOCK:
        if key in _SEEN:
            return True
        if len(_SEEN) >= 256:
            _SEEN.clear()
        _SEEN.add(key)
        return False


_POOL: Any = None
_POOL_PID = 0
_LOCK = threading.Lock()
_SEEN: Set[Tuple[Tuple[int, int], Tuple[int, int]]] = set()


def _band_pool() -> Any:
    """One small thread pool for resize bands, made on first use (the calling thread does one band itself).

    Made again in a forked child (a web server's workers forked after the app loaded): the
    parent's idle workers do not exist there, and a task queued for them would never run.
    """
    global _POOL, _POOL_PID
    with _LOCK:
        if _POOL is None or _POOL_PID != os.getpid():
            from concurrent.futures import ThreadPoolExecutor

            _POOL = ThreadPoolExecutor(max_workers=max(1, min(8, (os.cpu_count() or 2) - 1)),
                                       thread_name_prefix="edgeft-resize")
            _POOL_PID = os.getpid()
        return _POOL


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


def load_file(path: str, height: int, width: int, threads: int = 1) -> Any:
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
                return _resize_pil(_to_rgb(image), height, width, threads)
    except ImageError:
        raise
    except Exception as error:  # Pillow raises many types for unreadable, truncated or unknown files
        raise _decode_failure(path, error)


def load_pil(image: Any, height: int, width: int, threads: int = 1) -> Any:
    """A PIL image (any mode) -> uint8 RGB (height, width, 3), as training's decoder does."""
    _check_size(image.size[0], image.size[1], "the image")
    return _resize_pil(_to_rgb(image), height, width, threads)


def load_array(array: Any, height: int, width: int, threads: int = 1) -> Any:
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
            return resize_bilinear_numpy(array, height, width)
    Image, _ = _pil()
    # uint8 (H, W) / (H, W, 3) / (H, W, 4) arrays open as L / RGB / RGBA
    image = Image.fromarray(np.ascontiguousarray(array))
    if image.mode != "RGB":  # an RGB array has no EXIF and no alpha: skip the conversion copies
        image = _to_rgb(image)
    return _resize_pil(image, height, width, threads)


def load_image(image: Any, size: Tuple[int, int], threads: int = 1) -> Any:
    """A path, PIL image or numpy array -> uint8 RGB pixels (height, width, 3) for a model of ``size``.

    ``threads``: how many threads may share the resize (same pixels whatever the number).
    """
    height, width = int(size[0]), int(size[1])
    if isinstance(image, (str, os.PathLike)):
        return load_file(os.fspath(image), height, width, threads)
    if hasattr(image, "getbands") and hasattr(image, "size"):
        return load_pil(image, height, width, threads)
    if hasattr(image, "__array__") or isinstance(image, (list, tuple)):
        return load_array(image, height, width, threads)
    raise ImageError("an image must be a file path, a PIL image or a numpy array, got %s" % type(image).__name__)


def resize_images(images: Any, height: int, width: int) -> Any:
    """uint8 RGB images (N, H, W, 3) at (height, width), resized as training resizes (numpy without Pillow)."""
    import numpy as np

    images = np.asarray(images, dtype=np.uint8)
    if images.shape[1] == height and images.shape[2] == width:
        return images
    return np.stack([load_array(image, height, width) for image in images])
