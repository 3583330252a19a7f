"""Bad input to `edgeft export` / `edgeft qat`: one line on stderr and the documented exit code."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from export_helpers import mobilenet_run

from edgeft.cli import main


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    captured = capsys.readouterr()
    return int(exit_info.value.code or 0), captured.out, captured.err


def _one_error_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


def test_missing_run_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _cli(capsys, "export", str(tmp_path / "nope"), "--out", str(tmp_path / "x"))
    assert code == 2 and out == ""
    assert "run directory not found" in _one_error_line(err)
    code, _, err = _cli(capsys, "qat", str(tmp_path / "nope"), "--out", str(tmp_path / "q"))
    assert code == 2 and "run directory not found" in _one_error_line(err)


def test_corrupted_manifest(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "edgeft.json").write_text("{not json")
    (run / "model.keras").write_bytes(b"x")
    code, _, err = _cli(capsys, "export", str(run), "--out", str(tmp_path / "x"))
    assert code == 2 and "corrupted run manifest" in _one_error_line(err)


def test_unknown_format(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _cli(capsys, "export", str(tmp_path), "--formats", "tflite,coreml", "--out", str(tmp_path / "x"))
    assert code == 2 and "unknown export format 'coreml'" in _one_error_line(err)


def test_corrupted_model_file(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path,
                              capsys: pytest.CaptureFixture[str]) -> None:
    source = mobilenet_run(tmp_path_factory)
    run = tmp_path / "run"
    shutil.copytree(source, run)
    (run / "model.keras").write_bytes(b"PK\x03\x04 this is not a model")
    code, _, err = _cli(capsys, "export", str(run), "--formats", "tflite", "--out", str(tmp_path / "x"))
    assert code == 2
    assert "cannot load Keras model" in _one_error_line(err)


def test_int8_without_calibration_data(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    source = mobilenet_run(tmp_path_factory)
    run = tmp_path / "run"
    shutil.copytree(source, run)
    manifest = json.loads((run / "edgeft.json").read_text())
    manifest["splits"]["train"] = []
    (run / "edgeft.json").write_text(json.dumps(manifest))
    code, _, err = _cli(capsys, "export", str(run), "--formats", "tflite", "--int8", "--in-process",
                        "--out", str(tmp_path / "x"))
    assert code == 2
    line = _one_error_line(err)
    assert "calibration" in line and "--calib-dir" in line


def test_a_conversion_process_that_dies_is_one_line_with_its_last_message(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A child killed mid-conversion (the kernel's OOM killer, say) becomes an ExportError, not a hang or traceback."""
    import sys

    from edgeft.errors import ExportError
    from edgeft.export.worker import run_in_child

    dying_python = tmp_path / "python"
    dying_python.write_text("#!/bin/sh\necho 'converter: some chatter' >&2\n"
                            "echo 'F0000 allocator.cc:12] Out of memory while converting' >&2\nkill -9 $$\n")
    dying_python.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(dying_python))
    with pytest.raises(ExportError) as caught:
        run_in_child({"task": "convert"}, tmp_path / "work", "model_int8.tflite")
    message = caught.value.message
    assert message.startswith("model_int8.tflite: the conversion process died (killed by signal 9): F0000 allocator")
    assert "--in-process" in message and "\n" not in message


def test_unknown_onnx_weight_type_is_a_usage_error(tmp_path: Path) -> None:
    from edgeft.errors import UsageError
    from edgeft.export import ExportConfig

    with pytest.raises(UsageError, match="unknown --onnx-weights 'int4'; choose from: uint8, int8, int8_7bit"):
        ExportConfig.from_flags(tmp_path, tmp_path / "x", onnx_weights="int4")
    assert ExportConfig.from_flags(tmp_path, tmp_path / "x", onnx_weights="int8").onnx_weights.value == "int8"


def test_unknown_weight_rounding_is_refused_before_any_work(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    from edgeft.errors import UsageError
    from edgeft.export import ExportConfig

    with pytest.raises(UsageError, match="^unknown --weight-rounding 'stochastic'; choose from: adaptive, nearest$"):
        ExportConfig.from_flags(tmp_path, tmp_path / "x", weight_rounding="stochastic")
    assert ExportConfig.from_flags(tmp_path, tmp_path / "x").weight_rounding.value == "adaptive"
    code, out, err = _cli(capsys, "export", str(tmp_path), "--int8", "--weight-rounding", "stochastic",
                          "--out", str(tmp_path / "x"))
    assert code == 2 and out == ""
    assert "Invalid value for '--weight-rounding': 'stochastic' is not one of 'adaptive', 'nearest'" in err
    assert "Traceback" not in err and not (tmp_path / "x").exists()
