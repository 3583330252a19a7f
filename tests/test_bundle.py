"""``edgeft bundle``: the app folder runs in a fresh venv holding only its requirements.txt (no edgeft, no TensorFlow)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run_edgeft
from export_helpers import mobilenet_run, session_export

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
MODELS = SHARED / "models"
MODEL = MODELS / "tf2_mobilenet_v2_1.0_224_ptq.tflite"
LABELS = MODELS / "imagenet_labels.txt"
CATS = ("Egyptian cat", "tabby, tabby cat", "tiger cat")
needs_google = pytest.mark.skipif(not MODEL.is_file(), reason="../shared/models is absent (a user's checkout)")
OFFLINE = ("NewConnectionError", "Temporary failure in name resolution", "Network is unreachable",
           "Could not fetch URL")


@pytest.fixture(scope="module")
def google_app(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not MODEL.is_file():
        pytest.skip("../shared/models is absent (a user's checkout)")
    out = tmp_path_factory.mktemp("bundles") / "cat-app"
    result = run_edgeft("bundle", str(MODEL), "--target", "rpi4", "--out", str(out), "--labels", str(LABELS))
    assert result.exit_code == 0, result.stderr
    return out


@pytest.fixture(scope="module")
def venv_python(google_app: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with only the bundle's requirements.txt installed (built once per module)."""
    venv = tmp_path_factory.mktemp("device-venv") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    pip = subprocess.run([str(python), "-m", "pip", "install", "-q", "-r", str(google_app / "requirements.txt")],
                         capture_output=True, text=True, timeout=600, env=_device_env())
    if pip.returncode != 0 and any(marker in pip.stderr for marker in OFFLINE):
        pytest.skip(f"pip cannot reach a package index: {pip.stderr.strip().splitlines()[-1]}")
    assert pip.returncode == 0, pip.stderr[-2000:]
    return python


def _device_env() -> dict[str, str]:
    """The environment without this checkout on the path: the venv sees only what it installed."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}


def _app(python: Path, app: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(python), str(app / "app.py"), *args], capture_output=True, text=True,
                          timeout=300, cwd=str(app.parent), env=_device_env())


def test_bundle_folder_holds_what_the_device_needs(google_app: Path) -> None:
    names = sorted(p.name for p in google_app.iterdir())
    assert names == sorted(["README.md", "app.py", "bundle.json", "edgeft-app.service", "edgeft-device.pyz",
                            "labels.txt", "requirements.txt", MODEL.name])
    requirements = (google_app / "requirements.txt").read_text()
    assert 'ai-edge-litert==2.1.0; python_version == "3.9"' in requirements  # Bullseye's pins
    assert 'ai-edge-litert==2.3.0; python_version > "3.9"' in requirements
    assert "onnxruntime" not in requirements and "tensorflow" not in requirements
    record = json.loads((google_app / "bundle.json").read_text())
    assert record["target"] == "rpi4" and len(record["sha256"]) == 64
    assert "ExecStart=/home/pi/cat-app/venv/bin/python /home/pi/cat-app/app.py" in \
        (google_app / "edgeft-app.service").read_text()


@needs_google
def test_app_in_a_fresh_venv_finds_the_cat(google_app: Path, venv_python: Path, tmp_path: Path) -> None:
    check = subprocess.run([str(venv_python), "-c", "import importlib.util as u; "
                            "print([m for m in ('edgeft', 'tensorflow', 'click') if u.find_spec(m)])"],
                           capture_output=True, text=True, cwd=str(tmp_path), timeout=60, env=_device_env())
    assert check.stdout.strip() == "[]"
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    shutil.copyfile(MODELS / "cat.bmp", inbox / "cat.bmp")
    shutil.copyfile(MODELS / "parrot.jpg", inbox / "parrot.jpg")
    (inbox / "broken.jpg").write_text("not a picture")
    result = _app(venv_python, google_app, str(inbox), "--once")
    assert result.returncode == 0, result.stderr
    rows = {Path(r["file"]).name: r for r in map(json.loads, result.stdout.splitlines())}
    assert rows["cat.bmp"]["top"][0][0] in CATS
    assert rows["parrot.jpg"]["top"][0][0] == "macaw"
    assert "not a recognised image format" in rows["broken.jpg"]["error"]


@pytest.mark.slow
def test_app_reproduces_the_export_accuracy(tmp_path_factory: pytest.TempPathFactory, venv_python: Path,
                                            tmp_path: Path) -> None:
    from edgeft.run.rundir import RunManifest

    run = mobilenet_run(tmp_path_factory)
    export_dir, report = session_export(tmp_path_factory, run)
    app = tmp_path / "shapes-app"
    result = run_edgeft("bundle", str(export_dir), "--target", "rpi4", "--out", str(app))
    assert result.exit_code == 0, result.stderr
    assert (app / "model_int8.tflite").is_file() and (app / "model_int8.tflite.json").is_file()
    manifest = RunManifest.from_dict(json.loads((run / "edgeft.json").read_text()))
    samples = manifest.splits["val"]
    out = _app(venv_python, app, *[s.path for s in samples], "--top-k", "1")
    assert out.returncode == 0, out.stderr
    predicted = {r["file"]: r["top"][0][0] for r in map(json.loads, out.stdout.splitlines())}
    accuracy = sum(predicted[s.path] == manifest.class_names[s.label] for s in samples) / len(samples)
    expected = next(a["accuracy"] for a in report["artifacts"] if a["path"].endswith("model_int8.tflite")
                    or (a["format"] == "tflite" and a["precision"] == "int8"))
    print(f"bundle app accuracy on {len(samples)} val files: {accuracy:.4f}; export report: {expected:.4f}")
    assert abs(accuracy - expected) <= 0.005


@pytest.mark.parametrize("case", ["unknown-target", "missing-artifact", "edgetpu-missing", "exists", "not-a-model"])
def test_bundle_bad_input_is_one_line(case: str, tmp_path: Path) -> None:
    export = tmp_path / "export"
    export.mkdir()
    (export / "model_float32.tflite").write_bytes(b"TFL3")
    args = [str(export), "--target", "rpi4", "--out", str(tmp_path / "app")]
    expected, fragment = 2, ""
    if case == "unknown-target":
        args[2], expected, fragment = "toaster", 7, "unknown target profile 'toaster'"
    elif case == "missing-artifact":
        fragment = "has no model_int8.tflite (what rpi4 runs best); export it with: edgeft export RUN_DIR"
    elif case == "edgetpu-missing":
        args[2], fragment = "coral-usb", "has no model_int8_edgetpu.tflite"
    elif case == "exists":
        (tmp_path / "app").mkdir()
        (tmp_path / "app" / "keep.txt").write_text("mine")
        args += ["--artifact", "model_float32.tflite"]
        fragment = "already exists and is not empty"
    elif case == "not-a-model":
        (tmp_path / "notes.txt").write_text("x")
        args[0], fragment = str(tmp_path / "notes.txt"), "is not a model file"
    result = run_edgeft("bundle", *args)
    assert result.exit_code == expected, (result.stdout, result.stderr)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and fragment in errors[0] and "Traceback" not in result.stderr
    assert not (tmp_path / "app").exists() or case == "exists"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".app.")]  # no half-written folder left


def _export_folder(root: Path, records: list[dict]) -> Path:
    """An export folder with export_report.json listing ``records`` (tiny placeholder model files)."""
    export = root / "export"
    export.mkdir()
    for record in records:
        (export / record["path"]).write_bytes(b"TFL3")
    (export / "export_report.json").write_text(json.dumps({"schema": "edgeft.export_report/2", "artifacts": records}))
    return export


def _artifact(path: str, fmt: str, precision: str, accuracy: float, passed: bool = True) -> dict:
    return {"format": fmt, "precision": precision, "source": "ptq" if precision == "int8" else "float",
            "path": path, "accuracy": accuracy, "passed": passed}


@pytest.mark.parametrize("target, int8_passed, expected", [
    ("rpi4", True, "model_int8.tflite"),           # a Pi runs int8 TFLite best
    ("rpi4", False, "model_dynamic_range.tflite"),  # int8 failed export's accuracy check: the next that passed
    ("coral-usb", True, "model_int8_edgetpu.tflite"),
])
def test_bundle_ships_the_export_reports_best_artifact_for_the_target(target: str, int8_passed: bool, expected: str,
                                                                       tmp_path: Path) -> None:
    export = _export_folder(tmp_path, [
        _artifact("model_float32.tflite", "tflite", "float32", 0.95),
        _artifact("model_dynamic_range.tflite", "tflite", "dynamic_range", 0.94),
        _artifact("model_int8.tflite", "tflite", "int8", 0.93, passed=int8_passed),
        _artifact("model_int8.onnx", "onnx", "int8", 0.96),
        _artifact("model_int8_edgetpu.tflite", "edgetpu", "int8", 0.93),
    ])
    result = run_edgeft("bundle", str(export), "--target", target, "--out", str(tmp_path / "app"), "--json")
    assert result.exit_code == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["artifact"] == expected and (tmp_path / "app" / expected).is_file()
    assert record["chosen_by"] == "export_report.json"
    override = run_edgeft("bundle", str(export), "--target", target, "--out", str(tmp_path / "app2"),
                          "--artifact", "model_int8.onnx", "--json")
    assert override.exit_code == 0 and json.loads(override.stdout)["artifact"] == "model_int8.onnx"


@pytest.mark.parametrize("target, fragment", [
    ("coral-usb", "has no artifact that coral-usb runs (model_float32.tflite, model_int8.onnx); export it with: "
                  "edgeft export RUN_DIR --formats tflite,edgetpu --int8 (on a host with edgetpu_compiler)"),
    ("rpi4", "has no artifact that rpi4 runs (model_float32.onnx, model_int8.onnx); export it with: "
             "edgeft export RUN_DIR --formats tflite --int8"),
])
def test_bundle_from_a_report_without_the_targets_artifact_says_what_to_export(target: str, fragment: str,
                                                                               tmp_path: Path) -> None:
    records = [_artifact("model_int8.onnx", "onnx", "int8", 0.9)]
    records.append(_artifact("model_float32.tflite", "tflite", "float32", 0.9) if target == "coral-usb"
                   else _artifact("model_float32.onnx", "onnx", "float32", 0.9))
    export = _export_folder(tmp_path, records)
    result = run_edgeft("bundle", str(export), "--target", target, "--out", str(tmp_path / "app"))
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [f"error: {export} {fragment}, or choose another file with "
                                                  "--artifact NAME"]
    assert not (tmp_path / "app").exists()
