"""Class-folder datasets: discovery, decoding with a cache, skipped-file report, stratified split.

Three layouts are accepted::

    DATA_DIR/<class>/*.jpg                      split into train/val with --val-split
    DATA_DIR/{train,val[,test]}/<class>/*.jpg   used as given (val/ may be valid/ or validation/)
    DATA_DIR/{train,test}/<class>/*.jpg         val carved from train/ with --val-split; test/ kept
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Collection, Sequence

import numpy as np

from edgeft.data.images import ImageError, SkipReason, decode_image
from edgeft.errors import DatasetError, UsageError
from edgeft.progress import track
from edgeft.run.rundir import Sample

SPLIT_NAMES = ("train", "val", "test")


@dataclass(frozen=True)
class SkippedFile:
    """A file that was not used, with the reason."""

    path: str
    reason: str
    detail: str


@dataclass(frozen=True)
class LoadedSplit:
    """Decoded images of one split: ``images`` is (N, size, size, 3) uint8, ``labels`` (N,) int32."""

    samples: tuple[Sample, ...]
    images: np.ndarray
    labels: np.ndarray


@dataclass(frozen=True)
class DatasetIndex:
    """What was found in a data directory."""

    root: Path
    layout: str  # "class_folders" or "split_folders"
    class_names: tuple[str, ...]
    skipped: tuple[SkippedFile, ...]
    content_hash: str

    def report(self, splits: dict[str, LoadedSplit]) -> dict[str, Any]:
        """The data report stored in the run manifest."""
        counts = {
            name: {self.class_names[c]: int(n) for c, n in sorted(Counter(split.labels.tolist()).items())}
            for name, split in splits.items()
        }
        return {
            "layout": self.layout,
            "content_hash": self.content_hash,
            "counts": counts,
            "total_used": int(sum(len(s.samples) for s in splits.values())),
            "skipped_by_reason": dict(Counter(s.reason for s in self.skipped)),
            "skipped": [{"path": s.path, "reason": s.reason, "detail": s.detail} for s in self.skipped],
        }


def class_dirs(folder: Path) -> list[Path]:
    """The class folders of ``folder``: its sub-folders, hidden ones excepted, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def files_under(folder: Path, suffixes: Collection[str] | None = None) -> list[Path]:
    """Every file under ``folder``, recursively, hidden files and folders excepted.

    Order: each folder's files by name, then its sub-folders by name (what the seeded splits
    depend on). ``suffixes`` (lower case, with the dot, e.g. :data:`IMAGE_SUFFIXES`) keeps only those.
    """
    files = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        files.extend(Path(dirpath) / name for name in sorted(filenames) if not name.startswith(".")
                     and (suffixes is None or Path(name).suffix.lower() in suffixes))
    return files


def class_folder_files(root: Path, class_names: Sequence[str],
                       suffixes: Collection[str] | None = None) -> list[tuple[Path, int]]:
    """``(path, label)`` for every file under ``root/<class>/``, label = the class's index in ``class_names``.

    Classes without a folder under ``root`` contribute nothing.
    """
    return [(path, label) for label, name in enumerate(class_names) if (root / name).is_dir()
            for path in files_under(root / name, suffixes)]


def _content_hash(files: list[Path], root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(files):
        digest.update(str(path.relative_to(root)).encode())
        try:
            with open(path, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
        except OSError:
            digest.update(b"<unreadable>")
    return digest.hexdigest()


def cache_dir() -> Path:
    """Where decoded images are cached (``$EDGEFT_CACHE_DIR``, else ``~/.cache/edgeft``)."""
    return Path(os.environ.get("EDGEFT_CACHE_DIR") or Path.home() / ".cache" / "edgeft")


def hash_file_identity(digest: "hashlib._Hash", files: list[Path]) -> None:
    """Feed each file's path, size and mtime into ``digest`` (a cache key that changes with the files)."""
    for path in files:
        try:
            stat = path.stat()
            digest.update(f"{path}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
        except OSError:
            digest.update(f"{path}|missing\n".encode())


def _decode_key(files: list[Path], size: int) -> str:
    digest = hashlib.sha256(f"decode-v2 size={size}".encode())  # v2: passes in a fixed order
    hash_file_identity(digest, files)
    return digest.hexdigest()[:32]


def decode_files(files: list[Path], size: int, label: str = "decoding images") -> tuple[np.ndarray, list[tuple[str, str] | None]]:
    """Decode ``files`` to (N, size, size, 3) uint8, with a per-file failure ``(reason, detail)`` or None.

    Results are cached on disk by file identity (path, size, mtime) and image size, so a
    second training, evaluation or calibration on the same files does not decode again.
    """
    cache_file = cache_dir() / "decoded" / f"{_decode_key(files, size)}.npz"
    cached = _read_decoded(cache_file, len(files))
    if cached is not None:
        return cached
    images, failures = _decode_in_threads(files, size, label)
    _write_decoded(cache_file, images, failures)
    return images, failures


def _decode_in_threads(files: list[Path], size: int, label: str) -> tuple[np.ndarray, list[tuple[str, str] | None]]:
    images = np.zeros((len(files), size, size, 3), dtype=np.uint8)
    failures: list[tuple[str, str] | None] = []

    def decode(path: Path) -> np.ndarray | tuple[str, str]:
        try:
            return decode_image(path, size)
        except ImageError as error:
            return (error.reason or SkipReason.UNREADABLE).value, error.detail[:200]

    # Pillow releases the GIL while decoding, so threads use every core; each worker holds
    # one image at a time, which keeps memory flat for huge photos.
    workers = max(1, min(8, os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for index, result in track(enumerate(pool.map(decode, files)), len(files), label):
            if isinstance(result, np.ndarray):
                images[index] = result
                failures.append(None)
            else:
                failures.append(result)
    return images, failures


def _read_decoded(cache_file: Path, count: int) -> tuple[np.ndarray, list[tuple[str, str] | None]] | None:
    if not cache_file.is_file():
        return None
    try:
        with np.load(cache_file, allow_pickle=False) as cached:
            images = cached["images"]
            reasons = cached["reasons"].tolist()
            details = cached["details"].tolist()
    except (OSError, ValueError, KeyError):
        return None  # a damaged cache entry is simply rebuilt
    failures = [None if not r else (r, d) for r, d in zip(reasons, details)]
    return (images, failures) if len(failures) == count else None


def _write_decoded(cache_file: Path, images: np.ndarray, failures: list[tuple[str, str] | None]) -> None:
    from edgeft.fileio import atomic_path

    try:
        with atomic_path(cache_file) as temp:
            with open(temp, "wb") as handle:
                np.savez(
                    handle,
                    images=images,
                    reasons=np.array([f[0] if f else "" for f in failures], dtype=str),
                    details=np.array([f[1] if f else "" for f in failures], dtype=str),
                )
    except OSError:
        pass  # caching is an optimisation; a read-only home must not stop training


def _kept(failures: list[tuple[str, str] | None]) -> list[int]:
    return [i for i, failure in enumerate(failures) if failure is None]


def _stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    train_idx: list[int] = []
    val_idx: list[int] = []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        rng.shuffle(members)
        n_val = int(round(len(members) * fraction))
        if len(members) >= 2:
            n_val = min(max(n_val, 1), len(members) - 1)
        else:
            n_val = 0
        val_idx.extend(members[:n_val].tolist())
        train_idx.extend(members[n_val:].tolist())
    return np.array(sorted(train_idx), dtype=np.int64), np.array(sorted(val_idx), dtype=np.int64)


VALIDATION_FOLDER_NAMES = ("val", "valid", "validation")
_SPLIT_LIKE = {"train", "training", "test", "testing", "eval", "evaluation", *VALIDATION_FOLDER_NAMES}


def _split_folders(root: Path) -> dict[str, Path]:
    """``{"train": ..., "val": ..., "test": ...}`` for a split layout, ``{}`` for plain class folders.

    ``train/`` with ``val/``, ``valid/`` or ``validation/`` is used as given; ``train/`` with only
    ``test/`` keeps ``test/`` for the final evaluation and carves the validation split from ``train/``.
    A folder whose every subfolder is named like a split (``train/`` alone, ``train/`` + ``eval/``...)
    is refused: training on it would learn to tell the split folders apart.
    """
    subfolders = {d.name.lower(): d for d in class_dirs(root)}
    found: dict[str, Path] = {}
    if "train" in subfolders:
        found["train"] = subfolders["train"]
        validation = [subfolders[name] for name in VALIDATION_FOLDER_NAMES if name in subfolders]
        if len(validation) > 1:
            raise DatasetError(f"{root} has more than one validation folder "
                               f"({', '.join(d.name for d in validation)}); keep one")
        if validation:
            found["val"] = validation[0]
        if "test" in subfolders:
            found["test"] = subfolders["test"]
    if len(found) >= 2:
        return found
    if subfolders and set(subfolders) <= _SPLIT_LIKE:
        raise DatasetError(f"{root} holds only split folders ({', '.join(sorted(d.name for d in subfolders.values()))}); "
                           "use DATA_DIR/<class>/ or DATA_DIR/train/<class>/ with val/ or test/ beside train/")
    return {}


def missing_validation_classes(class_names: tuple[str, ...], splits: dict[str, LoadedSplit]) -> list[str]:
    """Names of the classes with no image in the validation split (their accuracy cannot be measured)."""
    present = set(splits["val"].labels.tolist())
    return [name for label, name in enumerate(class_names) if label not in present]


def load_dataset(
    data_dir: Path, image_size: int, val_split: float = 0.2, seed: int = 0
) -> tuple[DatasetIndex, dict[str, LoadedSplit]]:
    """Find, decode and split the images in ``data_dir``.

    Unusable files are skipped and reported; fewer than two classes or a class without a
    usable training image raises :class:`DatasetError` naming the folder.
    """
    root = Path(data_dir).expanduser().resolve()
    if not root.is_dir():
        raise DatasetError(f"data directory not found: {data_dir}")
    if not 0.0 < val_split < 1.0:
        raise UsageError(f"--val-split must be between 0 and 1, got {val_split}")
    folders = _split_folders(root)
    class_root = folders["train"] if folders else root
    class_names = _class_names(class_root)
    listed = _list_splits(root, folders, class_names, class_root)
    content_hash = _content_hash([path for entries in listed.values() for path, _ in entries], root)
    decoded, skipped = _decode_splits(root, listed, image_size)
    training = decoded["train" if folders else "all"]
    present = set(training.labels.tolist())
    for label, name in enumerate(class_names):
        if label not in present:
            raise DatasetError(f"class '{name}' has no usable image in {class_root / name}")
    if "val" not in folders:  # carve val from the training images; a test/ split stays for the final evaluation
        train_idx, val_idx = _stratified_split(training.labels, val_split, seed)
        carved = {"train": _subset(training, train_idx), "val": _subset(training, val_idx)}
        decoded = dict(carved, **{k: v for k, v in decoded.items() if k == "test"})
    if len(decoded["val"].samples) == 0:
        raise DatasetError(f"no usable validation image in {folders.get('val', class_root)}")
    layout = "split_folders" if folders else "class_folders"
    return DatasetIndex(root, layout, class_names, tuple(skipped), content_hash), decoded


def _class_names(class_root: Path) -> tuple[str, ...]:
    class_names = tuple(d.name for d in class_dirs(class_root))
    if len(class_names) < 2:
        raise DatasetError(
            f"need at least 2 class folders in {class_root}, found {len(class_names)}"
            + (f" ({class_names[0]})" if class_names else "")
        )
    return class_names


def _list_splits(root: Path, folders: dict[str, Path], class_names: tuple[str, ...],
                 class_root: Path) -> dict[str, list[tuple[Path, int]]]:
    """``(path, label)`` per source split (``all`` for plain class folders); every split has the same classes."""
    listed: dict[str, list[tuple[Path, int]]] = {}
    for split in (list(folders) if folders else ["all"]):
        split_root = root if split == "all" else folders[split]
        for name in class_names:
            if not (split_root / name).is_dir() and split in ("train", "all"):
                raise DatasetError(f"class folder missing: {split_root / name}")
        extra = sorted(set(d.name for d in class_dirs(split_root)) - set(class_names))
        if extra:
            raise DatasetError(f"{split_root} has class folders not in {class_root}: {', '.join(extra)}")
        listed[split] = class_folder_files(split_root, class_names)
    return listed


def _decode_splits(root: Path, listed: dict[str, list[tuple[Path, int]]],
                   image_size: int) -> tuple[dict[str, LoadedSplit], list[SkippedFile]]:
    skipped: list[SkippedFile] = []
    decoded: dict[str, LoadedSplit] = {}
    for split, entries in listed.items():
        images, failures = decode_files([path for path, _ in entries], image_size, label=f"decoding {split} images")
        for (path, _), failure in zip(entries, failures):
            if failure is not None:
                skipped.append(SkippedFile(str(path.relative_to(root)), failure[0], failure[1]))
        keep = _kept(failures)
        samples = tuple(Sample(str(entries[i][0]), int(entries[i][1])) for i in keep)
        decoded[split] = LoadedSplit(samples, images[keep], np.array([s.label for s in samples], dtype=np.int32))
    return decoded, skipped


def _subset(split: LoadedSplit, indices: np.ndarray) -> LoadedSplit:
    return LoadedSplit(tuple(split.samples[i] for i in indices), split.images[indices], split.labels[indices])


def load_samples(samples: tuple[Sample, ...] | list[Sample], image_size: int, label: str = "decoding images") -> LoadedSplit:
    """Decode the recorded samples of a run's split (files that fail now are dropped)."""
    files = [Path(s.path) for s in samples]
    images, failures = decode_files(files, image_size, label=label)
    keep = _kept(failures)
    kept = tuple(samples[i] for i in keep)
    return LoadedSplit(kept, images[keep], np.array([s.label for s in kept], dtype=np.int32))


def load_entries(entries: Sequence[tuple[Path, int]], image_size: int, label: str = "decoding images") -> LoadedSplit:
    """Decode ``(path, label)`` pairs (for example :func:`class_folder_files`'); files that fail are dropped."""
    images, failures = decode_files([path for path, _ in entries], image_size, label=label)
    keep = _kept(failures)
    kept = tuple(Sample(str(entries[i][0]), int(entries[i][1])) for i in keep)
    return LoadedSplit(kept, images[keep], np.array([s.label for s in kept], dtype=np.int32))
