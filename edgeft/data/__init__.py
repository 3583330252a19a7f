"""Finding, decoding, splitting and caching labelled images (numpy + Pillow; no TensorFlow)."""

from edgeft.data.dataset import DatasetIndex, LoadedSplit, SkippedFile, load_dataset, load_samples
from edgeft.data.images import IMAGE_SUFFIXES, SkipReason, decode_image

__all__ = [
    "DatasetIndex",
    "IMAGE_SUFFIXES",
    "LoadedSplit",
    "SkipReason",
    "SkippedFile",
    "decode_image",
    "load_dataset",
    "load_samples",
]
