"""``edgeft predict``: classify image files and folders with an exported model, no TensorFlow.

One line per image on stdout, in the order given (folders walked recursively, sorted):
``FILE<TAB>LABEL<TAB>SCORE`` (more label/score pairs with ``--top-k``), or with ``--json`` one
JSON object per line, ``{"file", "top": [[label, score], ...]}``. An image that cannot be read
gives ``FILE<TAB>error: MESSAGE`` (``{"file", "error"}``) and the others go on. Exit status:
0 when every image was classified, :data:`EXIT_SOME_FAILED` when any could not be; a model or
labels file that cannot be used is an error before any image (exit 2).
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path
from typing import Iterator, Sequence, TextIO

from edgeft.data.images import IMAGE_SUFFIXES
from edgeft.errors import EdgeftError, UsageError
from edgeft.progress import log, track

EXIT_SOME_FAILED = 9


def _walk(folder: Path) -> list[Path]:
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [Path(root) / f for f in sorted(files) if Path(f).suffix.lower() in IMAGE_SUFFIXES]
    return found


def _items(inputs: Sequence[Path]) -> Iterator[tuple[Path, str | None]]:
    """(image path, None) for every image, or (input, reason) for an input that holds none."""
    for item in inputs:
        if item.is_dir():
            files = _walk(item)
            if not files:
                yield item, f"no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in folder"
                continue
            for path in track(files, len(files), f"classifying {item}"):
                yield path, None
        else:
            yield item, None


def _line(path: Path, top: list[tuple[str, float]] | None, error: str | None, as_json: bool) -> str:
    if as_json:
        body = {"file": str(path), "error": error} if error else {"file": str(path), "top": [[l, s] for l, s in top or []]}
        return json.dumps(body)
    if error:
        return f"{path}\terror: {error}"
    return "\t".join([str(path)] + [f"{label}\t{score:.4f}" for label, score in top or []])


def main_predict(model: Path, inputs: Sequence[Path], top_k: int = 1, labels: Path | None = None,
                 threads: int = 1, as_json: bool = False, out: TextIO | None = None) -> int:
    """Classify ``inputs`` (files and folders) with ``model``; print one line each; return the exit status."""
    from edgeft.runtime import Classifier

    out = out or sys.stdout
    if top_k < 1:
        raise UsageError(f"--top-k must be at least 1, got {top_k}")
    if not inputs:
        raise UsageError("give at least one image file or folder")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        classifier = Classifier.load(model, threads=threads, labels=labels)
    for warning in caught:
        log(f"warning: {warning.message}")
    failed = total = 0
    with classifier:
        for path, problem in _items(inputs):
            total += 1
            top = None
            if problem is None:
                try:
                    top = classifier.classify(path, top_k)
                except EdgeftError as error:
                    problem = error.message
            failed += problem is not None
            print(_line(path, top, problem, as_json), file=out, flush=True)
    if failed:
        log(f"{failed} of {total} inputs could not be classified (exit {EXIT_SOME_FAILED})")
        return EXIT_SOME_FAILED
    return 0
