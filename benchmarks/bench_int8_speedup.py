"""int8 vs float32 latency through edgeft's device layer, on any host that has a Python.

Whether int8 beats float32 depends on the processor, not on the model file: XNNPACK's and
onnxruntime's int8 kernels are fast where the CPU has 8-bit dot-product instructions (x86
AVX512-VNNI / AVX-VNNI / AMX, Arm ``asimddp`` on a Pi 5) and about as fast as float where it
has only AVX2 or plain NEON. So this benchmark is split in two:

``prepare DIR`` (needs TensorFlow: the project's venv)
    builds small head-trained runs, exports them with ``edgeft.export.main_export`` and copies
    the artifacts plus a bench spec into DIR (``--set device`` keeps DIR under ~45 MB: TFLite
    for every model, ONNX for MobileNetV2 0.35 only).

``measure DIR`` (standard library only; the device needs numpy and one interpreter)
    runs the device layer (``python -m targets bench``, from this checkout) on DIR -- each
    (artifact, thread count) in its own process, exactly as ``edgeft bench`` does on a target --
    pairs every int8 artifact with its float32 twin and prints p50 latencies and int8/float
    ratios. The device facts
    (CPU model, its int8 dot-product instructions) go into the results file.

Usage::

    .venv/bin/python benchmarks/bench_int8_speedup.py prepare /tmp/int8-bench --set device
    .venv/bin/python benchmarks/bench_int8_speedup.py measure /tmp/int8-bench --threads 1,2,4 \\
        --out benchmarks/results/int8_speedup_HOST.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEVICE = [sys.executable, "-m", "targets"]  # the device layer, standard library + numpy + an interpreter
SEPARATOR = "__"

# (backbone, alpha, image size, weights, ONNX too in the "device" set)
MODELS = [
    ("mobilenet_v2", 0.35, 224, "shared", True),
    ("mobilenet_v2", 0.35, 96, "shared", True),
    ("mobilenet_v2", 1.0, 224, None, False),
    ("efficientnet_b0", None, 224, None, False),
]


def model_label(backbone: str, alpha: float | None, size: int) -> str:
    return f"{backbone}-{alpha}-{size}" if alpha is not None else f"{backbone}-{size}"


def prepare(out: Path, which: str, runs: int) -> int:
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from _common import MOBILENET_035_WEIGHTS

    from edgeft.testing import HeadRunSpec, ShapesSpec, build_head_run, write_shapes

    from edgeft.export import ExportConfig, main_export

    out.mkdir(parents=True, exist_ok=True)
    models = []
    with tempfile.TemporaryDirectory(prefix="edgeft-int8-bench-") as tmp:
        os.environ["EDGEFT_CACHE_DIR"] = str(Path(tmp) / "cache")
        data = write_shapes(Path(tmp) / "data", ShapesSpec(per_class=8, val_per_class=4, size=240))
        for backbone, alpha, size, weights, with_onnx in MODELS:
            label = model_label(backbone, alpha, size)
            formats = ["tflite", "onnx"] if (with_onnx or which == "full") else ["tflite"]
            weights_path = MOBILENET_035_WEIGHTS if weights == "shared" and MOBILENET_035_WEIGHTS.is_file() else None
            run = Path(tmp) / f"run-{label}"
            print(f"{label}: building and exporting {'/'.join(formats)}", file=sys.stderr, flush=True)
            build_head_run(run, data, HeadRunSpec(backbone=backbone, alpha=alpha, image_size=size, weights=weights_path,
                                                 epochs=1))
            export = Path(tmp) / f"export-{label}"
            main_export(ExportConfig.from_flags(run, export, formats=formats, int8=True, calib_size=16,
                                                latency_runs=0, max_drop=100.0))
            for fmt in formats:
                for precision in ("float32", "int8"):
                    name = f"model_{precision}.{fmt}"
                    target = f"{label}{SEPARATOR}{name}"
                    shutil.copyfile(export / name, out / target)
                    shutil.copyfile(export / f"{name}.json", out / f"{target}.json")
                    models.append({"name": target, "file": target, "sidecar": _sidecar(out / target)})
            if "onnx" in formats:  # the same float model quantized with int8 weights, the other ONNX choice
                target = f"{label}{SEPARATOR}model_int8-int8weights.onnx"
                onnx_int8_weights_variant(export, run, out / target)
                shutil.copyfile(export / "model_int8.onnx.json", out / f"{target}.json")
                models.append({"name": target, "file": target, "sidecar": _sidecar(out / target)})
    spec = {"models": models, "threads": [1], "runs": runs, "warmup": 10}
    (out / "spec.json").write_text(json.dumps(spec, indent=1), "utf-8")
    total = sum(p.stat().st_size for p in out.iterdir())
    print(f"wrote {len(models)} artifacts and spec.json to {out} ({total / 1e6:.1f} MB)")
    return 0


def _sidecar(artifact: Path) -> dict:
    """The artifact's sidecar metadata, which the bench spec carries inline (preprocessing, labels)."""
    from edgeft.targets import read_sidecar

    return read_sidecar(str(artifact)) or {}


def onnx_int8_weights_variant(export: Path, run: Path, target: Path) -> None:
    """Quantize ``export``'s float32 ONNX model again, with int8 weights (``--onnx-weights int8``)."""
    import numpy as np

    from edgeft.data.dataset import load_dataset
    from edgeft.export.config import OnnxWeights
    from edgeft.export.formats.onnx import quantize_onnx_static
    from edgeft.run.rundir import RunDir

    manifest = RunDir.open(run).manifest
    _, splits = load_dataset(Path(manifest.data_dir), manifest.image_size, seed=0)
    pixels = np.asarray(splits["train"].images[:16])
    quantize_onnx_static(export / "model_float32.onnx", target, pixels, manifest.preprocessing, "minmax",
                         OnnxWeights.INT8)


def pair_rows(rows: list[dict]) -> list[dict]:
    """One entry per (model, format, variant, threads): float32 and quantized p50 and their ratio."""
    by_key: dict[tuple[str, str, int], dict[str, dict]] = {}
    for row in rows:
        label, name = row["artifact"].split(SEPARATOR)
        precision, fmt = name[len("model_"):].rsplit(".", 1)
        by_key.setdefault((label, fmt, int(row["threads"])), {})[precision] = row
    pairs = []
    for (label, fmt, threads), twins in sorted(by_key.items()):
        f32 = twins.get("float32", {})
        for variant in sorted(v for v in twins if v != "float32"):
            pairs.append(_pair(label, fmt, threads, variant, f32, twins[variant]))
    return pairs


def _pair(label: str, fmt: str, threads: int, variant: str, f32: dict, i8: dict) -> dict:
    f_ms, q_ms = f32.get("p50_ms"), i8.get("p50_ms")
    return {
        "model": label, "format": fmt, "variant": variant, "threads": threads,
        "runtime": i8.get("runtime") or f32.get("runtime"),
        "float32_p50_ms": round(f_ms, 4) if f_ms else None, "int8_p50_ms": round(q_ms, 4) if q_ms else None,
        "int8_over_float32": round(q_ms / f_ms, 3) if f_ms and q_ms else None,
        "float32_bytes": f32.get("model_size_bytes"), "int8_bytes": i8.get("model_size_bytes"),
        "errors": [r["error"] for r in (f32, i8) if r.get("error")],
    }


def measure(directory: Path, threads: list[int], runs: int | None, out: Path | None, label: str | None) -> int:
    spec = json.loads((directory / "spec.json").read_text("utf-8"))
    spec["threads"] = threads
    if runs:
        spec["runs"] = runs
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="edgeft-int8-measure-") as tmp:
        work = Path(tmp)
        for model in spec["models"]:  # the device layer resolves files next to its spec
            os.symlink((directory / model["file"]).resolve(), work / model["file"])
        (work / "spec.json").write_text(json.dumps(spec), "utf-8")
        done = subprocess.run(DEVICE + ["bench", "--spec", str(work / "spec.json")], capture_output=True, text=True,
                              env=dict(os.environ, PYTHONPATH=str(ROOT)))
    try:
        document = json.loads(done.stdout)
    except ValueError:
        print(f"the device layer printed no JSON (exit {done.returncode}): {done.stderr.strip()[-300:]}", file=sys.stderr)
        return 1
    if "rows" not in document:
        print(f"device error: {document.get('error')}", file=sys.stderr)
        return 1
    pairs = pair_rows(document["rows"])
    device = document["device"]
    print(f"host: {device.get('cpu_model')} ({device.get('cores')} cores), int8 dot-product ISA: "
          f"{', '.join(device.get('int8_isa') or []) or 'none'}; python {device.get('python')}")
    print(f"{'model':<26} {'artifact':<26} {'thr':>3} {'float32 ms':>11} {'int8 ms':>9} {'int8/float':>10}")
    for p in pairs:
        ratio = f"{p['int8_over_float32']:.2f}x" if p["int8_over_float32"] else "n/a"
        f_ms = f"{p['float32_p50_ms']:.2f}" if p["float32_p50_ms"] else "n/a"
        q_ms = f"{p['int8_p50_ms']:.2f}" if p["int8_p50_ms"] else "n/a"
        print(f"{p['model']:<26} {p['variant'] + '.' + p['format']:<26} {p['threads']:>3} {f_ms:>11} {q_ms:>9} {ratio:>10}"
              + (f"  errors: {p['errors']}" if p["errors"] else ""))
    result = {
        "label": label or platform.node(), "device": device, "threads": threads, "runs": spec["runs"],
        "latency": "p50 of single-image invocations in the device layer (targets/), one process per artifact and thread count",
        "pairs": pairs, "wall_s": round(time.monotonic() - started, 1),
    }
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        temporary = out.with_name(out.name + ".tmp")
        temporary.write_text(json.dumps(result, indent=1) + "\n", "utf-8")
        os.replace(temporary, out)
        print(f"wrote {out}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="build and export the models into DIR (needs TensorFlow)")
    p.add_argument("dir", type=Path)
    p.add_argument("--set", choices=("device", "full"), default="device",
                   help="device: ONNX for MobileNetV2 0.35 only (keeps DIR small); full: ONNX for every model")
    p.add_argument("--runs", type=int, default=100)
    m = sub.add_parser("measure", help="time DIR's artifacts with the device layer (standard library only)")
    m.add_argument("dir", type=Path)
    m.add_argument("--threads", default="1")
    m.add_argument("--runs", type=int)
    m.add_argument("--out", type=Path)
    m.add_argument("--label")
    args = parser.parse_args()
    if args.command == "prepare":
        return prepare(args.dir, args.set, args.runs)
    return measure(args.dir, [int(t) for t in args.threads.split(",")], args.runs, args.out, args.label)


if __name__ == "__main__":
    sys.exit(main())
