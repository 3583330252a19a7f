"""Export speed and size: int8 vs float32, TFLite (ai_edge_litert) and ONNX (onnxruntime), same host and threads.

For each backbone (MobileNetV2 0.35 with the shared ImageNet weights, MobileNetV2 1.0 and
EfficientNet-B0 with weights=None and BatchNorm statistics set from data) and input size
(224 and 96 px), a head-trained run is built on a small synthetic image set, then
``edgeft.export.main_export`` converts it (one child process per conversion) to TFLite
float32/int8 and ONNX float32/int8 and measures each artifact's size and median single-image
latency in its runtime, all with the same thread count. Prints a table and writes
``benchmarks/results/export_speed.json``.

Usage: .venv/bin/python benchmarks/bench_export_speed.py [--threads 1] [--sizes 224,96] [--runs 50]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from _common import MOBILENET_035_WEIGHTS, ROOT  # noqa: E402

from edgeft.testing import HeadRunSpec, ShapesSpec, build_head_run, write_shapes  # noqa: E402

BACKBONES = [
    ("mobilenet_v2", 0.35, "shared"),
    ("mobilenet_v2", 1.0, None),
    ("efficientnet_b0", None, None),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--sizes", default="224,96")
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "export_speed.json")
    args = parser.parse_args()

    from edgeft.export import ExportConfig, main_export
    from edgeft.fileio import write_json_atomic
    from edgeft.tfcompat import package_versions

    rows = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="edgeft-bench-") as tmp:
        os.environ["EDGEFT_CACHE_DIR"] = str(Path(tmp) / "cache")
        data = write_shapes(Path(tmp) / "data", ShapesSpec(per_class=8, val_per_class=4, size=240))
        for size in [int(s) for s in args.sizes.split(",")]:
            for backbone, alpha, weights in BACKBONES:
                label = f"{backbone}" + (f" {alpha}" if alpha else "") + f" {size}px"
                if weights == "shared" and not MOBILENET_035_WEIGHTS.is_file():
                    weights_path = None
                else:
                    weights_path = MOBILENET_035_WEIGHTS if weights == "shared" else None
                run = Path(tmp) / f"run-{backbone}-{alpha}-{size}"
                print(f"[{time.monotonic() - started:6.0f}s] {label}: building the run", file=sys.stderr, flush=True)
                build_head_run(run, data, HeadRunSpec(backbone=backbone, alpha=alpha, image_size=size, weights=weights_path,
                                                     epochs=1))
                report = main_export(ExportConfig.from_flags(
                    run, Path(tmp) / f"export-{backbone}-{alpha}-{size}", formats=["tflite", "onnx"], int8=True,
                    calib_size=16, threads=args.threads, latency_runs=args.runs, max_drop=100.0))
                by = {(a["format"], a["precision"]): a for a in report["artifacts"]}
                row = {"model": label, "backbone": backbone, "alpha": alpha, "image_size": size,
                       "peak_rss_mb": report["peak_rss_mb"]}
                for fmt in ("tflite", "onnx"):
                    f32, i8 = by[(fmt, "float32")], by[(fmt, "int8")]
                    row[fmt] = {
                        "float32_bytes": f32["size_bytes"], "int8_bytes": i8["size_bytes"],
                        "size_ratio": round(i8["size_bytes"] / f32["size_bytes"], 3),
                        "float32_ms": f32["p50_ms"], "int8_ms": i8["p50_ms"],
                        "latency_ratio": round(i8["p50_ms"] / f32["p50_ms"], 3),
                        "int8_agreement": i8["agreement"],
                    }
                rows.append(row)
                print(f"{label:<28} tflite {row['tflite']['float32_ms']:7.2f} -> {row['tflite']['int8_ms']:7.2f} ms "
                      f"({row['tflite']['latency_ratio']:.2f}x), size {row['tflite']['size_ratio']:.2f}x | onnx "
                      f"{row['onnx']['float32_ms']:7.2f} -> {row['onnx']['int8_ms']:7.2f} ms "
                      f"({row['onnx']['latency_ratio']:.2f}x), size {row['onnx']['size_ratio']:.2f}x", flush=True)
    result = {
        "host": {"machine": platform.machine(), "processor": platform.processor(), "cpus": os.cpu_count(),
                 "python": platform.python_version()},
        "threads": args.threads, "latency": "median of single-image invocations after warm-up",
        "runtimes": {"tflite": "ai_edge_litert.interpreter.Interpreter (XNNPACK default)",
                     "onnx": "onnxruntime CPUExecutionProvider"},
        "rows": rows, "wall_s": round(time.monotonic() - started, 1), "versions": package_versions(),
    }
    write_json_atomic(args.out, result)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
