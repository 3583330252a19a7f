"""Atomic file writing: every artifact is written under a temporary name and renamed when complete.

A crash or Ctrl-C therefore leaves either the previous file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _temp_sibling(final: Path) -> tuple[int, Path]:
    """Create (``O_EXCL``, never through a symlink) an empty file with an unpredictable name next to ``final``.

    The name keeps all of the final suffixes (``a.weights.h5`` -> ``.a.k2j4x8.partial.weights.h5``)
    because writers such as Keras choose the format from them. Its mode is what a plain ``open``
    would give (``mkstemp`` makes 0600), so shared run and export folders stay readable.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    stem, dot, suffixes = final.name.partition(".")
    handle, name = tempfile.mkstemp(prefix=f".{stem}.", suffix=f".partial{dot}{suffixes}", dir=final.parent)
    try:
        os.fchmod(handle, 0o666 & ~_umask())
    except OSError:
        pass
    return handle, Path(name)


@contextlib.contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a new temporary sibling file of ``final``; rename it onto ``final`` if the block succeeds.

    The temporary file is created by :func:`tempfile.mkstemp` in the target folder, so a symlink
    planted in an output folder is never written through; the rename replaces a symlink at
    ``final`` itself, not its target.
    """
    final = Path(final)
    handle, temp = _temp_sibling(final)
    os.close(handle)
    try:
        yield temp
        os.replace(temp, final)
    finally:
        if os.path.lexists(temp):
            _remove(temp)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        import shutil

        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    final = Path(path)
    handle, temp = _temp_sibling(final)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temp, final)
    finally:
        if os.path.lexists(temp):
            _remove(temp)


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write ``payload`` as indented JSON to ``path`` atomically."""
    write_text_atomic(path, json.dumps(payload, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "value"):
        return value.value
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
