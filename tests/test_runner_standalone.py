"""The device layer (targets/, installed as edgeft.targets): standalone rules, the one-file app, clear messages.

The one-file app is run by a Python that has only numpy and one interpreter on its path, as on
a device where edgeft is not installed.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import pillow_two_passes

ROOT = Path(__file__).resolve().parents[1]
DEVICE_DIR = ROOT / "targets"
SHARED = ROOT.parent / "shared"
MODEL = SHARED / "models" / "tf2_mobilenet_v2_1.0_224_ptq.tflite"
CAT_CLASSES = (282, 283, 286)  # tabby, tiger cat, Egyptian cat (1001-class labels)
needs_model = pytest.mark.skipif(not MODEL.is_file(), reason="../shared/models is absent (a user's checkout)")
# Imported only inside functions: the runtimes, and Pillow (optional, for the resize).
LAZY_ONLY = {"numpy", "ai_edge_litert", "tflite_runtime", "tensorflow", "onnxruntime", "PIL"}


def _device_files() -> list[Path]:
    return sorted(p for p in DEVICE_DIR.rglob("*.py") if "__pycache__" not in p.parts)


@pytest.mark.parametrize("path", _device_files(), ids=lambda p: str(p.relative_to(DEVICE_DIR)))
def test_device_module_is_python39_stdlib_numpy_lazy_interpreters_relative_imports(path: Path) -> None:
    tree = ast.parse(path.read_text(), feature_version=(3, 9))
    top_level = {id(node) for node in tree.body}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level > 0:
            continue  # relative: inside the folder
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            for name in names:
                root = name.split(".")[0]
                allowed = root in sys.stdlib_module_names or (root in LAZY_ONLY and id(node) not in top_level)
                assert allowed, f"{path.name}:{node.lineno} imports {name}"


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from edgeft.bench.device_app import device_app

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EDGEFT_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        first = device_app()
        assert device_app() == first  # cached by content hash
    return first


@pytest.fixture(scope="module")
def bare_python(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[str], dict[str, str]]:
    """A Python whose path holds only numpy and ai_edge_litert (no site-packages, no edgeft, no Pillow)."""
    import ai_edge_litert

    site = Path(np.__file__).resolve().parents[1]
    only = tmp_path_factory.mktemp("only-numpy-and-litert")
    for name in ("numpy", "numpy.libs"):
        if (site / name).exists():
            (only / name).symlink_to(site / name)
    (only / "ai_edge_litert").symlink_to(Path(ai_edge_litert.__file__).resolve().parent)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["PYTHONPATH"] = str(only)
    return [sys.executable, "-S"], env


def test_the_bare_python_has_no_edgeft_and_no_pillow(bare_python: tuple[list[str], dict[str, str]]) -> None:
    python, env = bare_python
    probe = "import importlib.util as u; print([m for m in ('edgeft', 'PIL', 'numpy') if u.find_spec(m)])"
    out = subprocess.run(python + ["-c", probe], capture_output=True, text=True, env=env, cwd="/", timeout=60)
    assert out.stdout.strip() == "['numpy']", out.stderr


@needs_model
def test_the_one_file_app_classifies_the_cat_with_only_numpy_and_litert(
        app: Path, bare_python: tuple[list[str], dict[str, str]], tmp_path: Path) -> None:
    from PIL import Image

    python, env = bare_python
    np.save(tmp_path / "cat.npy", np.asarray(Image.open(SHARED / "models" / "cat.bmp").convert("RGB"))[None])
    out = subprocess.run(python + [str(app), "classify", str(MODEL), str(tmp_path / "cat.npy")],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["top5"][0][0] in CAT_CLASSES


@needs_model
def test_a_camera_frame_gets_the_same_pixels_without_pillow(
        app: Path, bare_python: tuple[list[str], dict[str, str]], tmp_path: Path) -> None:
    """A 1640x1232 frame (over 6x the input: Pillow box-reduces it first) becomes the same 224x224 pixels in
    the one-file app on a device without Pillow as on the host that validated the model, with Pillow."""
    from PIL import Image

    from edgeft.bench.device_app import PACKAGE_IN_APP
    from edgeft.targets.images import load_image

    rng = np.random.default_rng(0)
    cat = Image.open(SHARED / "models" / "cat.bmp").convert("RGB").resize((1640, 1232), Image.Resampling.BICUBIC)
    frame = np.clip(np.asarray(cat, np.int16) + rng.integers(-6, 7, (1232, 1640, 3)), 0, 255).astype(np.uint8)
    np.save(tmp_path / "frame.npy", frame)
    python, env = bare_python
    script = (f"import sys; sys.path.insert(0, {str(app)!r}); import numpy as np; "
              f"from {PACKAGE_IN_APP}.images import load_image; "
              "np.save('pixels.npy', load_image(np.load('frame.npy'), (224, 224)))")
    out = subprocess.run(python + ["-c", script], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "pixels.npy"), load_image(frame, (224, 224)))


def test_the_one_file_app_doctor_runs_without_numpy_and_classify_says_what_is_missing(app: Path, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    out = subprocess.run([sys.executable, "-S", str(app), "doctor"], capture_output=True, text=True, env=env,
                         cwd=tmp_path, timeout=60)
    facts = json.loads(out.stdout)
    assert out.returncode == 0 and facts["cores"] >= 1 and facts["python"].startswith("3.")
    np.save(tmp_path / "x.npy", np.zeros((1, 4, 4, 3), np.uint8))
    out = subprocess.run([sys.executable, "-S", str(app), "classify", str(tmp_path / "m.tflite"), str(tmp_path / "x.npy")],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
    error = json.loads(out.stdout)["error"]  # one line, not a traceback
    assert out.returncode == 3 and "No module named 'numpy'" in error and "pip install" in error and not out.stderr


@needs_model
def test_jobs_start_with_the_python_named_by_the_environment(app: Path, tmp_path: Path) -> None:
    """``EDGEFT_DEVICE_PYTHON_ARGV`` is the command prefix of each job's process (an emulator, say)."""
    work = tmp_path / "edgeft-bench.x"
    work.mkdir()
    (work / "m.tflite").write_bytes(MODEL.read_bytes())
    (work / "spec.json").write_text(json.dumps({"models": [{"name": "m", "file": "m.tflite"}], "threads": [1],
                                                "runs": 3, "warmup": 0}))
    wrapper = tmp_path / "wrapped-python"
    wrapper.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "calls.txt"}\nexec {sys.executable} "$@"\n')
    wrapper.chmod(0o755)
    env = dict(os.environ, EDGEFT_DEVICE_PYTHON_ARGV=json.dumps([str(wrapper)]))
    out = subprocess.run([sys.executable, str(app), "bench", "--spec", str(work / "spec.json")], capture_output=True,
                         text=True, env=env, timeout=120)
    row = json.loads(out.stdout)["rows"][0]
    assert "error" not in row and row["p50_ms"] > 0
    assert (tmp_path / "calls.txt").read_text().split() == [str(app), "one", str(work / "job-0.json")]
    bad = dict(os.environ, EDGEFT_DEVICE_PYTHON_ARGV="python3 -S")
    out = subprocess.run([sys.executable, str(app), "bench", "--spec", str(work / "spec.json")], capture_output=True,
                         text=True, env=bad, timeout=60)
    assert out.returncode == 3 and "EDGEFT_DEVICE_PYTHON_ARGV must be a JSON list" in json.loads(out.stdout)["error"]


@needs_model
def test_the_app_removes_its_directory_when_stdin_closes(app: Path, tmp_path: Path) -> None:
    work = tmp_path / "edgeft-bench.x"
    work.mkdir()
    (work / ".edgeft-bench").touch()
    (work / "edgeft-device.pyz").write_bytes(app.read_bytes())
    (work / "m.tflite").write_bytes(MODEL.read_bytes())
    (work / "spec.json").write_text(json.dumps({"models": [{"name": "m", "file": "m.tflite"}], "threads": [1],
                                                "duration": 60, "warmup": 0}))
    proc = subprocess.Popen([sys.executable, str(work / "edgeft-device.pyz"), "bench", "--spec",
                             str(work / "spec.json"), "--cleanup", str(work), "--watch-stdin"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not (work / "job-0.json").exists():
        time.sleep(0.05)
    time.sleep(0.5)
    assert proc.stdin is not None
    proc.stdin.close()  # the controlling connection is gone
    proc.wait(timeout=20)
    assert not work.exists()


def test_unknown_suffix_is_an_error_not_a_fallback(tmp_path: Path) -> None:
    from edgeft import targets as device

    model = tmp_path / "model.mlmodel"
    model.write_bytes(b"x")
    with pytest.raises(device.DeviceError, match=r"unsupported model format: .*model\.mlmodel \(known: \.onnx, \.tflite"):
        device.Model(str(model))
    with pytest.raises(device.DeviceError, match="unknown device backend 'coreml'"):
        device.Model(str(model), backend="coreml")


def test_sidecar_schema_is_checked(tmp_path: Path) -> None:
    from edgeft import targets as device

    artifact = tmp_path / "model_int8.tflite"
    assert device.sidecar_path(str(artifact)) == str(artifact) + ".json"
    Path(device.sidecar_path(str(artifact))).write_text(json.dumps({"preprocessing": {"scale": [1, 2]}}))
    with pytest.raises(device.DeviceError, match="preprocessing.scale must be 3 numbers"):
        device.read_sidecar(str(artifact))


def test_numpy_resize_matches_pillow_bilinear() -> None:
    """The device layer without Pillow resizes in numpy: Pillow's box reduction from 6x the input size (2x2,
    3x3, 5x5, mixed and partial boxes), then its two passes, horizontal first, pixel for pixel."""
    from PIL import Image

    from edgeft.targets.images import load_image, resize_images
    from edgeft.targets.preprocess import reduction_factors, resize_bilinear_numpy

    rng = np.random.default_rng(0)
    reduced = 0
    for (h, w), (height, width) in [((100, 90), (64, 64)), ((40, 50), (64, 64)), ((375, 500), (224, 224)),
                                    ((96, 96), (32, 32)), ((300, 200), (224, 224)), ((1322, 630), (224, 224)),
                                    ((700, 300), (96, 96)), ((723, 1283), (96, 96)), ((2001, 703), (96, 96)),
                                    ((400, 400), (64, 64)), ((579, 579), (64, 64)), ((1003, 1003), (64, 64))]:
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        pillow = np.asarray(pillow_two_passes(Image.fromarray(image), width, height))
        reduced += reduction_factors(w, h, width, height) != (1, 1)
        np.testing.assert_array_equal(resize_bilinear_numpy(image, height, width), pillow, err_msg=str((h, w)))
        assert np.array_equal(resize_images(image[None], height, width)[0], pillow)
        assert np.array_equal(load_image(image, (height, width)), pillow)
    assert reduced == 6


def test_profiles_install_the_pinned_runtimes() -> None:
    from edgeft import targets as device
    from edgeft.bench.profiles import list_profiles

    for profile in list_profiles():
        for python, line in profile.install.items():
            pins = device.pins_for(python)
            assert pins["tflite"] in line and pins["onnx"] in line, (profile.name, python)


def test_op_version_refusal_becomes_one_line_naming_op_and_runtime(tmp_path: Path) -> None:
    from edgeft.targets.backends.tflite import explain_load_failure

    error = RuntimeError("Didn't find op for builtin opcode 'FULLY_CONNECTED' version '12'. An older version of "
                         "this builtin might be supported.\nRegistration failed.")
    message = explain_load_failure(error, "tflite-runtime", "2.14.0", str(tmp_path / "model_dynamic_range.tflite"))
    assert "\n" not in message
    assert "tflite-runtime 2.14.0" in message and "FULLY_CONNECTED version 12" in message
    assert "pip install ai-edge-litert" in message


def test_runtime_too_old_compares_with_min_runtime_version() -> None:
    from edgeft import targets as device

    assert device.runtime_too_old("tflite-runtime", "2.14.0", "2.17.0")
    assert not device.runtime_too_old("ai-edge-litert", "2.3.0", "2.17.0")
    assert not device.runtime_too_old("tflite-runtime", "2.14.0", None)


@needs_model
def test_min_runtime_version_is_read_from_the_flatbuffer() -> None:
    from edgeft import targets as device

    assert device.min_runtime_version(str(MODEL)) == "1.14.0"


@needs_model
def test_edgetpu_delegate_missing_is_reported_mocked_no_coral(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from edgeft import targets as device
    from edgeft.targets.backends import tflite

    model = tmp_path / "model_int8_edgetpu.tflite"
    model.write_bytes(MODEL.read_bytes())
    monkeypatch.setattr(tflite, "edgetpu_library_status", lambda: (False, "libedgetpu.so.1: cannot open shared object"))
    with pytest.raises(device.DeviceError, match="libedgetpu.so.1 is not installed.*libedgetpu1-std"):
        device.Model(str(model))


@needs_model
def test_edgetpu_stick_missing_is_reported_mocked_no_coral(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from edgeft import targets as device
    from edgeft.targets.backends import tflite

    model = tmp_path / "model_int8_edgetpu.tflite"
    model.write_bytes(MODEL.read_bytes())
    monkeypatch.setattr(tflite, "edgetpu_library_status", lambda: (True, "found"))

    def no_device(_name: str) -> None:
        raise ValueError("Failed to load delegate from libedgetpu.so.1")

    monkeypatch.setattr(tflite, "import_tflite", lambda _pref=None: (None, no_device, "ai-edge-litert", "2.3.0"))
    with pytest.raises(device.DeviceError, match="no Edge TPU was found.*Coral USB Accelerator"):
        device.Model(str(model))


def test_cleanup_refuses_a_directory_without_marker(tmp_path: Path) -> None:
    from edgeft import targets as device
    from edgeft.targets.bench import Cleanup

    with pytest.raises(device.DeviceError, match="marker"):
        Cleanup(str(tmp_path))


def test_doctor_names_the_int8_dot_product_instructions() -> None:
    from edgeft.targets.device import cpu_features

    xeon = "processor\t: 0\nmodel name\t: Intel(R) Xeon(R)\nflags\t\t: fpu sse4_1 avx2 fma avx512f avx512_vnni amx_int8\n"
    epyc = "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse4_1 avx2 fma\n"
    pi5 = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes crc32 atomics fphp asimdhp asimdrdm lrcpc dcpop asimddp\n"
    pi4 = "processor\t: 0\nFeatures\t: fp asimd evtstrm crc32 cpuid\n"
    assert cpu_features(xeon) == (["sse4_1", "avx2", "fma", "avx512f"], ["avx512_vnni", "amx_int8"])
    assert cpu_features(epyc) == (["sse4_1", "avx2", "fma"], [])
    assert cpu_features(pi5) == (["asimd"], ["asimddp"])
    assert cpu_features(pi4) == (["asimd"], [])
