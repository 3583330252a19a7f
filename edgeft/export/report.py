"""``export_report.json`` and ``export_report.md``: one row per artifact, measured against Keras.

export_report.json (schema ``edgeft.export_report/2``)::

    keras_accuracy      float 0..1, Keras model on the held-out (val) split
    val_samples         int
    artifacts[]         format (tflite|onnx|edgetpu), precision (float32|float16|dynamic_range|int8),
                        source (float|ptq|qat), path (relative to EXPORT_DIR), size_bytes,
                        size_ratio (vs the same format's float32), accuracy, agreement (top-1 vs Keras),
                        max_abs_diff (outputs vs Keras), p50_ms (single image on the host, as bench
                        measures it: p50 of N runs after warm-up), backend (device backend that ran it),
                        accuracy_drop_pts, max_drop_pts, passed, sidecar, details
                        (null where not measurable, e.g. Edge TPU without the device);
                        int8: keep_float and weight_rounding (as in the sidecar; null otherwise)
    calibration         source, size, key, cache_file (null when no int8 artifact)
    calibration_sweep[] calib_size, accuracy, agreement (TFLite int8) when --calib-sweep was given
    skipped[]           format, precision, reason: requested but not meaningful for this run
    peak_rss_mb         parent, largest_child (MiB)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgeft.export.formats import EXPORTERS, format_names
from edgeft.fileio import write_json_atomic, write_text_atomic

REPORT_JSON = "export_report.json"
REPORT_MD = "export_report.md"
SCHEMA = "edgeft.export_report/2"


def _fmt(value: Any, kind: str) -> str:
    if value is None:
        return "-"
    if kind == "pct":
        return f"{100.0 * value:.1f}%"
    if kind == "kib":
        return f"{value / 1024:.0f} KiB"
    if kind == "ms":
        return f"{value:.2f}"
    if kind == "diff":
        return f"{value:.2e}"
    return str(value)


def markdown(report: dict[str, Any]) -> str:
    """The report as a Markdown table."""
    lines = [
        f"# edgeft export: {report['backbone']} {report['image_size']} px ({report['run_kind']} run)",
        "",
        f"Keras accuracy on {report['val_samples']} held-out images: {_fmt(report['keras_accuracy'], 'pct')}. "
        f"Artifacts are validated in the device layer on uint8 pixels with their sidecar's preprocessing. "
        f"p50 ms: single-image host time of the runtime call, {report['threads']} thread(s).",
        "",
        "| format | precision | source | file | size | vs float32 | accuracy | agreement | max abs diff | p50 ms | check |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for a in report["artifacts"]:
        check = "-" if a["passed"] is None else ("ok" if a["passed"] else f"FAIL (> {a['max_drop_pts']} pts)")
        ratio = f"{a['size_ratio']:.2f}x" if a.get("size_ratio") is not None else "-"
        lines.append(
            f"| {a['format']} | {a['precision']} | {a['source']} | {a['path']} | {_fmt(a['size_bytes'], 'kib')} | "
            f"{ratio} | {_fmt(a['accuracy'], 'pct')} | {_fmt(a['agreement'], 'pct')} | "
            f"{_fmt(a['max_abs_diff'], 'diff')} | {_fmt(a['p50_ms'], 'ms')} | {check} |"
        )
    format_names()  # loads the built-in exporters
    for a in report["artifacts"]:
        exporter = EXPORTERS.get(a["format"])
        for note in exporter.report_notes(a) if exporter else []:
            lines += ["", note]
    for a in report["artifacts"]:
        rounding = a.get("weight_rounding") or {}
        if rounding.get("flipped_weights"):
            lines += ["", f"{a['path']}: adaptive weight rounding, {rounding['flipped_weights']} of "
                      f"{rounding['weights']} weights rounded away from nearest in {rounding['layers']} layers "
                      f"(their output error x{rounding['layer_error_ratio']})."]
        kept = a.get("keep_float") or {}
        if kept.get("layers"):
            lines += ["", f"{a['path']} keeps in float ({', '.join(kept['requested'])}): {', '.join(kept['layers'])}."]
        errors = a.get("layer_errors") or {}
        if errors.get("summary"):
            lines += ["", f"{a['path']} per-layer quantization error ({errors['layer_errors']}): "
                      f"{errors['summary']}. Try: {errors['advice']}."]
        elif errors.get("error"):
            lines += ["", f"{a['path']}: no per-layer report ({errors['error']})."]
    for skip in report.get("skipped") or []:
        lines += ["", f"Not exported: {skip['format']} {skip['precision']}: {skip['reason']}."]
    if report.get("calibration"):
        c = report["calibration"]
        lines += ["", f"Calibration: {c['size']} images from {c['source']}."]
    if report.get("calibration_sweep"):
        lines += ["", "| calibration size | TFLite int8 accuracy | agreement |", "|---|---|---|"]
        for row in report["calibration_sweep"]:
            lines.append(f"| {row['calib_size']} | {_fmt(row['accuracy'], 'pct')} | {_fmt(row['agreement'], 'pct')} |")
    peak = report.get("peak_rss_mb") or {}
    lines += ["", f"Peak RSS: parent {peak.get('parent', 0):.0f} MiB, largest conversion process "
              f"{peak.get('largest_child', 0):.0f} MiB."]
    return "\n".join(lines) + "\n"


def write_report(out_dir: Path, report: dict[str, Any]) -> tuple[Path, Path]:
    """Write export_report.json and export_report.md atomically."""
    json_path, md_path = Path(out_dir) / REPORT_JSON, Path(out_dir) / REPORT_MD
    write_json_atomic(json_path, report)
    write_text_atomic(md_path, markdown(report))
    return json_path, md_path
