"""edgeft bench on the local target: timeout fault, export-dir expansion, option errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
MODEL = SHARED / "models" / "tf2_mobilenet_v2_1.0_224_ptq.tflite"
needs_model = pytest.mark.skipif(not MODEL.is_file(), reason="../shared/models is absent (a user's checkout)")


def _edgeft(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgeft", *args], capture_output=True, text=True, timeout=120)


@needs_model
def test_timeout_is_exit_7_and_leaves_no_directory(tmp_path):
    device = tmp_path / "device"
    result = _edgeft("bench", str(MODEL), "--target", "local", "--duration", "60", "--threads", "1", "--timeout", "3",
                     "--remote-tmpdir", str(device), "--out", str(tmp_path / "b"))
    assert result.returncode == 7
    assert "timed out after 3 s" in result.stderr.strip().splitlines()[-1]
    assert list(device.glob("edgeft-bench.*")) == []


@needs_model
def test_export_dir_expands_to_its_models_and_json_has_schema(tmp_path):
    export = tmp_path / "export"
    export.mkdir()
    (export / "model_int8.tflite").write_bytes(MODEL.read_bytes())
    (export / "export_report.json").write_text("{}")
    result = _edgeft("bench", str(export), "--runs", "3", "--warmup", "0", "--threads", "1", "--json",
                     "--remote-tmpdir", str(tmp_path / "device"), "--out", str(tmp_path / "b"))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    (row,) = report["rows"]
    for key in ("artifact", "target", "threads", "mean_ms", "p50_ms", "p90_ms", "p99_ms", "throughput_ips",
                "peak_rss_mb", "accuracy", "runtime", "runtime_version", "emulated"):
        assert key in row
    assert row["artifact"] == "model_int8.tflite" and row["accuracy"] is None and row["emulated"] is False


def test_option_errors(tmp_path):
    result = _edgeft("bench", str(tmp_path / "missing.tflite"), "--out", str(tmp_path / "b"))
    assert result.returncode == 2 and "not found" in result.stderr
    model = tmp_path / "m.tflite"
    model.write_bytes(b"x")
    result = _edgeft("bench", str(model), "--runs", "3", "--duration", "1", "--out", str(tmp_path / "b"))
    assert result.returncode == 2 and "exclusive" in result.stderr
