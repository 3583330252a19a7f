"""Finding, decoding, splitting and caching labelled images (numpy + Pillow; no TensorFlow)."""

from edgeft.data.dataset import (
    DatasetIndex,
    LoadedSplit,
    SkippedFile,
    cache_dir,
    class_dirs,
    class_folder_files,
    decode_files,
    files_under,
    hash_file_identity,
    load_dataset,
    load_entries,
    load_samples,
)
from edgeft.data.images import IMAGE_SUFFIXES, SkipReason, decode_image

__all__ = [
    "DatasetIndex",
    "IMAGE_SUFFIXES",
    "LoadedSplit",
    "SkipReason",
    "SkippedFile",
    "cache_dir",
    "class_dirs",
    "class_folder_files",
    "decode_files",
    "decode_image",
    "files_under",
    "hash_file_identity",
    "load_dataset",
    "load_entries",
    "load_samples",
]
