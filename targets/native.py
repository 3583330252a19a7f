"""Native stderr of the interpreters: the start-up banners they print, filtered out; anything else kept.

TFLite's C++ logger writes "INFO: Created TensorFlow Lite XNNPACK delegate for CPU." to file
descriptor 2 whenever an interpreter is created, past Python's ``sys.stderr``. Around an
interpreter's creation, fd 2 goes to a temporary file; afterwards every line that is not a
known banner is written back to the real stderr, so native errors and warnings still show.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
import threading
from contextlib import contextmanager
from typing import Iterator

# Informational lines of TFLite's native logger that say nothing the user must act on.
BANNERS = re.compile(r"^INFO: (Created TensorFlow Lite .*delegate for CPU\.|Initialized TensorFlow Lite runtime\.)\s*$")
VERBOSE_ENV = "EDGEFT_TF_VERBOSE"
# fd 2 is the process's: two threads loading models at once must not save each other's capture as "the real one".
_REDIRECT_LOCK = threading.RLock()


def filter_banners(text: str) -> str:
    """``text`` without the interpreter banner lines."""
    return "".join(line for line in text.splitlines(True) if not BANNERS.match(line))


@contextmanager
def banners_silenced() -> Iterator[None]:
    """Run the body with fd 2 captured; write back what it printed, less the banners (``EDGEFT_TF_VERBOSE=1``: all)."""
    if os.environ.get(VERBOSE_ENV):
        yield
        return
    with _REDIRECT_LOCK:
        with _captured_fd2():
            yield


@contextmanager
def _captured_fd2() -> Iterator[None]:
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, AttributeError, ValueError):  # no real fd 2 (e.g. an embedding app): nothing to filter
        yield
        return
    try:
        capture = tempfile.TemporaryFile()
    except OSError:  # no writable temporary folder: the banner is a lesser harm than losing the load
        os.close(saved)
        yield
        return
    try:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            try:
                sys.stderr.flush()
            except (AttributeError, ValueError):
                pass
            os.dup2(saved, 2)
            capture.seek(0)
            kept = filter_banners(capture.read().decode("utf-8", "replace"))
            if kept:
                os.write(2, kept.encode("utf-8"))
    finally:
        os.close(saved)
        capture.close()
