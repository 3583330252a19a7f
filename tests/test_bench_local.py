"""edgeft bench on the local target: timeout fault, export-dir expansion, option errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import SHARED
from edgeft import targets as device

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
    # an int8 model on a CPU without 8-bit dot products gets a warning; the expectation is read from /proc here
    flags = set(" ".join(line.split(":", 1)[1] for line in Path("/proc/cpuinfo").read_text().splitlines()
                         if line.startswith(("flags", "Features"))).split())
    has_int8_dot = bool(flags & {"avx512_vnni", "avx_vnni", "avx_vnni_int8", "amx_int8", "asimddp", "i8mm"})
    device = report["targets"]["local"]["device"]
    assert (device["int8_isa"] == []) is (not has_int8_dot)
    warned = [w for w in report["warnings"] if "8-bit dot-product" in w]
    assert len(warned) == (0 if has_int8_dot else 1), report["warnings"]


def test_option_errors(tmp_path):
    result = _edgeft("bench", str(tmp_path / "missing.tflite"), "--out", str(tmp_path / "b"))
    assert result.returncode == 2 and "not found" in result.stderr
    model = tmp_path / "m.tflite"
    model.write_bytes(b"x")
    result = _edgeft("bench", str(model), "--runs", "3", "--duration", "1", "--out", str(tmp_path / "b"))
    assert result.returncode == 2 and "exclusive" in result.stderr


@needs_model
def test_each_artifact_gets_its_own_accuracy(tmp_path):
    """Two models that disagree must get different accuracies in one bench (one thread count)."""
    from PIL import Image

    labels = (SHARED / "models" / "imagenet_labels.txt").read_text().splitlines()
    cat = np.asarray(Image.open(SHARED / "models" / "cat.bmp").convert("RGB").resize((224, 224)), dtype=np.uint8)
    eval_set = tmp_path / "eval.npz"
    np.savez(eval_set, images=cat[None], labels=np.array([labels.index("Egyptian cat")]))
    good = tmp_path / "a_good.tflite"
    blind = tmp_path / "b_blind.tflite"
    good.write_bytes(MODEL.read_bytes())
    blind.write_bytes(MODEL.read_bytes())
    # The second model's sidecar maps every pixel to the same value: it cannot see the cat.
    Path(device.sidecar_path(str(blind))).write_text(json.dumps(
        {"preprocessing": {"scale": [0.0, 0.0, 0.0], "offset": [0.0, 0.0, 0.0], "channel_order": "RGB"},
         "input_quantization": {"scale": 1 / 127.5, "zero_point": 127}}))
    result = _edgeft("bench", str(good), str(blind), "--runs", "2", "--warmup", "0", "--threads", "1",
                     "--eval", str(eval_set), "--json", "--remote-tmpdir", str(tmp_path / "device"),
                     "--out", str(tmp_path / "b"))
    assert result.returncode == 0, result.stderr
    accuracy = {row["artifact"]: row["accuracy"] for row in json.loads(result.stdout)["rows"]}
    assert accuracy == {"a_good.tflite": 1.0, "b_blind.tflite": 0.0}
