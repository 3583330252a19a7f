"""Atomic file writing: every artifact is written under a temporary name and renamed when complete.

A crash or Ctrl-C therefore leaves either the previous file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any, Iterator


@contextlib.contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temporary sibling path of ``final``; rename it onto ``final`` if the block succeeds.

    The temporary name keeps all of the final suffixes (``a.weights.h5`` ->
    ``.a.partial-PID.weights.h5``) because writers such as Keras choose the format from them.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    stem, dot, suffixes = final.name.partition(".")
    temp = final.with_name(f".{stem}.partial-{os.getpid()}{dot}{suffixes}")
    if temp.exists():
        _remove(temp)
    try:
        yield temp
        os.replace(temp, final)
    finally:
        if temp.exists():
            _remove(temp)


def _remove(path: Path) -> None:
    if path.is_dir():
        import shutil

        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as temp:
        with open(temp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())


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
