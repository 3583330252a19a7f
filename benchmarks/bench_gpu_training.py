"""Fine-tuning throughput on a GPU host: images per second, float32 vs --mixed-precision, GPU utilisation.

Runs the real ``edgeft finetune`` (partial and full strategies) for MobileNetV2 1.0 and EfficientNet-B0
at 224 px on a synthetic class-folder set written here (no network needed: the backbones get random
weights saved to an .h5 file first, which costs the same arithmetic as ImageNet weights), while a thread
samples ``nvidia-smi``. Images per second come from each phase's wall time in ``metrics.json``.

    python benchmarks/bench_gpu_training.py [--images 512] [--epochs 2] [--out benchmarks/results/gpu_training.json]

On a host without a usable GPU it says so and still measures (the figures are then CPU figures).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
MODELS = (("mobilenet_v2", "1.0"), ("efficientnet_b0", None))


def _write_dataset(root: Path, images: int, classes: int = 4, size: int = 256) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for index in range(images):
        folder = root / f"class_{index % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(folder / f"{index}.jpg", quality=90)
    return root


def _random_weights(backbone: str, alpha: str | None, folder: Path, size: int) -> Path:
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    from edgeft.backbones import get_backbone
    from edgeft.tfcompat import keras

    spec = get_backbone(backbone)
    inputs = keras().Input((size, size, 3))
    base = spec.construct(inputs, weights=None, alpha=float(alpha) if alpha else None)
    path = folder / f"{backbone}_random.h5"
    keras().Model(inputs, base.output).save_weights(str(path))
    return path


class GpuSampler(threading.Thread):
    """Samples GPU utilisation and memory every 0.5 s through nvidia-smi."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.samples: list[tuple[float, float]] = []
        self.stop = threading.Event()
        self.available = shutil.which("nvidia-smi") is not None

    def run(self) -> None:
        while self.available and not self.stop.is_set():
            try:
                line = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu,memory.used",
                                       "--format=csv,noheader,nounits"], capture_output=True, text=True,
                                      timeout=5).stdout.splitlines()[0]
                util, memory = (float(v) for v in line.split(","))
                self.samples.append((util, memory))
            except (OSError, subprocess.SubprocessError, ValueError, IndexError):
                pass
            self.stop.wait(0.5)

    def summary(self) -> dict[str, float | None]:
        if not self.samples:
            return {"gpu_util_mean_pct": None, "gpu_util_p90_pct": None, "gpu_memory_max_mib": None}
        util = np.array([s[0] for s in self.samples])
        return {"gpu_util_mean_pct": round(float(util.mean()), 1),
                "gpu_util_p90_pct": round(float(np.percentile(util, 90)), 1),
                "gpu_memory_max_mib": max(s[1] for s in self.samples)}


def _machine() -> dict[str, object]:
    gpus = None
    if shutil.which("nvidia-smi"):
        gpus = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout.strip().splitlines()
    return {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
            "python": platform.python_version(), "gpus": gpus}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--models", default="mobilenet_v2,efficientnet_b0", help="comma-separated backbones")
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "gpu-bench")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "gpu_training.json")
    args = parser.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    data = _write_dataset(args.work / "data", args.images)
    rows = []
    chosen = [(b, a) for b, a in MODELS if b in args.models.split(",")]
    for backbone, alpha in chosen:
        weights = _random_weights(backbone, alpha, args.work, args.image_size)
        for strategy in ("partial", "full"):
            for mixed in (False, True):
                run = args.work / f"{backbone}-{strategy}-{'mixed' if mixed else 'fp32'}"
                argv = [sys.executable, "-m", "edgeft", "finetune", str(data), "--backbone", backbone,
                        "--image-size", str(args.image_size), "--weights", str(weights), "--strategy", strategy,
                        "--epochs", "1", "--fine-tune-epochs", str(args.epochs), "--patience", "0",
                        "--batch-size", str(args.batch_size), "--no-augment", "--out", str(run)]
                if alpha:
                    argv += ["--alpha", alpha]
                if mixed:
                    argv.append("--mixed-precision")
                sampler = GpuSampler()
                sampler.start()
                started = time.monotonic()
                proc = subprocess.run(argv, capture_output=True, text=True, cwd=REPO)
                wall = time.monotonic() - started
                sampler.stop.set()
                sampler.join()
                row: dict[str, object] = {"backbone": backbone, "alpha": alpha, "strategy": strategy,
                                          "precision": "mixed_float16" if mixed else "float32", "wall_s": round(wall, 1)}
                if proc.returncode != 0:
                    row["error"] = (proc.stderr.strip().splitlines() or ["no output"])[-1]
                else:
                    metrics = json.loads((run / "metrics.json").read_text())
                    phase = metrics["phases"][-1]
                    train_images = round(args.images * 0.8)
                    row["fine_tune_images_per_s"] = round(train_images * max(phase["epochs_run"], 1) / phase["wall_s"], 1)
                    row["devices"] = next((line for line in proc.stderr.splitlines() if line.startswith("devices:")), None)
                row.update(sampler.summary())
                print(json.dumps(row), flush=True)
                rows.append(row)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": _machine(), "images": args.images, "epochs": args.epochs,
                                    "batch_size": args.batch_size, "image_size": args.image_size, "rows": rows}, indent=2) + "\n")
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
