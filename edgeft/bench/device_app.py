"""The device layer as one file: a zipapp of ``edgeft.targets``, built once per content and cached.

``bench`` and ``doctor`` push this file and run ``python3 edgeft-device.pyz MODE ...`` on the
device; nothing else of edgeft is installed there.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import zipapp
from pathlib import Path

APP_NAME = "edgeft-device.pyz"
PACKAGE_IN_APP = "edgeft_device"  # the package's name inside the archive
APP_LAYOUT = "2"  # bump when the archive's layout (not the device code) changes


def package_dir() -> Path:
    """The device package's folder (the repository's ``targets/``, installed as ``edgeft.targets``)."""
    import edgeft.targets as package

    return Path(package.__file__).resolve().parent


def _sources(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)


def content_hash(root: Path | None = None) -> str:
    """sha256 over the package's Python files (relative names and bytes) and the app's layout."""
    root = root or package_dir()
    digest = hashlib.sha256(f"{APP_LAYOUT}\0".encode("utf-8"))
    for path in _sources(root):
        digest.update(path.relative_to(root).as_posix().encode("utf-8") + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def cache_dir() -> Path:
    """``$EDGEFT_CACHE_DIR``, else ``~/.cache/edgeft``."""
    return Path(os.environ.get("EDGEFT_CACHE_DIR") or Path.home() / ".cache" / "edgeft")


def device_app() -> Path:
    """The zipapp for the current device code, built on first use and cached by content hash."""
    root = package_dir()
    target = cache_dir() / "device" / f"edgeft-device-{content_hash(root)[:16]}.pyz"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="edgeft-pyz.") as tmp:
        source = Path(tmp) / "src"
        for path in _sources(root):
            copy = source / PACKAGE_IN_APP / path.relative_to(root)
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, copy)
        # zipapp's generated entry point drops main()'s return value: the exit status matters here
        (source / "__main__.py").write_text(
            f"import sys\nfrom {PACKAGE_IN_APP}.__main__ import main\nsys.exit(main())\n", "utf-8")
        partial = target.with_name(f"{target.name}.{os.getpid()}.tmp")
        zipapp.create_archive(source, partial, interpreter="/usr/bin/env python3", compressed=True)
        os.replace(partial, target)
    return target
