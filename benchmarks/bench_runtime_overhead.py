"""Runtime overhead: ``Classifier.classify`` per image vs a bare ``interpreter.invoke()`` on the same input.

Same model (Google's int8 MobileNetV2 224 px from ../shared), same threads, same host, one process,
interleaved rounds (bare, frame, JPEG, bare, ...) so that load from other processes hits all alike:

- bare:  ``interpreter.invoke()`` on the already preprocessed tensor (a separate interpreter);
- (a) frame: ``classify(array)`` on a decoded 640x480 uint8 RGB frame (a camera loop);
- (b) JPEG:  ``classify(path)`` on a 640x480 JPEG file of the same photo;
- (c) frame, scaled: (a) with ``scale``/``offset`` preprocessing, so pixels go through
  ``pixel * scale + offset`` and the input quantization, as with edgeft's own int8 exports.

Goal: (a) at most 15 % over bare. Where the time goes: JPEG decode (draft mode), resize (Pillow's
bilinear filter, exactly as training resizes; in bands on ``--threads`` threads for a frame size seen
before, the same pixels), the pixel -> input mapping ("quantize": the
classifier's lookup table, and ``Model.prepare`` it replaces), invoke, and the rest (top-k, locking).

``--baseline DIR`` also times the device layer of another checkout (``DIR/targets``, for example the
main branch before a change) on the same inputs in the same rounds: before and after, side by side.

Resizes that are cheaper but NOT what training does are timed too (resize only, and their mean
difference from the exact pixels), to say what meeting the goal would take; the runtime uses none.

    .venv/bin/python benchmarks/bench_runtime_overhead.py [--runs 100] [--rounds 3] [--threads 1]
        [--baseline ../main]

Prints the figures and writes benchmarks/results/runtime_overhead.json.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared"
MODEL = SHARED / "models" / "tf2_mobilenet_v2_1.0_224_ptq.tflite"
PHOTO = SHARED / "models" / "cat.bmp"
SCALED = {"scale": 1 / 127.5, "offset": -1.0}  # MobileNet's convention, as edgeft's exports record it


def _median_ms(func: Callable[[], Any], runs: int, clock: Callable[[], float]) -> float:
    times = []
    for _ in range(runs):
        start = clock()
        func()
        times.append((clock() - start) * 1000.0)
    return statistics.median(times)


def _load_baseline(checkout: Path) -> Any:
    """Another checkout's device layer (``checkout/targets``) as the package ``baseline_targets``."""
    folder = checkout / "targets"
    spec = importlib.util.spec_from_file_location("baseline_targets", folder / "__init__.py",
                                                  submodule_search_locations=[str(folder)])
    if spec is None or spec.loader is None:
        raise SystemExit(f"error: no device layer in {folder}")
    module = importlib.util.module_from_spec(spec)
    sys.modules["baseline_targets"] = module
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--baseline", type=Path, default=None, help="a checkout whose targets/ to time beside this one")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "runtime_overhead.json")
    args = parser.parse_args()

    import numpy as np
    from ai_edge_litert.interpreter import Interpreter
    from PIL import Image

    from edgeft.runtime import Classifier
    from edgeft.targets import load_image

    classifier = Classifier.load(MODEL, threads=args.threads)
    scaled = Classifier.load(MODEL, threads=args.threads, **SCALED)
    size = classifier.input_size
    with Image.open(PHOTO) as photo:
        frame = np.asarray(photo.convert("RGB").resize((640, 480), Image.Resampling.BICUBIC))
    work = Path(tempfile.mkdtemp(prefix="edgeft-runtime-bench."))
    jpeg = work / "frame.jpg"
    Image.fromarray(frame).save(jpeg, quality=90)

    bare = Interpreter(model_path=str(MODEL), num_threads=args.threads)
    bare.allocate_tensors()
    inp = bare.get_input_details()[0]
    tensor = classifier.prepare(load_image(frame, size)[None])
    bare.set_tensor(inp["index"], tensor)

    def decode_only() -> Any:
        with Image.open(jpeg) as image:
            image.draft("RGB", (size[1] * 2, size[0] * 2))
            image.load()
            return image.convert("RGB")

    decoded = decode_only()
    pixels = load_image(frame, size)[None]
    assert np.array_equal(scaled.prepare(pixels), scaled.model.prepare(pixels))

    parts: dict[str, Callable[[], Any]] = {
        "bare_invoke": bare.invoke,
        "classify_frame": lambda: classifier.classify(frame),
        "classify_jpeg": lambda: classifier.classify(jpeg),
        "classify_frame_scaled": lambda: scaled.classify(frame),
        "jpeg_decode": decode_only,
        "resize_from_jpeg": lambda: load_image(decoded, size, args.threads),
        "resize_from_frame": lambda: load_image(frame, size, args.threads),
        "quantize": lambda: classifier.prepare(pixels),
        "quantize_scaled_table": lambda: scaled.prepare(pixels),
        "quantize_scaled_prepare": lambda: scaled.model.prepare(pixels),
        "classifier_invoke": lambda: classifier.scores(pixels[0]),  # model-sized pixels: no resize
    }
    if args.baseline is not None:
        old = _load_baseline(args.baseline.resolve())
        old_classifier = old.Classifier.load(str(MODEL), threads=args.threads)
        old_scaled = old.Classifier.load(str(MODEL), threads=args.threads, **SCALED)
        assert old_classifier.classify(frame) == classifier.classify(frame)
        assert old_scaled.classify(jpeg) == scaled.classify(jpeg)
        parts.update({
            "baseline_classify_frame": lambda: old_classifier.classify(frame),
            "baseline_classify_jpeg": lambda: old_classifier.classify(jpeg),
            "baseline_classify_frame_scaled": lambda: old_scaled.classify(frame),
        })
    # Not what training does (so not used): what a cheaper resize would cost, from the same frame.
    pil_frame = Image.fromarray(frame)
    target = (size[1], size[0])
    resampling = Image.Resampling
    alternatives: dict[str, Callable[[], Any]] = {
        "alt_exact_resize_only": lambda: pil_frame.resize(target, resampling.BILINEAR, reducing_gap=3.0),
        "alt_reducing_gap_1": lambda: pil_frame.resize(target, resampling.BILINEAR, reducing_gap=1.0),
        "alt_box": lambda: pil_frame.resize(target, resampling.BOX),
        "alt_nearest": lambda: pil_frame.resize(target, resampling.NEAREST),
    }
    exact = np.asarray(alternatives["alt_exact_resize_only"](), np.int16)
    alt_diff = {name: float(np.abs(np.asarray(func(), np.int16) - exact).mean()) for name, func in alternatives.items()}

    def jpeg_draft_1x() -> Any:  # decode at the smallest DCT scale still >= the model's size, not 2x
        with Image.open(jpeg) as image:
            image.draft("RGB", target)
            image.load()
            return image.convert("RGB").resize(target, resampling.BILINEAR, reducing_gap=3.0)

    alternatives["alt_jpeg_draft_1x_decode_and_resize"] = jpeg_draft_1x
    alt_diff["alt_jpeg_draft_1x_decode_and_resize"] = float(
        np.abs(np.asarray(jpeg_draft_1x(), np.int16) - load_image(jpeg, size).astype(np.int16)).mean())
    parts.update(alternatives)

    for func in parts.values():  # warm-up
        for _ in range(5):
            func()
    # This host's cores are shared with other work: CPU time of this thread (1 interpreter thread runs in
    # the caller's thread) is the fair figure; wall time is recorded beside it.
    clock = time.thread_time if args.threads == 1 else time.perf_counter
    rounds: dict[str, list[float]] = {name: [] for name in parts}
    wall: dict[str, list[float]] = {name: [] for name in parts}
    for _ in range(args.rounds):
        for name, func in parts.items():
            rounds[name].append(_median_ms(func, args.runs, clock))
            wall[name].append(_median_ms(func, max(5, args.runs // 4), time.perf_counter))
    med = {name: statistics.median(values) for name, values in rounds.items()}
    invoke = med["bare_invoke"]
    paired: dict[str, dict[str, float]] = {}
    if args.baseline is not None:
        # Before and after call by call (A, B, A, B, ...): load from other processes hits both alike.
        for name in ("classify_frame", "classify_jpeg", "classify_frame_scaled"):
            after, before = parts[name], parts["baseline_" + name]
            times: dict[str, list[float]] = {"after": [], "before": []}
            for _ in range(args.runs * args.rounds):
                for key, func in (("after", after), ("before", before)):
                    start = clock()
                    func()
                    times[key].append((clock() - start) * 1000.0)
            paired[name] = {key: statistics.median(values) for key, values in times.items()}
            paired[name]["after_over_before"] = paired[name]["after"] / paired[name]["before"]

    def pct(name: str) -> float:
        return (med[name] / invoke - 1.0) * 100.0

    rest_jpeg = med["classify_jpeg"] - med["jpeg_decode"] - med["resize_from_jpeg"] - med["quantize"] - invoke
    rest_frame = med["classify_frame"] - med["resize_from_frame"] - med["quantize"] - invoke
    result: dict[str, Any] = {
        "model": MODEL.name, "input_size": list(size), "threads": args.threads, "runs": args.runs,
        "rounds": args.rounds, "host": platform.machine(), "host_cores": os.cpu_count(),
        "python": platform.python_version(), "frame": "640x480 uint8 RGB", "jpeg": "640x480, quality 90",
        "clock": "thread CPU time" if args.threads == 1 else "wall time",
        "median_ms": med, "rounds_ms": rounds,
        "wall_median_ms": {name: statistics.median(values) for name, values in wall.items()},
        "frame_overhead_pct": pct("classify_frame"),
        "jpeg_overhead_pct": pct("classify_jpeg"),
        "frame_scaled_overhead_pct": pct("classify_frame_scaled"),
        "jpeg_breakdown_ms": {"decode": med["jpeg_decode"], "resize": med["resize_from_jpeg"],
                              "quantize": med["quantize"], "invoke": invoke, "rest": rest_jpeg},
        "frame_breakdown_ms": {"resize": med["resize_from_frame"], "quantize": med["quantize"], "invoke": invoke,
                               "rest": rest_frame},
        "scaled_quantize_ms": {"table": med["quantize_scaled_table"], "prepare": med["quantize_scaled_prepare"]},
        "model_sized_frame_overhead_pct": pct("classifier_invoke"),
        "jpeg_decoded_size": list(decoded.size),
        "not_used_resizes": {name: {"ms": med[name], "pct_of_invoke": med[name] / invoke * 100.0,
                                    "mean_abs_diff_from_exact": alt_diff[name]} for name in alternatives},
        "goal": "classify(frame) at most 15 % over the bare invoke",
        "baseline": str(args.baseline.resolve()) if args.baseline else None,
    }
    if args.baseline is not None:
        result["baseline_overhead_pct"] = {name: pct("baseline_" + name)
                                           for name in ("classify_frame", "classify_jpeg", "classify_frame_scaled")}
        result["paired_ms"] = paired
    result["goal_met"] = result["frame_overhead_pct"] <= 15.0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    temp = args.out.with_name(args.out.name + ".partial")
    temp.write_text(json.dumps(result, indent=2) + "\n", "utf-8")
    temp.replace(args.out)
    print(f"bare invoke               {invoke:8.2f} ms")
    for name, label in (("classify_frame", "(a) classify(frame)"), ("classify_jpeg", "(b) classify(jpeg)"),
                        ("classify_frame_scaled", "(c) frame, scaled")):
        line = f"{label:26s}{med[name]:8.2f} ms  (+{pct(name):.1f} %)"
        if args.baseline is not None:
            line += f"   baseline {med['baseline_' + name]:.2f} ms (+{pct('baseline_' + name):.1f} %)"
        print(line)
    print("  frame: " + ", ".join(f"{k} {v:.2f} ms" for k, v in result["frame_breakdown_ms"].items()))
    print("  jpeg: " + ", ".join(f"{k} {v:.2f} ms" for k, v in result["jpeg_breakdown_ms"].items()))
    print(f"  scaled pixels -> int8 input: table {med['quantize_scaled_table']:.2f} ms, "
          f"Model.prepare {med['quantize_scaled_prepare']:.2f} ms")
    print(f"classify(224x224)         {med['classifier_invoke']:8.2f} ms  (+{pct('classifier_invoke'):.1f} %)")
    print("resizes training does not use (resize only; JPEG: decode too), % of invoke, mean |diff| from exact:")
    for name, row in result["not_used_resizes"].items():
        print(f"  {name:38s}{row['ms']:6.2f} ms  {row['pct_of_invoke']:5.1f} %  {row['mean_abs_diff_from_exact']:.2f}")
    for name, row in paired.items():
        print(f"paired, call by call: {name:22s} after {row['after']:.2f} ms, before {row['before']:.2f} ms "
              f"({(row['after_over_before'] - 1) * 100:+.1f} %)")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
