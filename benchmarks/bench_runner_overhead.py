"""Device-layer overhead: its reported p50 latency vs a bare ``interpreter.invoke()`` loop.

Same model (Google's int8 MobileNetV2 224 px from ../shared), same threads, same host, one run,
interleaved (bare, runner, bare, runner...) so that load from other processes hits both alike.
Goal: overhead <= 3 %. Also int8 vs float speed-up per thread count, when a float model of the same
network is available (``--float-model``; edgeft export makes one) -- otherwise skipped with a note.

    .venv/bin/python benchmarks/bench_runner_overhead.py [--runs 200] [--threads 1,2] [--rounds 3]

Prints the figures and writes benchmarks/results/bench_runner_overhead.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT, SHARED

MODEL = SHARED / "models" / "tf2_mobilenet_v2_1.0_224_ptq.tflite"
# The device layer run as a package, as on a device (standard library, numpy and an interpreter only).
DEVICE = [sys.executable, "-m", "targets"]
DEVICE_ENV = dict(os.environ, PYTHONPATH=str(ROOT))

BARE = r"""
import json, sys, time
import numpy as np
from ai_edge_litert.interpreter import Interpreter
path, threads, runs, warmup = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
it = Interpreter(model_path=path, num_threads=threads)
it.allocate_tensors()
inp = it.get_input_details()[0]
x = np.random.default_rng(0).integers(0, 256, size=inp["shape"], dtype=np.uint8).astype(inp["dtype"])
it.set_tensor(inp["index"], x)
for _ in range(warmup + 1):
    it.invoke()
lat = []
for _ in range(runs):
    t0 = time.perf_counter(); it.invoke(); lat.append((time.perf_counter() - t0) * 1000)
lat.sort()
print(json.dumps({"p50_ms": lat[len(lat) // 2] if len(lat) % 2 else (lat[len(lat)//2 - 1] + lat[len(lat)//2]) / 2,
                  "mean_ms": sum(lat) / len(lat)}))
"""


def bare(model: Path, threads: int, runs: int, warmup: int) -> dict:
    out = subprocess.run([sys.executable, "-c", BARE, str(model), str(threads), str(runs), str(warmup)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def runner(model: Path, threads: int, runs: int, warmup: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="edgeft-bench.") as work:
        spec = Path(work) / "spec.json"
        spec.write_text(json.dumps({"models": [{"name": model.name, "file": str(model)}], "threads": [threads],
                                    "runs": runs, "warmup": warmup}))
        out = subprocess.run(DEVICE + ["bench", "--spec", str(spec)], capture_output=True, text=True, check=True,
                             env=DEVICE_ENV)
        row = json.loads(out.stdout)["rows"][0]
        if row.get("error"):
            raise SystemExit(row["error"])
        return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved bare/runner rounds per thread count")
    parser.add_argument("--float-model", type=Path, default=None, help="a float .tflite of the same network")
    args = parser.parse_args()
    if not MODEL.is_file():
        raise SystemExit(f"skipped: {MODEL} is absent (../shared)")
    threads_list = [int(t) for t in args.threads.split(",")]
    results: dict = {"model": MODEL.name, "runs": args.runs, "warmup": args.warmup, "rounds": args.rounds,
                     "host_cores": __import__("os").cpu_count(), "overhead": [], "int8_vs_float": None,
                     "date": time.strftime("%Y-%m-%dT%H:%M:%S")}
    for threads in threads_list:
        bare_p50, runner_p50 = [], []
        for _ in range(args.rounds):
            bare_p50.append(bare(MODEL, threads, args.runs, args.warmup)["p50_ms"])
            runner_p50.append(runner(MODEL, threads, args.runs, args.warmup)["p50_ms"])
        b, r = statistics.median(bare_p50), statistics.median(runner_p50)
        overhead = (r - b) / b * 100
        results["overhead"].append({"threads": threads, "bare_p50_ms": b, "runner_p50_ms": r,
                                    "overhead_pct": overhead, "bare_rounds": bare_p50, "runner_rounds": runner_p50})
        print(f"threads {threads}: bare invoke p50 {b:.3f} ms, runner p50 {r:.3f} ms, overhead {overhead:+.2f} % "
              f"({'OK' if overhead <= 3 else 'ABOVE'} the 3 % goal)")
    if args.float_model and args.float_model.is_file():
        speedups = []
        for threads in threads_list:
            f = runner(args.float_model, threads, args.runs, args.warmup)["p50_ms"]
            q = runner(MODEL, threads, args.runs, args.warmup)["p50_ms"]
            speedups.append({"threads": threads, "float_p50_ms": f, "int8_p50_ms": q, "speedup": f / q})
            print(f"threads {threads}: float {f:.3f} ms, int8 {q:.3f} ms, int8 speed-up x{f / q:.2f}")
        results["int8_vs_float"] = speedups
    else:
        note = ("int8 vs float skipped: no float model of this network here (pass --float-model, e.g. "
                "an `edgeft export` model_float32.tflite)")
        results["int8_vs_float_note"] = note
        print(note)
    out = ROOT / "benchmarks" / "results" / "bench_runner_overhead.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
