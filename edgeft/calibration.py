"""The representative (calibration) set for post-training integer quantization.

Where the images come from, in order of precedence:

1. ``--calib-list FILE``: a text file with one image path per line (see ``calib/README.md``);
2. ``--calib-dir DIR``: every image file under DIR (recursively);
3. otherwise the run's training split, stratified per class and seeded.

Images are decoded exactly as in training (:func:`edgeft.data.dataset.decode_files`, which
caches decoded pixels by file identity) and preprocessed with the run's
:class:`~edgeft.preprocessing.Preprocessing`. The selected set is cached as one ``.npz`` under
``<cache>/calib/`` keyed by the data hash, the preprocessing, the image size, the seed and the
requested size, so repeated exports neither select nor decode again.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from edgeft.data import IMAGE_SUFFIXES, files_under
from edgeft.errors import CalibrationError
from edgeft.preprocessing import Preprocessing

DEFAULT_CALIB_SIZE = 300
CACHE_VERSION = "calib-v1"


@dataclass(frozen=True)
class CalibrationSet:
    """Calibration images: ``pixels`` (N, S, S, 3) uint8 as decoded, ``inputs`` the preprocessed float32."""

    pixels: np.ndarray
    labels: np.ndarray  # -1 where unknown (--calib-dir / --calib-list)
    preprocessing: Preprocessing
    source: str  # "train-split", "calib-dir:<path>" or "calib-list:<path>"
    key: str
    cache_file: str | None

    @property
    def inputs(self) -> np.ndarray:
        """The model inputs (float32), preprocessed exactly as in training."""
        return self.preprocessing.apply(self.pixels)

    def __len__(self) -> int:
        return int(self.pixels.shape[0])

    def batches(self, limit: int | None = None) -> Iterator[np.ndarray]:
        """Yield preprocessed single-image batches (1, S, S, 3), as TFLite's representative_dataset wants."""
        count = len(self) if limit is None else min(limit, len(self))
        for index in range(count):
            yield self.preprocessing.apply(self.pixels[index : index + 1])

    def describe(self) -> dict[str, object]:
        """What goes into reports and sidecars."""
        return {"source": self.source, "size": len(self), "key": self.key, "cache_file": self.cache_file}


def stratified_selection(labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    """Indices of up to ``size`` samples, as equal per class as the classes allow, interleaved, seeded."""
    rng = np.random.default_rng(seed)
    per_class = []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        rng.shuffle(members)
        per_class.append(list(members))
    chosen: list[int] = []
    while len(chosen) < size and any(per_class):
        for members in per_class:
            if members and len(chosen) < size:
                chosen.append(int(members.pop(0)))
    return np.array(chosen, dtype=np.int64)


def read_calib_list(list_file: Path) -> list[Path]:
    """Paths from a calibration list: one per line, ``#`` comments, relative to the list's folder."""
    list_file = Path(list_file)
    if not list_file.is_file():
        raise CalibrationError(f"calibration list not found: {list_file}")
    paths = []
    for raw in list_file.read_text("utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            path = Path(line).expanduser()
            paths.append(path if path.is_absolute() else (list_file.parent / path))
    return paths


def _files_in(directory: Path) -> list[Path]:
    directory = Path(directory)
    if not directory.is_dir():
        raise CalibrationError(f"calibration directory not found: {directory}")
    return sorted(files_under(directory, IMAGE_SUFFIXES))


def _cache_root() -> Path:
    from edgeft.data.dataset import cache_dir

    return cache_dir() / "calib"


def build_calibration_set(
    preprocessing: Preprocessing,
    image_size: int,
    *,
    train_samples: tuple | list | None = None,
    data_hash: str = "",
    size: int = DEFAULT_CALIB_SIZE,
    seed: int = 0,
    calib_dir: Path | None = None,
    calib_list: Path | None = None,
    use_cache: bool = True,
) -> CalibrationSet:
    """Select, decode and preprocess the calibration set, or raise :class:`CalibrationError`.

    ``train_samples`` are :class:`edgeft.run.rundir.Sample` of the run's training split (used when
    neither ``calib_dir`` nor ``calib_list`` is given); ``data_hash`` is the dataset's content hash.
    """
    from edgeft.data.dataset import decode_files

    if size < 1:
        raise CalibrationError(f"--calib-size must be at least 1, got {size}")
    if calib_list is not None:
        files = read_calib_list(Path(calib_list))
        labels = np.full(len(files), -1, np.int64)
        source = f"calib-list:{Path(calib_list).resolve()}"
    elif calib_dir is not None:
        files = _files_in(Path(calib_dir))
        labels = np.full(len(files), -1, np.int64)
        source = f"calib-dir:{Path(calib_dir).resolve()}"
    else:
        samples = list(train_samples or [])
        files = [Path(s.path) for s in samples]
        labels = np.array([s.label for s in samples], np.int64)
        source = "train-split"
    if not files:
        raise CalibrationError(
            "no calibration images: the run has no training samples; pass --calib-dir DIR or --calib-list FILE"
        )

    identity = hashlib.sha256()
    identity.update(json.dumps([CACHE_VERSION, source, data_hash, preprocessing.to_dict(), image_size, size, seed],
                               sort_keys=True).encode())
    if not data_hash:  # no content hash: fall back to file identity
        from edgeft.data.dataset import hash_file_identity

        hash_file_identity(identity, files)
    key = identity.hexdigest()[:24]
    cache_file = _cache_root() / f"{key}.npz"
    if use_cache and cache_file.is_file():
        try:
            with np.load(cache_file, allow_pickle=False) as cached:
                return CalibrationSet(cached["pixels"], cached["labels"], preprocessing, source, key, str(cache_file))
        except (OSError, ValueError, KeyError):
            pass  # rebuilt below

    order = stratified_selection(labels, size, seed) if source == "train-split" else \
        np.random.default_rng(seed).permutation(len(files))
    # Decode more than needed only when files may fail; decode_files caches by file identity.
    chosen = [files[i] for i in order]
    pixels, failures = decode_files(chosen, image_size, label="decoding calibration images")
    keep = [i for i, failure in enumerate(failures) if failure is None][:size]
    if not keep:
        raise CalibrationError(f"none of the {len(chosen)} calibration images could be decoded ({source})")
    pixels = pixels[keep]
    selected_labels = labels[order][keep]
    if use_cache:
        try:
            from edgeft.fileio import atomic_path

            with atomic_path(cache_file) as temp:
                with open(temp, "wb") as handle:
                    np.savez(handle, pixels=pixels, labels=selected_labels)
        except OSError:
            pass  # a read-only cache must not stop an export
    return CalibrationSet(pixels, selected_labels, preprocessing, source, key, str(cache_file) if use_cache else None)


def calibration_for_run(run: "object", size: int = DEFAULT_CALIB_SIZE, seed: int = 0,
                        calib_dir: Path | None = None, calib_list: Path | None = None) -> CalibrationSet:
    """:func:`build_calibration_set` for an opened :class:`edgeft.run.rundir.RunDir`."""
    manifest = run.manifest  # type: ignore[attr-defined]
    train = manifest.splits.get("train", ())
    return build_calibration_set(
        manifest.preprocessing, manifest.image_size, train_samples=train,
        data_hash=str(manifest.dataset.get("content_hash", "")), size=size, seed=seed,
        calib_dir=calib_dir, calib_list=calib_list,
    )
