"""Shared fixtures: paths to ../shared, datasets the tests write, and a CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
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
    """A class-folder PNG set of scikit-learn's real handwritten digits."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    for label in range(classes):
        members = np.flatnonzero(digits.target == label)
        rng.shuffle(members)
        for index in members[:per_class]:
            target = folder / str(label) / f"{index:04d}.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            pixels = np.clip(digits.images[index] * 255.0 / 16.0, 0, 255).astype(np.uint8)
            Image.fromarray(pixels, mode="L").save(target)
    return folder


def write_shapes(folder: Path, per_class: int = 12, size: int = 48, seed: int = 0) -> Path:
    """A 2-class set (bright square vs dark disc on noise) written as JPEG and PNG."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    for label, name in enumerate(("disc", "square")):
        for index in range(per_class):
            background = rng.integers(0, 80, (size, size, 3), dtype=np.uint8)
            image = Image.fromarray(background)
            draw = ImageDraw.Draw(image)
            lo, hi = size // 4, 3 * size // 4
            if label:
                draw.rectangle([lo, lo, hi, hi], fill=(230, 230, 40))
            else:
                draw.ellipse([lo, lo, hi, hi], fill=(40, 90, 230))
            target = folder / name / f"{index:03d}.{'jpg' if index % 2 else 'png'}"
            target.parent.mkdir(parents=True, exist_ok=True)
            image.save(target)
    return folder
