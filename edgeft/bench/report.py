"""BENCH_DIR: ``bench.json`` (schema below), ``bench.md``, ``bench.csv`` and ``bench_latency_accuracy.png``.

``bench.json`` (``schema_version`` 1)::

    schema_version   1
    created          ISO-8601 time of the run
    edgeft_version   version of the host's edgeft
    settings         runs, duration_s, warmup, threads, eval source and count
    rows             one per artifact x target x thread count:
        artifact, artifact_path, format ("tflite"/"onnx"), target, host, profile, threads,
        load_ms, first_inference_ms, warmup, runs,
        mean_ms, std_ms, min_ms, p50_ms, p90_ms, p99_ms, max_ms   (latency of one invoke, ms)
        throughput_ips          invocations per second over the timed loop (batch 1)
        peak_rss_mb             peak resident memory of the process that ran this row (MiB)
        model_size_bytes
        accuracy, top5_accuracy fractions 0..1 on the evaluation set, measured on the device (null without --eval;
                                top5 null with 5 classes or fewer); eval_count
        runtime, runtime_version, delegate ("edgetpu" or null)
        emulated                false for a real device; true for an emulated one (rpi4-emu: QEMU on the host),
                                whose latency, throughput and memory are the emulator's, never a device's
        throttled               Pi: throttling seen during the run (vcgencmd); null when unknown
        shares_cores_with       other targets on the same host that ran at the same time (their latencies skew)
        error                   null, or the one-line reason this row has no measurement
    targets          per target: device facts (doctor), temperatures before/after, error
    warnings         lines worth reading (shared cores, old runtimes)
    errors           {target: message} for targets that failed as a whole
    recommendation   {target: {artifact, artifact_path, threads, p50_ms, accuracy, best_accuracy, max_drop_pts,
                     reason}}: the fastest within --max-drop points of the most accurate (edgeft/bench/recommend.py)

Artifacts with the same file name from different folders are named with their folder(s).
"""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path
from typing import Any

from edgeft import __version__
from edgeft.bench.config import BenchConfig
from edgeft.bench.recommend import artifact_labels, recommend, recommendation_markdown
from edgeft.bench.results import csv_cell
from edgeft.bench.targets import ResolvedTarget
from edgeft.fileio import write_json_atomic, write_text_atomic

SCHEMA_VERSION = 1
COLUMNS = ("artifact", "target", "threads", "mean_ms", "p50_ms", "p90_ms", "p99_ms", "throughput_ips",
           "peak_rss_mb", "accuracy", "top5_accuracy", "runtime", "runtime_version", "delegate", "emulated", "error")
ROW_KEYS = ("artifact", "artifact_path", "format", "target", "host", "profile", "threads", "load_ms",
            "first_inference_ms", "warmup", "runs", "mean_ms", "std_ms", "min_ms", "p50_ms", "p90_ms", "p99_ms",
            "max_ms", "throughput_ips", "peak_rss_mb", "model_size_bytes", "accuracy", "top5_accuracy", "eval_count",
            "runtime", "runtime_version", "delegate", "emulated", "throttled", "shares_cores_with", "error")


def build_rows(targets: list[ResolvedTarget], artifacts: list[Path], results: dict[str, dict[str, Any]],
               errors: dict[str, str]) -> tuple[list[dict[str, Any]], list[str]]:
    """Flatten the runners' documents into rows (failed targets get one error row per artifact)."""
    by_host: dict[str, list[str]] = {}
    for target in targets:
        by_host.setdefault(target.transport.host_id, []).append(target.name)
    warnings = []
    for host, names in by_host.items():
        if len(names) > 1:
            warnings.append(f"targets {', '.join(names)} ran at the same time on the same host ({host}): "
                            "they share its cores, so their latencies skew each other")
    labels = artifact_labels(artifacts)
    paths = dict(zip(labels, map(str, artifacts)))
    rows: list[dict[str, Any]] = []
    for target in targets:
        shared = [n for n in by_host[target.transport.host_id] if n != target.name]
        base = {"target": target.name, "host": target.transport.host_id,
                "profile": target.profile.name if target.profile else None,
                "emulated": bool(getattr(target.transport, "emulated", False)), "shares_cores_with": shared}
        document = results.get(target.name)
        if document is None:
            for label in labels:
                rows.append(_row(dict(base, artifact=label, threads=None, error=errors.get(target.name)), paths))
            continue
        throttled = document.get("throttled_during_run")
        for raw in document.get("rows", []):
            rows.append(_row(dict(raw, **base, throttled=throttled), paths))
    return rows, warnings


def _row(raw: dict[str, Any], paths: dict[str, str]) -> dict[str, Any]:
    row = {key: raw.get(key) for key in ROW_KEYS}
    row["artifact_path"] = paths.get(row["artifact"] or "", row["artifact"])
    row["format"] = Path(row["artifact_path"] or row["artifact"] or "").suffix.lstrip(".") or None
    for key, value in raw.items():
        if key not in row and key not in ("input_shape",):
            row[key] = value
    row["input_shape"] = raw.get("input_shape")
    return row


def write_reports(config: BenchConfig, rows: list[dict[str, Any]], targets: list[ResolvedTarget],
                  results: dict[str, dict[str, Any]], errors: dict[str, str], warnings: list[str],
                  started: float) -> dict[str, Any]:
    """Write bench.json, bench.md, bench.csv and the plot into ``config.out_dir``; return bench.json's content."""
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    target_facts = {}
    for target in targets:
        document = results.get(target.name, {})
        target_facts[target.name] = {
            "host": target.transport.host_id, "profile": target.profile.name if target.profile else None,
            "device": document.get("device"), "before": document.get("before"), "after": document.get("after"),
            "throttled_during_run": document.get("throttled_during_run"), "error": errors.get(target.name),
        }
        if getattr(target.transport, "emulated", False):
            emulation = target.transport.describe()  # type: ignore[attr-defined]
            target_facts[target.name]["emulation"] = emulation
            warnings.append(f"{target.name} is EMULATED (QEMU on this host): its latencies are not a device's; "
                            "its accuracy and outputs are real")
            warnings.extend(f"{target.name}: {line}" for line in emulation.get("warnings", []))
    # integer input (any full-integer model, edgeft's or not) or edgeft's int8 file names (float I/O)
    benched_int8 = any(row.get("input_dtype") in ("int8", "uint8") or "int8" in str(row.get("artifact", ""))
                       for row in rows)
    for target_name, facts in target_facts.items():
        device = facts.get("device") or {}
        for entry in device.get("warnings", []) or []:
            warnings.append(f"{target_name}: {entry}")
        if benched_int8 and device.get("int8_isa") == []:  # [] = known to have none; None = older runner
            simd = ", ".join(device.get("simd") or []) or "no SIMD extension found"
            warnings.append(f"{target_name}: the CPU has no 8-bit dot-product instructions ({simd}): int8 models "
                            "run about as fast as float here; the speed-up needs VNNI (x86) or asimddp (Arm, "
                            "e.g. Raspberry Pi 5)")
    summary = {
        "schema_version": SCHEMA_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "edgeft_version": __version__,
        "settings": {"runs": config.runs, "duration_s": config.duration_s, "warmup": config.warmup,
                     "threads": list(config.threads) if config.threads else None,
                     "eval": str(config.eval_source) if config.eval_source else None},
        "rows": rows,
        "targets": target_facts,
        "warnings": warnings,
        "errors": errors,
    }
    summary["recommendation"] = recommend(rows, config.max_drop)
    write_json_atomic(out / "bench.json", summary)
    write_text_atomic(out / "bench.csv", to_csv(rows))
    write_text_atomic(out / "bench.md", to_markdown(rows, warnings) + recommendation_markdown(summary["recommendation"]))
    plot_latency_accuracy(rows, out / "bench_latency_accuracy.png", summary["recommendation"])
    return summary


def _fmt(value: Any) -> str:
    from edgeft.progress import format_cell  # the terminal table's cell format, in the Markdown file too

    return format_cell(value)


def to_csv(rows: list[dict[str, Any]]) -> str:
    """All row fields (lists joined with ';'); text that a spreadsheet would run as a formula is escaped."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(ROW_KEYS), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: csv_cell(";".join(map(str, v)) if isinstance(v, list) else v) for k, v in row.items()})
    return buffer.getvalue()


_EMULATOR_MEASURED = ("mean_ms", "p50_ms", "p90_ms", "p99_ms", "throughput_ips", "peak_rss_mb")


def to_markdown(rows: list[dict[str, Any]], warnings: list[str]) -> str:
    """A Markdown table of the main columns, then the warnings; an emulated row's timings read "(QEMU)"."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        cells = []
        for column in COLUMNS:
            cell = _fmt(row.get(column)).replace("|", "/")
            if row.get("emulated") and column in _EMULATOR_MEASURED and row.get(column) is not None:
                cell += " (QEMU)"
            cells.append(cell)
        lines.append("| " + " | ".join(cells) + " |")
    if warnings:
        lines += ["", *[f"- warning: {w}" for w in warnings]]
    return "\n".join(lines) + "\n"


def plot_latency_accuracy(rows: list[dict[str, Any]], path: Path,
                          recommendation: dict[str, dict[str, Any]] | None = None) -> None:
    """Median latency against accuracy per target (see :func:`edgeft.bench.recommend.plot_latency_accuracy`)."""
    from edgeft.bench import recommend as chooser

    chooser.plot_latency_accuracy(rows, path, recommendation)
