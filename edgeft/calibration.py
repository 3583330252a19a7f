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
from typing import Iterator, Sequence

import numpy as np

from edgeft.data import IMAGE_SUFFIXES, cache_dir, decode_files, files_under, hash_file_identity
from edgeft.errors import CalibrationError
from edgeft.fileio import atomic_path
from edgeft.preprocessing import Preprocessing
from edgeft.run.rundir import Sample

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
    return cache_dir() / "calib"


@dataclass(frozen=True)
class CalibrationRequest:
    """Which calibration set to build: how many images, from where, with which seed."""

    size: int = DEFAULT_CALIB_SIZE
    seed: int = 0
    calib_dir: Path | None = None
    calib_list: Path | None = None
    use_cache: bool = True


@dataclass(frozen=True)
class _Candidates:
    files: list[Path]
    labels: np.ndarray  # -1 where unknown
    source: str


def build_calibration_set(preprocessing: Preprocessing, image_size: int, request: CalibrationRequest,
                          train_samples: Sequence[Sample] = (), data_hash: str = "") -> CalibrationSet:
    """Select, decode and preprocess the calibration set, or raise :class:`CalibrationError`.

    ``train_samples`` are the run's training split (used when the request names neither a
    directory nor a list); ``data_hash`` is the dataset's content hash.
    """
    if request.size < 1:
        raise CalibrationError(f"--calib-size must be at least 1, got {request.size}")
    candidates = _candidates(request, train_samples)
    key = _cache_key(candidates, request, preprocessing, image_size, data_hash)
    cache_file = _cache_root() / f"{key}.npz"
    if request.use_cache and cache_file.is_file():
        try:
            with np.load(cache_file, allow_pickle=False) as cached:
                return CalibrationSet(cached["pixels"], cached["labels"], preprocessing, candidates.source, key,
                                      str(cache_file))
        except (OSError, ValueError, KeyError):
            pass  # rebuilt below
    pixels, labels = _select_and_decode(candidates, request, image_size)
    if request.use_cache:
        _save_cache(cache_file, pixels, labels)
    return CalibrationSet(pixels, labels, preprocessing, candidates.source, key,
                          str(cache_file) if request.use_cache else None)


def _candidates(request: CalibrationRequest, train_samples: Sequence[Sample]) -> _Candidates:
    """The images to choose from, in precedence order: --calib-list, --calib-dir, the train split."""
    if request.calib_list is not None:
        files = read_calib_list(Path(request.calib_list))
        found = _Candidates(files, np.full(len(files), -1, np.int64),
                            f"calib-list:{Path(request.calib_list).resolve()}")
    elif request.calib_dir is not None:
        files = _files_in(Path(request.calib_dir))
        found = _Candidates(files, np.full(len(files), -1, np.int64), f"calib-dir:{Path(request.calib_dir).resolve()}")
    else:
        found = _Candidates([Path(s.path) for s in train_samples],
                            np.array([s.label for s in train_samples], np.int64), "train-split")
    if not found.files:
        raise CalibrationError(
            "no calibration images: the run has no training samples; pass --calib-dir DIR or --calib-list FILE"
        )
    return found


def _cache_key(candidates: _Candidates, request: CalibrationRequest, preprocessing: Preprocessing,
               image_size: int, data_hash: str) -> str:
    identity = hashlib.sha256()
    identity.update(json.dumps([CACHE_VERSION, candidates.source, data_hash, preprocessing.to_dict(), image_size,
                                request.size, request.seed], sort_keys=True).encode())
    if not data_hash:  # no content hash: fall back to file identity
        hash_file_identity(identity, candidates.files)
    return identity.hexdigest()[:24]


def _select_and_decode(candidates: _Candidates, request: CalibrationRequest,
                       image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Order the candidates (stratified for the train split, shuffled otherwise), decode, keep ``size``."""
    files, labels = candidates.files, candidates.labels
    order = stratified_selection(labels, request.size, request.seed) if candidates.source == "train-split" else \
        np.random.default_rng(request.seed).permutation(len(files))
    # Decode more than needed only when files may fail; decode_files caches by file identity.
    chosen = [files[i] for i in order]
    pixels, failures = decode_files(chosen, image_size, label="decoding calibration images")
    keep = [i for i, failure in enumerate(failures) if failure is None][: request.size]
    if not keep:
        raise CalibrationError(f"none of the {len(chosen)} calibration images could be decoded ({candidates.source})")
    return pixels[keep], labels[order][keep]


def _save_cache(cache_file: Path, pixels: np.ndarray, labels: np.ndarray) -> None:
    try:
        with atomic_path(cache_file) as temp:
            with open(temp, "wb") as handle:
                np.savez(handle, pixels=pixels, labels=labels)
    except OSError:
        pass  # a read-only cache must not stop an export


def calibration_for_run(run: "object", size: int = DEFAULT_CALIB_SIZE, seed: int = 0,
                        calib_dir: Path | None = None, calib_list: Path | None = None) -> CalibrationSet:
    """:func:`build_calibration_set` for an opened :class:`edgeft.run.rundir.RunDir`."""
    manifest = run.manifest  # type: ignore[attr-defined]
    train = manifest.splits.get("train", ())
    request = CalibrationRequest(size=size, seed=seed, calib_dir=calib_dir, calib_list=calib_list)
    return build_calibration_set(manifest.preprocessing, manifest.image_size, request, train_samples=train,
                                 data_hash=str(manifest.dataset.get("content_hash", "")))
