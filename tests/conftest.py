"""Shared fixtures: paths to ../shared (defined here only), datasets the tests write, and a CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
SHARED_WEIGHTS = SHARED / "weights" / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5"
HYMENOPTERA = SHARED / "datasets" / "hymenoptera_data"


def require_shared(path: Path) -> Path:
    """Skip the calling test with a reason when a ../shared asset is absent (a user's checkout)."""
    if not path.exists():
        pytest.skip(f"needs {path} (the shared offline assets are not present)")
    return path


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the decoded-image cache and Keras' weight folder out of the user's home."""
    cache = tmp_path_factory.getbasetemp() / "edgeft-cache"
    monkeypatch.setenv("EDGEFT_CACHE_DIR", str(cache))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path_factory.getbasetemp() / "keras-home"))
    monkeypatch.delenv("EDGEFT_WEIGHTS_DIR", raising=False)


@dataclass
class CliResult:
    exit_code: int
    stdout: str
    stderr: str


def run_edgeft(*args: str, env: dict[str, str] | None = None, timeout: float = 600) -> CliResult:
    """Run the real ``edgeft`` console entry point in a child process."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    completed = subprocess.run(
        [sys.executable, "-m", "edgeft", *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
        cwd=REPO,
    )
    return CliResult(completed.returncode, completed.stdout, completed.stderr)


def write_digits(folder: Path, per_class: int = 60, classes: int = 10, seed: int = 0) -> Path:
    """A class-folder PNG set of scikit-learn's real handwritten digits (the demo's writer); returns ``folder``."""
    from edgeft.demo import write_digits as write

    write(folder, per_class=per_class, classes=classes, seed=seed)
    return folder


def write_shapes(folder: Path, per_class: int = 12, size: int = 48, seed: int = 0) -> Path:
    """A 2-class set (disc vs square on noise) in class folders, written alternately as PNG and JPEG."""
    from edgeft.testing import ShapesSpec
    from edgeft.testing import write_shapes as write

    return write(folder, ShapesSpec(("disc", "square"), per_class, 0, size, seed, ("png", "jpg")))


def pillow_two_passes(image: Any, width: int, height: int) -> Any:
    """Pillow's ``resize(..., BILINEAR, reducing_gap=3.0)`` as Pillow 12 and earlier run it, in plain Pillow calls:
    the integer box reduction, then the horizontal pass, then the vertical pass (uint8 in between)."""
    from PIL import Image

    source_width, source_height = image.size
    factor_x, factor_y = int(source_width / width / 3.0) or 1, int(source_height / height / 3.0) or 1
    if factor_x > 1 or factor_y > 1:
        image = image.reduce((factor_x, factor_y))
    rows = image.size[1]
    image = image.resize((width, rows), Image.Resampling.BILINEAR, box=(0, 0, source_width / factor_x, rows))
    return image.resize((width, height), Image.Resampling.BILINEAR, box=(0, 0, width, source_height / factor_y))
