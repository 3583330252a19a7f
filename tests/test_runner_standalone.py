"""The on-device runner (targets/runner.py): standalone, Python 3.9 syntax, clear messages, self-cleanup."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
RUNNER = ROOT / "targets" / "runner.py"
SHARED = ROOT.parent / "shared"
MODEL = SHARED / "models" / "tf2_mobilenet_v2_1.0_224_ptq.tflite"
needs_model = pytest.mark.skipif(not MODEL.is_file(), reason="../shared/models is absent (a user's checkout)")


def _runner():
    from edgeft.bench.profiles import runner_module

    return runner_module()


def test_runner_is_python39_syntax_and_imports_no_edgeft():
    tree = ast.parse(RUNNER.read_text(), feature_version=(3, 9))
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    assert "edgeft" not in imported and "click" not in imported


@needs_model
def test_runner_classifies_the_cat_without_importing_tensorflow(tmp_path):
    from PIL import Image

    image = np.asarray(Image.open(SHARED / "models" / "cat.bmp").convert("RGB").resize((224, 224)))
    np.save(tmp_path / "cat.npy", image[None])
    code = ("import runpy, sys; sys.argv = ['runner.py', 'classify', %r, %r]; "
            "mod = runpy.run_path(%r, run_name='not_main'); rc = mod['main'](sys.argv[1:]); "
            "print(json.dumps(sorted(m for m in ('tensorflow', 'edgeft') if m in sys.modules)))" %
            (str(MODEL), str(tmp_path / "cat.npy"), str(RUNNER)))
    out = subprocess.run([sys.executable, "-c", "import json; " + code], capture_output=True, text=True,
                         timeout=60, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    first, second = out.stdout.strip().splitlines()
    assert json.loads(first)["top5"][0][0] in (282, 283, 286)  # tabby, tiger cat, Egyptian cat
    assert json.loads(second) == []


def test_op_version_refusal_becomes_one_line_naming_op_and_runtime(tmp_path):
    runner = _runner()
    error = RuntimeError("Didn't find op for builtin opcode 'FULLY_CONNECTED' version '12'. An older version of "
                         "this builtin might be supported.\nRegistration failed.")
    message = runner.explain_load_failure(error, "tflite-runtime", "2.14.0", str(tmp_path / "model_dynamic_range.tflite"))
    assert "\n" not in message
    assert "tflite-runtime 2.14.0" in message and "FULLY_CONNECTED version 12" in message
    assert "pip install ai-edge-litert" in message


def test_runtime_too_old_compares_with_min_runtime_version():
    runner = _runner()
    assert runner.runtime_too_old("tflite-runtime", "2.14.0", "2.17.0")
    assert not runner.runtime_too_old("ai-edge-litert", "2.3.0", "2.17.0")
    assert not runner.runtime_too_old("tflite-runtime", "2.14.0", None)


@needs_model
def test_min_runtime_version_is_read_from_the_flatbuffer():
    assert _runner().tflite_min_runtime_version(str(MODEL)) == "1.14.0"


@needs_model
def test_edgetpu_delegate_missing_is_reported_mocked_no_coral(tmp_path, monkeypatch):
    runner = _runner()
    model = tmp_path / "model_int8_edgetpu.tflite"
    model.write_bytes(MODEL.read_bytes())
    monkeypatch.setattr(runner, "edgetpu_library_status", lambda: (False, "libedgetpu.so.1: cannot open shared object"))
    with pytest.raises(runner.RunnerError, match="libedgetpu.so.1 is not installed.*libedgetpu1-std"):
        runner.LoadedModel(str(model))


@needs_model
def test_edgetpu_stick_missing_is_reported_mocked_no_coral(tmp_path, monkeypatch):
    runner = _runner()
    model = tmp_path / "model_int8_edgetpu.tflite"
    model.write_bytes(MODEL.read_bytes())
    monkeypatch.setattr(runner, "edgetpu_library_status", lambda: (True, "found"))

    def no_device(_name):
        raise ValueError("Failed to load delegate from libedgetpu.so.1")

    monkeypatch.setattr(runner, "import_tflite", lambda _pref=None: (None, no_device, "ai-edge-litert", "2.3.0"))
    with pytest.raises(runner.RunnerError, match="no Edge TPU was found.*Coral USB Accelerator"):
        runner.LoadedModel(str(model))


@needs_model
def test_runner_removes_its_directory_when_stdin_closes(tmp_path):
    work = tmp_path / "edgeft-bench.x"
    work.mkdir()
    (work / ".edgeft-bench").touch()
    (work / "runner.py").write_bytes(RUNNER.read_bytes())
    (work / "m.tflite").write_bytes(MODEL.read_bytes())
    (work / "spec.json").write_text(json.dumps({"models": [{"name": "m", "file": "m.tflite"}], "threads": [1],
                                                "duration": 60, "warmup": 0}))
    proc = subprocess.Popen([sys.executable, str(work / "runner.py"), "bench", "--spec", str(work / "spec.json"),
                             "--cleanup", str(work), "--watch-stdin"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not (work / "job-0.json").exists():
        time.sleep(0.05)
    time.sleep(0.5)
    proc.stdin.close()  # the controlling connection is gone
    proc.wait(timeout=20)
    assert not work.exists()


def test_cleanup_refuses_a_directory_without_marker(tmp_path):
    runner = _runner()
    with pytest.raises(runner.RunnerError, match="marker"):
        runner.Cleanup(str(tmp_path))


def test_doctor_names_the_int8_dot_product_instructions():
    runner = _runner()
    xeon = "processor\t: 0\nmodel name\t: Intel(R) Xeon(R)\nflags\t\t: fpu sse4_1 avx2 fma avx512f avx512_vnni amx_int8\n"
    epyc = "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse4_1 avx2 fma\n"
    pi5 = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes crc32 atomics fphp asimdhp asimdrdm lrcpc dcpop asimddp\n"
    pi4 = "processor\t: 0\nFeatures\t: fp asimd evtstrm crc32 cpuid\n"
    assert runner.cpu_features(xeon) == (["sse4_1", "avx2", "fma", "avx512f"], ["avx512_vnni", "amx_int8"])
    assert runner.cpu_features(epyc) == (["sse4_1", "avx2", "fma"], [])
    assert runner.cpu_features(pi5) == (["asimd"], ["asimddp"])
    assert runner.cpu_features(pi4) == (["asimd"], [])
