"""Emulated Raspberry Pi targets: the runner on Debian's arm64 Python with the device's own aarch64 wheels.

The userland is built once (``edgeft targets setup``, idempotent) into the real emulated cache, not the
per-test cache. On a machine without apt the tests skip with the reason; in CI (``CI`` set) a set-up
failure fails them. Every emulated invoke costs about a second (0.8 s for a 224 px int8 MobileNetV2 on
the Pi 4 profile), so each test keeps to a few.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED, run_edgeft
from export_helpers import mobilenet_run

from edgeft.bench.emulated import (EmulatedTransport, Userland, cache_root, command_problems, install_requirements,
                                   only_folder_argv, python_argv, setup_userland)
from edgeft.errors import MissingDependencyError, TargetError

# Read before conftest points EDGEFT_CACHE_DIR at a per-session folder: the userland is big, keep one.
EMULATED_DIR = cache_root()
REPO_ROOT = Path(__file__).resolve().parents[1]  # the device package is its targets/ folder
MODEL = SHARED / "models" / "tf2_mobilenet_v2_1.0_224_ptq.tflite"
CAT = SHARED / "models" / "cat.bmp"
LABELS = SHARED / "models" / "imagenet_labels.txt"
FLOAT_ATOL = 1e-5  # float outputs, aarch64 vs x86 kernels (observed: ~3e-6 with onnxruntime)

# Prints the raw output tensors (before dequantization) of the device layer's own Model, and its API.
PROBE = r'''
import json, sys
import numpy as np
sys.path.insert(0, sys.argv[1])
import targets as device
model = device.Model(sys.argv[2], threads=1)
images = np.load(sys.argv[3], allow_pickle=False)
raw = []
for image in images:
    model.set_input(model.prepare(image[None]))
    model.invoke()
    out = model.backend.output()
    raw.append(np.asarray(out).reshape(-1).tolist())
api = type(model.backend.interpreter if model.backend.name == "tflite" else model.backend.session)
print(json.dumps({"raw": raw, "dtype": str(np.asarray(out).dtype), "api": api.__module__ + "." + api.__name__,
                  "runtime": model.runtime, "version": model.runtime_version}))
'''

# LiteRT's newer CompiledModel API, which edgeft does not use.
COMPILED_MODEL = r'''
import sys
import numpy as np
from ai_edge_litert.compiled_model import CompiledModel
model = CompiledModel.from_file(sys.argv[1])
inputs, outputs = model.create_input_buffers(0), model.create_output_buffers(0)
inputs[0].write(np.zeros((1, 224, 224, 3), np.uint8))
model.run_by_index(0, inputs, outputs)
print("ran")
'''


def _in_ci() -> bool:
    return bool(os.environ.get("CI") or os.environ.get("EDGEFT_REQUIRE_EMULATED"))


def _setup(userland: Userland, cpus: tuple[str, ...]) -> Path:
    try:
        setup_userland(userland, cpus, root=EMULATED_DIR)
    except (MissingDependencyError, TargetError) as error:
        if _in_ci():
            pytest.fail(f"emulated {userland.value} userland set-up failed in CI: {error}")
        pytest.skip(f"no emulated {userland.value} userland: {error}")
    return EMULATED_DIR


@pytest.fixture(scope="module")
def bookworm() -> Path:
    return _setup(Userland.BOOKWORM, ("cortex-a72", "cortex-a76"))


@pytest.fixture(scope="module")
def bullseye() -> Path:
    return _setup(Userland.BULLSEYE, ("cortex-a72",))


@pytest.fixture(autouse=True)
def _emulated_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEFT_EMULATED_DIR", str(EMULATED_DIR))


def _needs_shared() -> None:
    for path in (MODEL, CAT, LABELS):
        if not path.is_file():
            pytest.skip(f"needs {path} (the shared offline assets are not present)")


def _probe(tmp_path: Path, model: Path, images: np.ndarray, transport: EmulatedTransport | None) -> dict:
    """Run PROBE on x86 (transport None) or on the emulated target."""
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    batch = tmp_path / "images.npy"
    np.save(batch, images)
    args = [str(script), str(REPO_ROOT), str(model), str(batch)]
    if transport is None:
        done = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        return json.loads(done.stdout)
    return json.loads(transport.run([transport.python, *args], timeout_s=600))


def _cat(size: int = 224) -> np.ndarray:
    from PIL import Image

    with Image.open(CAT) as image:
        return np.asarray(image.convert("RGB").resize((size, size), Image.BILINEAR), dtype=np.uint8)[None]


# ----------------------------------------------------------------------------- 1. the runner on aarch64
@pytest.mark.slow
@pytest.mark.parametrize("cpu", ["cortex-a72", "cortex-a76"])
def test_runner_classifies_cat_bit_identical_to_x86(bookworm: Path, tmp_path: Path, cpu: str) -> None:
    _needs_shared()
    images = _cat()
    host = _probe(tmp_path, MODEL, images, None)
    device = _probe(tmp_path, MODEL, images, EmulatedTransport(f"emu-{cpu}", cpu, Userland.BOOKWORM, bookworm))
    labels = LABELS.read_text().splitlines()
    top1 = int(np.argmax(device["raw"][0]))
    assert "cat" in labels[top1].lower(), labels[top1]
    assert device["dtype"] == host["dtype"] == "uint8"
    assert device["raw"] == host["raw"], "int8 output differs between aarch64 and x86"
    # the runner uses LiteRT's classic Interpreter, which runs on a Pi 4 (CompiledModel does not, see below)
    assert device["api"] == "ai_edge_litert.interpreter.Interpreter" and device["version"] == "2.3.0"


@pytest.mark.slow
def test_compiled_model_api_dies_on_pi4_but_not_pi5(bookworm: Path, tmp_path: Path) -> None:
    """LiteRT's CompiledModel needs LSE atomics, which a Pi 4's Cortex-A72 lacks: why the runner avoids it."""
    _needs_shared()
    script = tmp_path / "compiled.py"
    script.write_text(COMPILED_MODEL)
    pi4 = EmulatedTransport("rpi4-emu", "cortex-a72", Userland.BOOKWORM, bookworm)
    with pytest.raises(TargetError, match=r"SIGILL on cortex-a72: .*compiled with lse enabled"):
        pi4.run([pi4.python, str(script), str(MODEL)], timeout_s=300)
    pi5 = EmulatedTransport("rpi5-emu", "cortex-a76", Userland.BOOKWORM, bookworm)
    assert pi5.run([pi5.python, str(script), str(MODEL)], timeout_s=300).strip().endswith("ran")


@pytest.mark.slow
def test_runner_on_bullseye_python39_matches_x86(bullseye: Path, tmp_path: Path) -> None:
    _needs_shared()
    images = _cat()
    host = _probe(tmp_path, MODEL, images, None)
    device = _probe(tmp_path, MODEL, images, EmulatedTransport("emu", "cortex-a72", Userland.BULLSEYE, bullseye))
    assert device["version"] == "2.1.0"
    assert device["raw"] == host["raw"]


# ----------------------------------------------------------------------------- 2. edgeft's exports
@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    from edgeft.export import ExportConfig, main_export

    run = mobilenet_run(tmp_path_factory)
    out = tmp_path_factory.mktemp("export-emu")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EDGEFT_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "edgeft-cache"))
        config = ExportConfig.from_flags(run, out, formats=["tflite", "onnx"], int8=True, calib_size=24,
                                         isolate=False, latency_runs=2, max_drop=100.0)
        report = main_export(config)
    return run, out, report


@pytest.mark.slow
def test_exports_on_rpi4_emu_have_the_x86_accuracy(bookworm: Path, exported: tuple[Path, Path, dict],
                                                    tmp_path: Path) -> None:
    run, out, report = exported
    expected = {Path(a["path"]).name: a["accuracy"] for a in report["artifacts"]}
    assert {"model_float32.tflite", "model_int8.tflite", "model_int8.onnx"} <= set(expected)
    result = run_edgeft("bench", str(out), "--target", "rpi4-emu", "--eval", str(run), "--runs", "1",
                        "--warmup", "0", "--threads", "1", "--json", "--out", str(tmp_path / "bench"))
    assert result.exit_code == 0, result.stderr[-2000:]
    summary = json.loads(result.stdout)
    measured = {row["artifact"]: row for row in summary["rows"]}
    assert set(measured) == set(expected)
    for name, accuracy in expected.items():
        row = measured[name]
        assert row["error"] is None and row["eval_count"] > 0, (name, row["error"])
        assert row["accuracy"] == accuracy, (f"{name}: accuracy on rpi4-emu {row['accuracy']} differs from the x86 "
                                             f"accuracy in export_report.json {accuracy}")
        assert row["emulated"] is True and row["target"] == "rpi4-emu"
    # latency from the emulator must never read as a device's
    assert summary["targets"]["rpi4-emu"]["emulation"]["cpu"] == "cortex-a72"
    assert any("rpi4-emu is EMULATED" in w for w in summary["warnings"])
    table = (tmp_path / "bench" / "bench.md").read_text()
    assert all("(QEMU)" in line for line in table.splitlines() if "| rpi4-emu |" in line and line.startswith("| model_"))


@pytest.mark.slow
def test_export_outputs_on_aarch64_match_x86(bookworm: Path, exported: tuple[Path, Path, dict],
                                             tmp_path: Path) -> None:
    """Raw outputs of two validation images: int8 bit-identical, float within FLOAT_ATOL."""
    run, out, _ = exported
    from edgeft.bench.core import load_eval_set

    images, _, _ = load_eval_set(run, 64, limit=2)
    transport = EmulatedTransport("rpi4-emu", "cortex-a72", Userland.BOOKWORM, bookworm)
    for name in ("model_float32.tflite", "model_int8.tflite", "model_float32.onnx", "model_int8.onnx"):
        host = _probe(tmp_path, out / name, images, None)
        device = _probe(tmp_path, out / name, images, transport)
        assert device["dtype"] == host["dtype"], name
        if host["dtype"] in ("uint8", "int8"):
            assert device["raw"] == host["raw"], f"{name}: int8 output differs between aarch64 and x86"
        else:
            difference = float(np.max(np.abs(np.array(device["raw"]) - np.array(host["raw"]))))
            assert difference <= FLOAT_ATOL, f"{name}: float output differs by {difference:g} (> {FLOAT_ATOL})"


# ----------------------------------------------------------------------------- 3. doctor
def test_doctor_reports_the_aarch64_python_and_pi4_cpu(bookworm: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # a host PYTHONPATH (here: the host's x86 numpy) must not leak into the emulated Python
    import numpy

    leaked = [str(Path(numpy.__file__).parents[1]), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(leaked))
    result = run_edgeft("doctor", "--target", "rpi4-emu", "--json")
    assert result.exit_code == 0, result.stderr
    facts = json.loads(result.stdout)["facts"]
    assert facts["machine"] == "aarch64" and facts["python"].startswith("3.11.")
    assert facts["python_executable"].startswith(str(EMULATED_DIR))
    assert facts["numpy"] and facts["onnxruntime"] == "1.32.0"
    assert facts["tflite_runtimes"][0] == {"name": "ai_edge_litert", "version": "2.3.0"}
    assert "Raspberry Pi 4" in facts["cpu_model"] and "cortex-a72" in facts["cpu_model"]
    assert facts["int8_isa"] == []  # the Pi 4 has no 8-bit dot product; the Pi 5 has asimddp
    text = run_edgeft("doctor", "--target", "rpi4-emu")
    assert text.exit_code == 0 and "Raspberry Pi 4" in text.stdout and "aarch64" in text.stdout


SOFTMAX = 25  # builtin operator code


def _needs_newer_runtime(source: Path, target: Path) -> None:
    """Copy a model making its SOFTMAX version 4 (ai-edge-litert 2.3.0 has it, 2.1.0 does not) and recording
    ``min_runtime_version`` 2.21.0, as a converter does for a model that uses a newer op version."""
    from edgeft.targets import flatbuffer as r
    buf = bytearray(source.read_bytes())
    model = r._fb_table(buf, r._fb_deref(buf, 0))
    start, count = r._fb_vector(buf, r._fb_field(buf, model, 1))
    patched = 0
    for i in range(count):
        code = r._fb_table(buf, r._fb_deref(buf, start + 4 * i))
        code_at, version_at = r._fb_field(buf, code, 3), r._fb_field(buf, code, 2)
        if code_at and version_at and struct.unpack_from("<i", buf, code_at)[0] == SOFTMAX:
            struct.pack_into("<i", buf, version_at, 4)
            patched += 1
    buffers, _ = r._fb_vector(buf, r._fb_field(buf, model, 4))
    entries, count = r._fb_vector(buf, r._fb_field(buf, model, 6))
    for i in range(count):
        entry = r._fb_table(buf, r._fb_deref(buf, entries + 4 * i))
        if r._fb_string(buf, r._fb_field(buf, entry, 0)) == "min_runtime_version":
            index = struct.unpack_from("<I", buf, r._fb_field(buf, entry, 1))[0]
            data = r._fb_table(buf, r._fb_deref(buf, buffers + 4 * index))
            at, length = r._fb_vector(buf, r._fb_field(buf, data, 0))
            buf[at:at + length] = b"2.21.0".ljust(length, b"\0")
            patched += 1
    assert patched == 2, "expected one SOFTMAX op with a version and a min_runtime_version entry"
    target.write_bytes(bytes(buf))


@pytest.mark.slow
def test_doctor_and_bench_catch_a_runtime_too_old_on_bullseye(bookworm: Path, bullseye: Path,
                                                              exported: tuple[Path, Path, dict],
                                                              tmp_path: Path) -> None:
    _, out, _ = exported
    model = tmp_path / "model_int8.tflite"
    _needs_newer_runtime(out / "model_int8.tflite", model)
    result = run_edgeft("doctor", "--target", "rpi4-emu-bullseye", str(model), "--json")
    report = json.loads(result.stdout)
    facts = report["facts"]
    assert facts["python"].startswith("3.9.") and facts["onnxruntime"] == "1.19.2" and facts["numpy"] < "2"
    assert facts["tflite_runtimes"][0] == {"name": "ai_edge_litert", "version": "2.1.0"}
    (too_old,) = [p for p in report["problems"]
                  if "ai_edge_litert 2.1.0 is older than model_int8.tflite needs (TFLite >= 2.21.0)" in p["problem"]]
    # 2.1.0 is the newest ai-edge-litert for Python 3.9: the fix is Bookworm with its pins, not 2.1.0 again
    assert too_old["fix"].startswith("ai-edge-litert 2.1.0 is the newest for Python 3.9: upgrade the device to "
                                     "Raspberry Pi OS Bookworm (Python 3.11), then: ")
    assert "ai-edge-litert==2.3.0" in too_old["fix"] and "2.1.0" not in too_old["fix"].split("then:")[1]
    assert json.loads(run_edgeft("doctor", "--target", "rpi4-emu", str(model), "--json").stdout)["ok"] is True
    # and the runtimes really differ: Bookworm's 2.3.0 runs it, Bullseye's 2.1.0 refuses it in one line
    result = run_edgeft("bench", str(model), "--target", "rpi4-emu", "--target", "rpi4-emu-bullseye", "--runs", "1",
                        "--warmup", "0", "--json", "--out", str(tmp_path / "bench"))
    assert result.exit_code == 7
    rows = {row["target"]: row for row in json.loads((tmp_path / "bench" / "bench.json").read_text())["rows"]}
    assert rows["rpi4-emu"]["error"] is None and rows["rpi4-emu"]["p50_ms"] > 0
    assert re.search(r"^ai-edge-litert 2\.1\.0 cannot run \S*model_int8\.tflite: it lacks op SOFTMAX version 4 ",
                     rows["rpi4-emu-bullseye"]["error"]), rows["rpi4-emu-bullseye"]["error"]


@pytest.mark.skipif(not MODEL.is_file(), reason="../shared/models is absent (a user's checkout)")
def test_doctor_fix_for_a_runtime_too_old_names_a_version_that_runs_the_model(tmp_path: Path) -> None:
    from edgeft.bench.doctor import check
    from edgeft.bench.profiles import get_profile

    model = tmp_path / "model_int8.tflite"
    _needs_newer_runtime(MODEL, model)
    profile = get_profile("rpi4")
    facts = {"python": "3.9.2", "numpy": "1.26.4", "onnxruntime": "1.19.2",
             "tflite_runtimes": [{"name": "ai_edge_litert", "version": "2.1.0"}]}
    (problem,) = check(facts, profile, (model,))
    assert problem["fix"] == ("ai-edge-litert 2.1.0 is the newest for Python 3.9: upgrade the device to Raspberry Pi "
                              "OS Bookworm (Python 3.11), then: python3 -m venv \"$HOME\"/.edgeft/venv && "
                              "\"$HOME\"/.edgeft/venv/bin/python -m pip install numpy ai-edge-litert==2.3.0 "
                              "onnxruntime==1.32.0")
    # on Bookworm an old install is fixed by the pinned one
    facts.update(python="3.11.2", tflite_runtimes=[{"name": "ai_edge_litert", "version": "2.1.0"}])
    (problem,) = check(facts, profile, (model,))
    assert problem["fix"].endswith("pip install numpy ai-edge-litert==2.3.0 onnxruntime==1.32.0")
    assert not problem["fix"].startswith("ai-edge-litert")


# ----------------------------------------------------------------------------- 4. the bundle's app
# What imports in the app's Python: only the bundle's requirements, no edgeft, no TensorFlow, not the
# userland's own onnxruntime.
# The bundle's device layer resizing a 640x480 frame (and a portrait one) in one piece and in 2 bands, and
# decoding image files (JPEG draft decoding, EXIF, progressive, alpha).
RESIZES = r'''
import hashlib, json, sys
import numpy as np
import PIL
from PIL import Image
sys.path.insert(0, sys.argv[1])
from edgeft_device import images
rows = []
for height, width in ((480, 640), (1322, 630)):
    frame = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    frame[: height // 2] = np.linspace(0, 255, width, dtype=np.uint8)[None, :, None]
    whole = images.load_image(frame, (224, 224))
    banded = [images.load_image(frame, (224, 224), threads=2) for _ in range(2)][-1]
    box = images._reduce_as_pillow_does(Image.fromarray(frame), 224, 224)[1]
    rows.append({"split": images._band_edges(box[0], 224, 2) is not None,
                 "equal": bool(np.array_equal(whole, banded)), "sha256": hashlib.sha256(whole.tobytes()).hexdigest()})
files = {path.rsplit("/", 1)[-1]: [hashlib.sha256(images.load_image(path, (size, size)).tobytes()).hexdigest()
                                   for size in (224, 96)] for path in sys.argv[2:]}
print(json.dumps({"pillow": PIL.__version__, "rows": rows, "files": files}))
'''

IMPORTABLE = r'''
import importlib.util, json, sys
names = ("numpy", "PIL", "ai_edge_litert", "onnxruntime", "edgeft", "tensorflow", "click")
print(json.dumps({"python": sys.version.split()[0], "found": [n for n in names if importlib.util.find_spec(n)]}))
'''


def _awkward_images(folder: Path) -> list[Path]:
    """Files whose decoding has steps to get wrong: a progressive JPEG, an EXIF-rotated one, a PNG with alpha,
    a 16-bit grayscale PNG."""
    from PIL import Image

    folder.mkdir()
    rng = np.random.default_rng(7)
    photo = np.asarray(Image.open(CAT).convert("RGB").resize((900, 600)))
    Image.fromarray(photo).save(folder / "progressive.jpg", quality=85, progressive=True)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(photo[:, :500]).save(folder / "rotated.jpg", quality=90, exif=exif)
    alpha = rng.integers(0, 256, photo.shape[:2], dtype=np.uint8)
    Image.fromarray(np.dstack([photo, alpha])).save(folder / "alpha.png")
    Image.fromarray((photo[..., 0].astype(np.uint16) * 257)).save(folder / "gray16.png")
    return sorted(folder.iterdir())


def _assert_device_pixels_are_the_hosts(argv: list[str], app: Path, tmp_path: Path, env: dict[str, str],
                                        pillow: str) -> None:
    """RESIZES on the emulated device (``argv``, the bundle's requirements installed) and here: the same hashes."""
    resizes = tmp_path / "resizes.py"
    resizes.write_text(RESIZES)
    files = [str(SHARED / "models" / "parrot.jpg"), str(SHARED / "models" / "grace_hopper.bmp")]
    files += [str(path) for path in _awkward_images(tmp_path / "awkward")]
    done = subprocess.run(argv + [str(resizes), str(app / "edgeft-device.pyz"), *files], capture_output=True,
                          text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    device = json.loads(done.stdout)
    here = json.loads(subprocess.run([sys.executable, str(resizes), str(app / "edgeft-device.pyz"), *files],
                                     capture_output=True, text=True, timeout=300, check=True).stdout)
    assert device["pillow"] == pillow and here["rows"] == device["rows"], (device, here)
    assert all(row["split"] and row["equal"] for row in device["rows"]), device
    assert len(device["files"]) == 6 and here["files"] == device["files"], (device["files"], here["files"])


# Frames resized by the device layer in a Python without Pillow (the userland's runner Python: numpy and
# the interpreters only): the numpy twin, box reduction included.
FRAMES_WITHOUT_PILLOW = r'''
import hashlib, importlib.util, json, sys
import numpy as np
sys.path.insert(0, sys.argv[1])
from targets.images import load_image
assert importlib.util.find_spec("PIL") is None
rng = np.random.default_rng(0)
out = []
for (height, width), size in (((1232, 1640), 224), ((723, 1283), 96), ((480, 640), 224)):
    frame = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    out.append(hashlib.sha256(load_image(frame, (size, size)).tobytes()).hexdigest())
print(json.dumps(out))
'''


@pytest.mark.slow
@pytest.mark.parametrize("userland", [Userland.BOOKWORM, Userland.BULLSEYE])
def test_device_without_pillow_resizes_camera_frames_to_the_hosts_pixels(userland: Userland, tmp_path: Path,
                                                                         request: pytest.FixtureRequest) -> None:
    """Frames of 6x the input size or more (box-reduced first) and a plain one, on the emulated Pi's aarch64 Python
    without Pillow (3.11 with numpy 2, 3.9 with numpy 1.26): the pixels the host's Pillow gives."""
    request.getfixturevalue(userland.value)
    script = tmp_path / "frames.py"
    script.write_text(FRAMES_WITHOUT_PILLOW)
    done = subprocess.run(python_argv("cortex-a72", userland, EMULATED_DIR) + [str(script), str(REPO_ROOT)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    from edgeft.targets.images import load_image

    rng = np.random.default_rng(0)
    here = [hashlib.sha256(load_image(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), (size, size)).tobytes()).hexdigest()
            for (height, width), size in (((1232, 1640), 224), ((723, 1283), 96), ((480, 640), 224))]
    assert json.loads(done.stdout) == here


@pytest.mark.slow
def test_bullseye_python39_device_decodes_files_to_the_hosts_pixels(bullseye: Path, tmp_path: Path) -> None:
    """Raspberry Pi OS Bullseye's Python 3.9 gets an older Pillow (11.3) from the bundle's requirements: the same
    pixels as the host's Pillow 13 for frames (either orientation, in bands) and files."""
    _needs_shared()
    app = tmp_path / "app"
    result = run_edgeft("bundle", str(MODEL), "--target", "rpi4", "--out", str(app), "--labels", str(LABELS))
    assert result.exit_code == 0, result.stderr
    try:
        installed = install_requirements(app / "requirements.txt", tmp_path / "site", Userland.BULLSEYE)
    except TargetError as error:
        if _in_ci() or "registry is unreachable" not in str(error):
            raise
        pytest.skip(str(error))
    argv = only_folder_argv("cortex-a72", Userland.BULLSEYE, tmp_path / "site", bullseye)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    _assert_device_pixels_are_the_hosts(argv, app, tmp_path, env, installed["pillow"])
    assert installed["pillow"].split(".")[0] == "11", installed


@pytest.mark.slow
def test_bundle_app_with_only_its_requirements_finds_the_cat_on_rpi4_emu(bookworm: Path, tmp_path: Path) -> None:
    _needs_shared()
    app = tmp_path / "cat-app"
    result = run_edgeft("bundle", str(MODEL), "--target", "rpi4", "--out", str(app), "--labels", str(LABELS))
    assert result.exit_code == 0, result.stderr
    site = tmp_path / "site"
    try:
        installed = install_requirements(app / "requirements.txt", site, Userland.BOOKWORM)
    except TargetError as error:
        if _in_ci() or "registry is unreachable" not in str(error):
            raise
        pytest.skip(str(error))
    assert installed["pillow"] == "12.0.0" and installed["ai-edge-litert"] == "2.3.0" and "onnxruntime" not in installed
    argv = only_folder_argv("cortex-a72", Userland.BOOKWORM, site, bookworm)
    assert command_problems(argv) == []
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    probe = tmp_path / "importable.py"
    probe.write_text(IMPORTABLE)
    seen = subprocess.run(argv + [str(probe)], capture_output=True, text=True, timeout=300, env=env)
    assert seen.returncode == 0, seen.stderr[-2000:]
    assert json.loads(seen.stdout) == {"python": "3.11.2", "found": ["numpy", "PIL", "ai_edge_litert"]}
    # The device's own Pillow (12 there, 13 here) decodes and resizes as training does here, in bands too
    _assert_device_pixels_are_the_hosts(argv, app, tmp_path, env, "12.0.0")
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "cat.bmp").write_bytes(CAT.read_bytes())
    run = subprocess.run(argv + [str(app / "app.py"), str(inbox), "--once", "--top-k", "3"], capture_output=True,
                         text=True, timeout=600, env=env, cwd=str(tmp_path))
    print(" ".join(argv[:5] + ["..."] + argv[-1:] + ["cat-app/app.py", "inbox", "--once", "--top-k", "3"]))
    print(run.stdout)
    assert run.returncode == 0, run.stderr[-2000:]
    (row,) = [json.loads(line) for line in run.stdout.splitlines()]
    assert Path(row["file"]).name == "cat.bmp" and "cat" in row["top"][0][0], row
    from edgeft.runtime import Classifier

    with Classifier.load(MODEL, labels=LABELS) as classifier:  # x86: the same labels and scores (int8 outputs)
        assert [tuple(pair) for pair in row["top"]] == classifier.classify(CAT, top_k=3)


def test_bundle_requirements_are_read_for_the_device_python_not_the_hosts() -> None:
    from edgeft.bench.emulated import requirements_for

    text = ('# comment\nnumpy<2; python_version == "3.9"\npillow==11.3.0; python_version == "3.9"\n'
            'numpy; python_version > "3.9"\npillow==12.0.0; python_version > "3.9"  # newest\n'
            'ai-edge-litert==2.3.0; platform_machine == "aarch64"\nonnxruntime; platform_machine == "x86_64"\n')
    assert requirements_for(text, "3.9") == ["numpy<2", "pillow==11.3.0", "ai-edge-litert==2.3.0"]
    assert requirements_for(text, "3.11") == ["numpy", "pillow==12.0.0", "ai-edge-litert==2.3.0"]


# ----------------------------------------------------------------------------- pitfalls, errors
def test_command_problems_catch_each_pitfall(tmp_path: Path) -> None:
    view = tmp_path / "view"
    (view / "proc").mkdir(parents=True)
    python = str(view / "usr" / "bin" / "python3.11")
    qemu = "/x/qemu-aarch64-static"
    (view / "proc" / "cpuinfo").write_text("processor\t: 0\nCPU part\t: 0xd08\n")
    assert command_problems([qemu, "-cpu", "cortex-a72", "-L", str(view), python, "-E", "-s"]) == []
    assert "not named" in command_problems([qemu, "-L", str(view), python, "-E", "-s"])[0]
    assert "SME" in command_problems([qemu, "-cpu", "max", "-L", str(view), python, "-E", "-s"])[0]
    assert "SIGILL" in command_problems([qemu, "-cpu", "cortex-a76", "-L", str(view), python, "-E", "-s"])[0]
    assert "PYTHONPATH" in command_problems([qemu, "-cpu", "cortex-a72", "-L", str(view), python])[0]
    outside = command_problems([qemu, "-cpu", "cortex-a72", "-L", str(view), "/usr/bin/python3.11", "-E", "-s"])
    assert "does not redirect the main program" in outside[0]
    (view / "proc" / "cpuinfo").unlink()
    assert "cpuinfo is missing" in command_problems([qemu, "-cpu", "cortex-a72", "-L", str(view), python, "-E", "-s"])[0]
    argv = python_argv("cortex-a76", Userland.BOOKWORM, tmp_path)
    assert argv[1:3] == ["-cpu", "cortex-a76"] and argv[-2:] == ["-E", "-s"]
    # only the emulated Python runs there: doctor --install's shell command is refused in one line
    with pytest.raises(TargetError, match="runs only its own Python, not `sh`"):
        EmulatedTransport("rpi4-emu", "cortex-a72", Userland.BOOKWORM, tmp_path).run(["sh", "-c", "true"], 5)


def test_missing_userland_is_one_line_exit_7(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEFT_EMULATED_DIR", str(tmp_path / "empty"))
    result = run_edgeft("doctor", "--target", "rpi5-emu")
    assert result.exit_code == 7
    assert result.stderr.strip().splitlines() == [
        f"error: target rpi5-emu: the emulated bookworm userland is not set up in {tmp_path / 'empty'}: run "
        "`edgeft targets setup rpi5-emu` (needs apt-get, dpkg-deb, pip and the Debian and PyPI registries)"]


def test_setup_refuses_a_real_device_and_says_what_is_missing(tmp_path: Path) -> None:
    result = run_edgeft("targets", "setup", "rpi4")
    assert result.exit_code == 2 and "only emulated profiles" in result.stderr
    empty = tmp_path / "bin"
    empty.mkdir()
    os.symlink(sys.executable, empty / "python")
    result = run_edgeft("targets", "setup", "rpi4-emu", "--force",
                        env={"PATH": str(empty), "EDGEFT_EMULATED_DIR": str(tmp_path / "cache")})
    assert result.exit_code == 3
    assert result.stderr.strip().splitlines() == [
        "error: cannot set up the emulated target: `apt-get` is missing: emulated targets are set up on a Debian "
        "or Ubuntu host with apt"]


def test_setup_is_idempotent(bookworm: Path) -> None:
    result = run_edgeft("targets", "setup", "rpi4-emu", "rpi5-emu", "--json")
    assert result.exit_code == 0, result.stderr
    (entry,) = json.loads(result.stdout)
    assert entry["built"] is False and entry["cpus"] == ["cortex-a72", "cortex-a76"]
    assert entry["packages"]["ai-edge-litert"] == "2.3.0" and entry["packages"]["onnxruntime"] == "1.32.0"
