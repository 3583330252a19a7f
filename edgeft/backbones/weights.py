"""Finding ImageNet weights: local files first (Keras' own names), then a download.

Search order for ``--weights imagenet``:
1. ``~/.keras/models/<keras file name>`` (where Keras itself caches downloads)
2. ``$EDGEFT_WEIGHTS_DIR/<keras file name>``
3. the same backbone and alpha at another input size, found locally (MobileNetV2's shapes are
   size-independent), with a warning naming both files
4. a download into ``~/.keras/models/`` (short timeout; skipped when ``EDGEFT_OFFLINE=1``)
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from edgeft.backbones.registry import BackboneSpec
from edgeft.errors import WeightsFileError, WeightsNotFoundError

DOWNLOAD_TIMEOUT_S = 15.0


@dataclass(frozen=True)
class ResolvedWeights:
    """Where the weights came from: ``path`` is None for random initialisation."""

    path: Path | None
    origin: str  # "none", "file", "local", "local-other-size", "download"
    warning: str | None = None


def search_dirs() -> list[Path]:
    """Local folders searched for Keras weight files, in order."""
    dirs = [Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "models"]
    extra = os.environ.get("EDGEFT_WEIGHTS_DIR")
    if extra:
        dirs.extend(Path(p) for p in extra.split(os.pathsep) if p)
    return dirs


def _find_local(file_name: str) -> Path | None:
    for folder in search_dirs():
        candidate = folder / file_name
        if candidate.is_file() and candidate.stat().st_size > 0:
            return candidate
    return None


def _download(url: str, target: Path) -> None:
    from edgeft.fileio import atomic_path

    with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:  # noqa: S310 (fixed https URL)
        with atomic_path(target) as temp:
            with open(temp, "wb") as handle:
                while True:
                    block = response.read(1 << 20)
                    if not block:
                        break
                    handle.write(block)


def resolve_imagenet_weights(
    spec: BackboneSpec, alpha: float | None, image_size: int, allow_download: bool = True
) -> ResolvedWeights:
    """Find (or download) the ImageNet weight file for ``spec`` at ``alpha`` and ``image_size``."""
    sizes = spec.weights_sizes
    keyed_size = image_size if image_size in sizes else (max(sizes) if sizes else spec.default_size)
    wanted = spec.weights_file(alpha, keyed_size)
    found = _find_local(wanted)
    if found is not None:
        return ResolvedWeights(found, "local")
    for other in sorted(sizes, key=lambda s: abs(s - image_size)):
        if other == keyed_size:
            continue
        alternative = _find_local(spec.weights_file(alpha, other))
        if alternative is not None:
            warning = (
                f"warning: {wanted} not found; using {alternative.name} (same backbone and alpha, "
                f"{other} px set; weight shapes do not depend on input size)"
            )
            return ResolvedWeights(alternative, "local-other-size", warning)
    keras_dir = search_dirs()[0]
    offline = os.environ.get("EDGEFT_OFFLINE", "").lower() in ("1", "true", "yes")
    why = "EDGEFT_OFFLINE is set, so no download was tried" if offline else "downloads are off"
    if allow_download and not offline:
        target = keras_dir / wanted
        try:
            _download(spec.weights_url_dir + wanted, target)
            return ResolvedWeights(target, "download")
        except (urllib.error.URLError, OSError, TimeoutError) as error:
            why = f"the download failed ({getattr(error, 'reason', None) or error})"
    raise WeightsNotFoundError(
        f"ImageNet weights {wanted} not found locally and {why}; put the file in "
        f"{keras_dir}/ or in $EDGEFT_WEIGHTS_DIR, or pass --weights PATH or --weights none"
    )


def resolve_weights(spec: BackboneSpec, weights: str, alpha: float | None, image_size: int) -> ResolvedWeights:
    """Turn ``--weights`` (imagenet, none or a path) into a file to load."""
    if weights == "none":
        return ResolvedWeights(None, "none")
    if weights == "imagenet":
        return resolve_imagenet_weights(spec, alpha, image_size)
    return ResolvedWeights(check_weights_file(Path(weights)), "file")


_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def check_weights_file(path: Path) -> Path:
    """Refuse a ``--weights`` file that is not HDF5 before TensorFlow is started on it.

    HDF5 allows a user block before the signature, so it may sit at offset 0, 512, 1024, 2048, ...
    """
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            offset = 0
            while offset + len(_HDF5_SIGNATURE) <= size:
                handle.seek(offset)
                if handle.read(len(_HDF5_SIGNATURE)) == _HDF5_SIGNATURE:
                    return path
                offset = 512 if offset == 0 else offset * 2
    except OSError as error:
        raise WeightsFileError(f"--weights {path}: cannot read it ({error.strerror or error})") from None
    raise WeightsFileError(f"--weights {path} is not a Keras .h5 weight file (no HDF5 signature); "
                           "pass the backbone's ImageNet .h5 file, imagenet, or none")
