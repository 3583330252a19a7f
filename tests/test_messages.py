"""One-line messages and exit codes for bad models, mismatched evaluation sets and the interpreters' own noise.

Real parts only: Google's int8 MobileNetV2 (../shared/models) in the real TFLite interpreter, the
device code in its own process (``--target local``), real photos, real damaged files.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, SHARED
from edgeft import targets as device

MODEL = SHARED / "models" / "tf2_mobilenet_v2_1.0_224_ptq.tflite"
LABELS = SHARED / "models" / "imagenet_labels.txt"
needs_model = pytest.mark.skipif(not MODEL.is_file(), reason="../shared/models is absent (a user's checkout)")
BANNER = "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."


def _edgeft(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgeft", *args], capture_output=True, text=True, timeout=300,
                          cwd=REPO)


def _one_error_line(result: subprocess.CompletedProcess) -> str:
    """The last stderr line, which must be edgeft's one-line error (no traceback before it)."""
    assert "Traceback" not in result.stderr, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), result.stderr
    return last


def _damaged(tmp_path: Path) -> dict[str, Path]:
    """A file of junk bytes named .tflite, Google's model cut in half, and junk named .onnx."""
    junk = tmp_path / "junk.tflite"
    junk.write_bytes(b"\x00garbage" * 100)
    truncated = tmp_path / "truncated.tflite"
    data = MODEL.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    onnx = tmp_path / "junk.onnx"
    onnx.write_bytes(b"\x00garbage" * 100)
    return {"junk": junk, "truncated": truncated, "onnx": onnx}


# ----------------------------------------------------------------------------- item 15: damaged models
@needs_model
@pytest.mark.parametrize("case", ["junk", "truncated", "onnx"])
def test_bench_refuses_a_damaged_model_once_by_its_path(tmp_path: Path, case: str) -> None:
    model = _damaged(tmp_path)[case]
    result = _edgeft("bench", str(model), "--target", "local", "--threads", "1,2", "--runs", "2",
                     "--remote-tmpdir", str(tmp_path / "device"), "--out", str(tmp_path / "b"))
    line = _one_error_line(result)
    assert result.returncode == 10, result.stderr
    assert str(model) in line and "m0_" not in line and "more failure" not in line
    assert "damaged" in line
    assert not (tmp_path / "b").exists()  # refused before anything was measured or written


@needs_model
def test_device_side_damage_names_the_users_file_and_counts_once(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """When the host cannot judge the file (no runtime here), the device's verdict is reported the same way."""
    from edgeft.bench import core
    from edgeft.bench.checks import ModelFacts
    from edgeft.bench.config import BenchConfig, SshOptions
    from edgeft.errors import CorruptModelError

    model = _damaged(tmp_path)["truncated"]
    good = tmp_path / "good.tflite"
    shutil.copyfile(MODEL, good)
    monkeypatch.setattr(core, "inspect_model", lambda path, sidecar=None: ModelFacts(Path(path), None, ()))
    config = BenchConfig(artifacts=(model, good), targets=("local",), out_dir=tmp_path / "b", runs=2, warmup=0,
                         threads=(1, 2), ssh=SshOptions(remote_tmpdir=str(tmp_path / "device")))
    with pytest.raises(CorruptModelError) as caught:
        core.main_bench(config)
    message = str(caught.value)
    assert caught.value.exit_code == 10 and "\n" not in message
    assert message.startswith("truncated.tflite on local: truncated.tflite is not a valid TFLite model")
    assert "m0_" not in message and "more failure" not in message
    rows = json.loads((tmp_path / "b" / "bench.json").read_text())["rows"]
    bad = [r for r in rows if r["artifact"] == "truncated.tflite"]
    assert len(bad) == 1 and bad[0]["error_kind"] == "model"  # one failure, not one per thread count
    assert [r["threads"] for r in rows if r["artifact"] == "good.tflite"] == [1, 2]
    assert all(r["p50_ms"] > 0 for r in rows if r["artifact"] == "good.tflite")


@needs_model
def test_doctor_refuses_a_missing_or_damaged_model(tmp_path: Path) -> None:
    damaged = _damaged(tmp_path)
    for model, code, fragment in [(tmp_path / "nope.tflite", 2, "not found"), (damaged["junk"], 10, "not a TFLite"),
                                  (damaged["truncated"], 10, "damaged or truncated")]:
        result = _edgeft("doctor", str(model), "--target", "local", "--remote-tmpdir", str(tmp_path))
        line = _one_error_line(result)
        assert result.returncode == code and fragment in line and str(model) in line, result.stderr
        assert "ok: ready" not in result.stdout + result.stderr


# ----------------------------------------------------------------------------- item 10: eval set vs model
def _photo_classes(root: Path, names: tuple[str, ...]) -> Path:
    """Class folders holding Google's sample photos: cat.bmp under the first name, parrot.jpg under the second."""
    for name, photo in zip(names, ("cat.bmp", "parrot.jpg")):
        (root / name).mkdir(parents=True)
        shutil.copyfile(SHARED / "models" / photo, root / name / photo)
    return root


@needs_model
def test_bench_eval_with_other_classes_is_refused_and_names_are_mapped(tmp_path: Path) -> None:
    # 2 classes against 1001 unlabelled outputs: no accuracy can mean anything
    two = _photo_classes(tmp_path / "two", ("cats", "birds"))
    result = _edgeft("bench", str(MODEL), "--eval", str(two), "--threads", "1", "--runs", "2",
                     "--remote-tmpdir", str(tmp_path / "device"), "--out", str(tmp_path / "b1"))
    line = _one_error_line(result)
    assert result.returncode == 2
    assert line == (f"error: --eval {two} has 2 classes but {MODEL.name} has 1001 outputs: "
                    "evaluate it on a set with the model's classes")
    assert not (tmp_path / "b1").exists()
    # an .npz without class names whose labels exceed the outputs
    npz = tmp_path / "eval.npz"
    np.savez(npz, images=np.zeros((1, 8, 8, 3), np.uint8), labels=np.array([1001]))
    result = _edgeft("bench", str(MODEL), "--eval", str(npz), "--threads", "1", "--runs", "2",
                     "--remote-tmpdir", str(tmp_path / "device"), "--out", str(tmp_path / "b2"))
    assert result.returncode == 2 and "has label 1001 but" in _one_error_line(result)
    # the same model with its labels: folders named like two of them are mapped, and scored right
    labelled = tmp_path / "labelled.tflite"
    shutil.copyfile(MODEL, labelled)
    Path(device.sidecar_path(str(labelled))).write_text(json.dumps({"labels": LABELS.read_text().splitlines()}))
    named = _photo_classes(tmp_path / "named", ("Egyptian cat", "macaw"))
    result = _edgeft("bench", str(labelled), "--eval", str(named), "--threads", "1", "--runs", "2", "--json",
                     "--remote-tmpdir", str(tmp_path / "device"), "--out", str(tmp_path / "b3"))
    assert result.returncode == 0, result.stderr
    (row,) = json.loads(result.stdout)["rows"]
    assert row["accuracy"] == 1.0 and row["eval_count"] == 2


@needs_model
def test_runtime_names_a_damaged_model_as_damaged(tmp_path: Path) -> None:
    from edgeft.errors import CorruptModelError, ModelFileError
    from edgeft.runtime import Classifier

    for model in _damaged(tmp_path).values():
        with pytest.raises(CorruptModelError, match="damaged") as caught:
            Classifier.load(model)
        assert isinstance(caught.value, ModelFileError) and model.name in str(caught.value)


# ----------------------------------------------------------------------------- item 17: names, threads
@needs_model
def test_same_file_names_from_two_export_folders_are_told_apart(tmp_path: Path) -> None:
    for folder in ("ptq", "qat"):
        (tmp_path / folder).mkdir()
        shutil.copyfile(MODEL, tmp_path / folder / "model_int8.tflite")
    result = _edgeft("bench", str(tmp_path / "ptq"), str(tmp_path / "qat"), "--threads", "1", "--runs", "2",
                     "--json", "--remote-tmpdir", str(tmp_path / "device"), "--out", str(tmp_path / "b"))
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)["rows"]
    assert [r["artifact"] for r in rows] == ["ptq/model_int8.tflite", "qat/model_int8.tflite"]
    table = (tmp_path / "b" / "bench.md").read_text()
    assert "ptq/model_int8.tflite" in table and "qat/model_int8.tflite" in table


# ----------------------------------------------------------------------------- item 17: threads on this host
def test_local_default_threads_are_capped_at_the_hosts_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    from edgeft.bench import core
    from edgeft.bench.config import SshOptions
    from edgeft.bench.profiles import get_profile
    from edgeft.bench.targets import ResolvedTarget, resolve_target

    local = resolve_target("local", SshOptions())
    assert local.profile is not None and tuple(local.profile.threads) == (1, 2, 4)
    for cores, expected in [(1, [1]), (2, [1, 2]), (3, [1, 2, 3]), (16, [1, 2, 4])]:
        monkeypatch.setattr(core, "host_cores", lambda cores=cores: cores)
        assert core.default_threads(local) == expected
    pi = get_profile("rpi4")  # a device's own cores count there, not this host's
    assert pi is not None and max(pi.threads) > 1
    monkeypatch.setattr(core, "host_cores", lambda: 1)
    assert core.default_threads(ResolvedTarget("pi", local.transport, pi, None)) == list(pi.threads)


# ----------------------------------------------------------------------------- item 16: interpreter banner
def test_banner_is_filtered_and_other_native_lines_kept(capfd: pytest.CaptureFixture[str]) -> None:
    import os

    from edgeft.targets.native import banners_silenced

    with banners_silenced():
        os.write(2, f"{BANNER}\nERROR: a real native error\n".encode())
        print("a Python line", file=sys.stderr)
    err = capfd.readouterr().err
    assert BANNER not in err
    assert "ERROR: a real native error" in err and "a Python line" in err


@needs_model
def test_loading_a_tflite_model_prints_no_banner() -> None:
    code = (f"from edgeft.targets import Model\nm = Model({str(MODEL)!r})\nm.set_input(m.random_input())\n"
            "m.invoke()\nprint('ok')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
    assert "XNNPACK" not in result.stderr


# ----------------------------------------------------------------------------- item 16: --resume refusal
def test_resume_refusal_names_each_changed_option() -> None:
    from edgeft.training.finetune import _fingerprint_changes

    current = {"backbone": "mobilenet_v2", "alpha": 0.35, "data_hash": "b", "learning_rate": 0.01, "epochs": 6}
    flat = dict(current, learning_rate=0.001, data_hash="a")
    assert _fingerprint_changes(flat, current) == ["--learning-rate (was 0.001, now 0.01)", "the files in DATA_DIR"]
    nested = {"backbone": "mobilenet_v2", "alpha": 0.35, "data_hash": "b",
              "hyperparameters": {"learning_rate": 0.01, "epochs": 5}}  # a checkpoint of the earlier form
    assert _fingerprint_changes(nested, current) == ["--epochs (was 5, now 6)"]
    assert _fingerprint_changes(current, dict(current)) == []


# ----------------------------------------------------------------------------- item 7: runtime inputs
@needs_model
def test_runtime_refuses_empty_pil_images_and_bad_label_paths(tmp_path: Path) -> None:
    from PIL import Image

    from edgeft.errors import ImageError, UsageError
    from edgeft.runtime import Classifier

    classifier = Classifier.load(MODEL, labels=LABELS)
    for image in (Image.new("RGB", (0, 0)), Image.new("L", (5, 0)), np.zeros((0, 7, 3), np.uint8)):
        with pytest.raises(ImageError, match=r"empty \(\d+x\d+ pixels\)") as caught:
            classifier.classify(image)
        assert "\n" not in str(caught.value)
    for labels, fragment in [(tmp_path / "missing.txt", "cannot read labels file"), (tmp_path, "not a folder")]:
        with pytest.raises(UsageError, match=fragment) as caught:
            Classifier.load(MODEL, labels=labels)
        assert "\n" not in str(caught.value) and str(labels) in str(caught.value)


# ----------------------------------------------------------------------------- item 16: done line, Edge TPU
@pytest.mark.slow
def test_done_line_includes_writing_the_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    import time

    from conftest import write_digits
    from edgeft.run import rundir
    from edgeft.training import finetune
    from edgeft.training.config import FinetuneConfig

    real_plots = rundir._write_plots

    def slow_plots(*args: object, **kwargs: object) -> None:
        time.sleep(1.5)  # a run whose files take long to write (a large confusion matrix, a slow disk)
        real_plots(*args, **kwargs)

    monkeypatch.setattr(rundir, "_write_plots", slow_plots)
    data = write_digits(tmp_path / "data", per_class=8, classes=3)
    started = time.monotonic()
    summary = finetune.main_finetune(FinetuneConfig.from_options(
        data_dir=data, out_dir=tmp_path / "run", alpha=0.35, image_size=32, weights="none", epochs=1, patience=0))
    elapsed = time.monotonic() - started
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["timings"]["plots"] >= 1.5 and summary["wall_s"] == metrics["wall_s"]
    assert elapsed - 1.0 <= summary["wall_s"] <= elapsed  # the whole run, writing and plots included
    assert f"in {summary['wall_s']:.1f}s -> {tmp_path / 'run'}" in capsys.readouterr().err


@pytest.mark.slow
def test_edgetpu_report_without_compiler_has_a_size_and_no_sidecar(
        tmp_path_factory: pytest.TempPathFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from export_helpers import mobilenet_run

    from edgeft.export import ExportConfig, main_export
    from edgeft.export.formats.edgetpu import REPORT_FILE

    run = mobilenet_run(tmp_path_factory)
    monkeypatch.setenv("PATH", str(Path(sys.executable).parent))  # no edgetpu_compiler on it
    out = tmp_path / "export"
    config = ExportConfig.from_flags(run, out, formats=["edgetpu"], calib_size=16, isolate=False, latency_runs=2,
                                     max_drop=100.0)
    report = main_export(config)
    err = capsys.readouterr().err
    (row,) = [a for a in report["artifacts"] if a["format"] == "edgetpu"]
    assert row["path"] == REPORT_FILE and row["sidecar"] is None and row["size_bytes"] > 100_000
    line = next(line for line in err.splitlines() if line.strip().startswith(f"{REPORT_FILE}:"))
    assert "None" not in line and f"{row['size_bytes']} bytes" in line
    assert not list(out.glob("*.json.json")) and BANNER not in err
    assert json.loads((out / REPORT_FILE).read_text())["full_integer"] is True


# ----------------------------------------------------------------------------- item 17: qat progress
@pytest.mark.slow
def test_qat_prints_one_line_per_epoch(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    import re

    from export_helpers import mobilenet_run

    from edgeft.quantization.qat import QATConfig, main_qat

    main_qat(QATConfig(mobilenet_run(tmp_path_factory), tmp_path / "qat", epochs=2))
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("[qat] epoch")]
    pattern = r"\[qat\] epoch {}/2  loss \d+\.\d{{4}}  accuracy \d\.\d{{4}}  val_loss \d+\.\d{{4}}  " \
              r"val_accuracy \d\.\d{{4}}  \d+\.\ds"
    assert len(lines) == 2, lines
    for epoch, line in enumerate(lines, 1):
        assert re.fullmatch(pattern.format(epoch), line), line


def test_banner_filter_survives_threads_loading_at_once(capfd: pytest.CaptureFixture[str]) -> None:
    """Concurrent captures must each restore the real stderr, never another thread's capture file."""
    import os
    import threading

    from edgeft.targets.native import banners_silenced

    def load(n: int) -> None:
        for _ in range(20):
            with banners_silenced():
                os.write(2, f"{BANNER}\nthread {n} native line\n".encode())

    threads = [threading.Thread(target=load, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    os.write(2, b"after the threads\n")
    err = capfd.readouterr().err
    assert BANNER not in err and err.count("native line") == 80 and err.endswith("after the threads\n")


@pytest.mark.parametrize("value, message", [("0", "0 is below 1 (1 = the set as it is)"),
                                            ("two", "'two' is not a whole number")])
def test_head_benchmark_refuses_a_bad_views_count(value: str, message: str) -> None:
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_finetune_vs_textbook.py"), "--views", value],
                          capture_output=True, text=True, timeout=60, cwd=REPO)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip().splitlines()[-1].endswith(f"error: argument --views: {message}"), done.stderr
    assert "Traceback" not in done.stderr
