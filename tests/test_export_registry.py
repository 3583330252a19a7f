"""The format registry and the device layer as export's only way to run a model.

A format is registered from this module alone (its exporter, and a device backend for its new
file suffix) and goes through plan, conversion, validation and the report; a sidecar with a
wrong preprocessing entry fails the export; a backend nobody provides is an error.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

import pytest
from export_helpers import mobilenet_run

from edgeft.cli import main
from edgeft.export import ExportConfig, main_export
from edgeft.export.config import Precision
from edgeft.export.formats import EXPORTERS, ConversionJob, Exporter
from edgeft.export.formats.tflite import TFLiteExporter

ROOT = Path(__file__).resolve().parents[1]
# The mean in pixel units where the model-space offset belongs (input = pixel / 127.5 - 127.5, not - 1):
# the inputs land far outside the training range and the predictions collapse to (nearly) one class.
WRONG_OFFSET = [-127.5, -127.5, -127.5]


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    captured = capsys.readouterr()
    return int(exit_info.value.code or 0), captured.out, captured.err


class DummyExporter(Exporter):
    """A made-up format: a float TFLite flatbuffer saved as ``model_float32.dummy``, run by the "dummy" backend."""

    format = "dummy"
    precisions = (Precision.FLOAT32,)
    order = 50

    def filename(self, precision: Precision) -> str:
        return "model_float32.dummy"

    def backend(self, precision: Precision) -> str | None:
        return "dummy"

    def convert(self, job: ConversionJob, model: Any) -> dict[str, Any]:
        from edgeft.export.formats.tflite import convert_keras_to_tflite
        from edgeft.preprocessing import Preprocessing

        raw = convert_keras_to_tflite(model, int(job.metadata["image_size"]), Precision.FLOAT32,
                                      Preprocessing.from_dict(job.metadata["preprocessing"]))
        Path(job.output).write_bytes(raw)
        return {"metadata": dict(job.metadata, note="dummy"), "converted_by": "DummyExporter"}

    def details(self, result: dict[str, Any]) -> dict[str, Any] | None:
        return {"converted_by": result["converted_by"]}


class WrongOffsetExporter(TFLiteExporter):
    """TFLite float32 whose sidecar carries a wrong ``offset`` (the model was trained with -1 on each channel)."""

    format = "tflite_wrong_offset"
    precisions = (Precision.FLOAT32,)
    order = 60

    def filename(self, precision: Precision) -> str:
        return "model_float32_wrong_offset.tflite"

    def convert(self, job: ConversionJob, model: Any) -> dict[str, Any]:
        result = super().convert(job, model)
        preprocessing = dict(result["metadata"]["preprocessing"], offset=WRONG_OFFSET)
        return dict(result, metadata=dict(result["metadata"], preprocessing=preprocessing))


class NoBackendExporter(DummyExporter):
    format = "orphan"

    def backend(self, precision: Precision) -> str | None:
        return "nonesuch"


@pytest.fixture
def dummy_backend(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Register the "dummy" device backend for ``.dummy`` files (a TFLite interpreter underneath); undone after."""
    from edgeft import targets as device
    from edgeft.targets import backends
    from edgeft.targets.backends.tflite import TFLiteBackend

    device.backend_names()  # the built-ins first, so that restoring the registry keeps them
    monkeypatch.setattr(backends, "_BACKENDS", dict(backends._BACKENDS))
    monkeypatch.setattr(backends, "_SUFFIXES", dict(backends._SUFFIXES))
    loaded: list[str] = []

    def factory(path: str, threads: int, options: dict[str, Any]) -> TFLiteBackend:
        loaded.append(path)
        return TFLiteBackend(path, threads, options)

    device.register_backend("dummy", (".dummy",), factory)
    return loaded


def test_a_format_registered_here_is_planned_converted_validated_and_reported(
        tmp_path_factory: pytest.TempPathFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        dummy_backend: list[str]) -> None:
    monkeypatch.setitem(EXPORTERS, "dummy", DummyExporter())
    run = mobilenet_run(tmp_path_factory)
    out = tmp_path / "export"
    report = main_export(ExportConfig.from_flags(run, out, formats=["dummy"], isolate=False, latency_runs=3))
    assert [a["format"] for a in report["artifacts"]] == ["dummy"]  # planned
    dummy = report["artifacts"][0]
    assert (out / "model_float32.dummy").is_file() and dummy["size_bytes"] == (out / "model_float32.dummy").stat().st_size
    # validated in its own backend, where it was written: the export's staging folder beside --out
    assert [Path(p).name for p in dummy_backend] == ["model_float32.dummy"]
    assert Path(dummy_backend[0]).parent.parent == out.parent
    assert dummy["backend"] == "dummy" and dummy["agreement"] == 1.0 and dummy["passed"] is True
    assert dummy["accuracy"] == report["keras_accuracy"] and dummy["p50_ms"] > 0
    assert dummy["details"] == {"converted_by": "DummyExporter"} and dummy["size_ratio"] == 1.0  # its own float32
    sidecar = json.loads((out / "model_float32.dummy.json").read_text())
    assert sidecar["note"] == "dummy" and sidecar["validation"]["agreement"] == 1.0
    assert "| dummy | float32 | float | model_float32.dummy |" in (out / "export_report.md").read_text()


def test_a_wrong_offset_in_the_sidecar_fails_the_export_with_exit_6(
        tmp_path_factory: pytest.TempPathFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(EXPORTERS, "tflite_wrong_offset", WrongOffsetExporter())
    run = mobilenet_run(tmp_path_factory)
    out = tmp_path / "export"
    code, _, err = _cli(capsys, "export", str(run), "--formats", "tflite_wrong_offset", "--in-process",
                        "--out", str(out))
    assert code == 6
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "model_float32_wrong_offset.tflite lost" in errors[0] and "--max-drop" in errors[0]
    report = json.loads((out / "export_report.json").read_text())
    wrong = report["artifacts"][0]  # the same model with the right sidecar agrees 100 % (the test above)
    assert wrong["passed"] is False and wrong["agreement"] <= 0.6 and wrong["accuracy_drop_pts"] > 30
    # the same model bytes, only the sidecar differs: the validation fed what the sidecar says
    assert json.loads((out / "model_float32_wrong_offset.tflite.json").read_text())["preprocessing"]["offset"] == WRONG_OFFSET


def test_an_artifact_whose_backend_nobody_provides_is_an_error(
        tmp_path_factory: pytest.TempPathFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(EXPORTERS, "orphan", NoBackendExporter())
    run = mobilenet_run(tmp_path_factory)
    code, _, err = _cli(capsys, "export", str(run), "--formats", "orphan", "--in-process", "--out", str(tmp_path / "x"))
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 5 and len(errors) == 1
    assert "format orphan declares device backend 'nonesuch', which the device layer does not have" in errors[0]
    assert not (tmp_path / "x" / "model_float32.dummy").exists()  # refused before converting


def test_export_main_has_no_per_format_branch() -> None:
    source = (ROOT / "edgeft" / "export" / "main.py").read_text()
    tree = ast.parse(source)
    names = {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)
             and isinstance(node.value, ast.Name) and node.value.id == "Format"}
    assert names == set() and "edgetpu" not in source and '"onnx"' not in source
