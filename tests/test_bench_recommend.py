"""Which artifact to ship: the bench's recommendation, unambiguous names, the plot, and bundle --from-bench."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import run_edgeft

from edgeft.bench.recommend import artifact_labels, latency_accuracy_figure, pareto_front, recommend

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
MODEL = SHARED / "models" / "tf2_mobilenet_v2_1.0_224_ptq.tflite"


def _row(artifact: str, threads: int, p50: float, accuracy: float | None, target: str = "rpi4",
         error: str | None = None) -> dict:
    return {"artifact": artifact, "artifact_path": f"/x/{artifact}", "target": target, "threads": threads,
            "p50_ms": None if error else p50, "accuracy": accuracy, "error": error}


ROWS = [
    _row("model_float32.tflite", 1, 40.0, 0.950), _row("model_float32.tflite", 4, 14.0, 0.950),
    _row("model_int8.tflite", 1, 12.0, 0.945), _row("model_int8.tflite", 4, 5.0, 0.945),
    _row("model_int8.onnx", 1, 9.0, 0.920), _row("model_int8.onnx", 4, 3.0, 0.920),
    _row("model_int8_edgetpu.tflite", 1, 1.0, None, error="Edge TPU not found"),
    _row("model_int8.tflite", 4, 30.0, None, target="local"), _row("model_float32.tflite", 4, 20.0, None, target="local"),
]


def test_recommendation_is_the_fastest_within_max_drop() -> None:
    rec = recommend(ROWS, max_drop=1.0)
    assert (rec["rpi4"]["artifact"], rec["rpi4"]["threads"]) == ("model_int8.tflite", 4)  # 0.5 pt below the best
    assert rec["rpi4"]["best_accuracy"] == 0.950 and "within 1 accuracy points" in rec["rpi4"]["reason"]
    loose = recommend(ROWS, max_drop=5.0)["rpi4"]
    assert (loose["artifact"], loose["threads"]) == ("model_int8.onnx", 4)
    strict = recommend(ROWS, max_drop=0.0)["rpi4"]
    assert (strict["artifact"], strict["threads"]) == ("model_float32.tflite", 4)
    assert rec["local"]["artifact"] == "model_float32.tflite" and "no accuracy measured" in rec["local"]["reason"]


def test_same_file_names_from_different_exports_are_told_apart() -> None:
    labels = artifact_labels([Path("/runs/a/export/model_int8.tflite"), Path("/runs/b/export/model_int8.tflite"),
                              Path("/runs/a/export/model_int8.onnx")])
    assert labels == ["a/export/model_int8.tflite", "b/export/model_int8.tflite", "model_int8.onnx"]
    assert artifact_labels([Path("x/m.tflite"), Path("y/m.tflite")]) == ["x/m.tflite", "y/m.tflite"]


def test_pareto_front() -> None:
    assert pareto_front([(3, 92), (5, 94.5), (9, 92), (14, 95), (40, 95), (12, 94.5)]) == [(3, 92), (5, 94.5), (14, 95)]


def test_plot_has_a_legend_plain_ticks_and_the_recommendation() -> None:
    import matplotlib.pyplot as plt

    rows = ROWS + [_row("$\\alpha$_model.tflite", 1, 2.0, 0.5)]  # a name TeX would mangle
    figure = latency_accuracy_figure(rows, recommend(rows))
    try:
        figure.canvas.draw()
        axes = {ax.get_title(): ax for ax in figure.axes}
        rpi4 = axes["rpi4: latency vs accuracy"]
        legend = [t.get_text() for t in rpi4.get_legend().get_texts()]
        assert "model_int8.tflite (threads 1,4)" in legend and "Pareto front" in legend
        assert "recommended: model_int8.tflite, 4 thread(s)" in legend
        assert "$\\alpha$_model.tflite (threads 1)" in legend
        assert len([t for t in legend if t.startswith("model_int8.tflite")]) == 1
        assert not rpi4.texts  # no point labels
        ticks = [t.get_text() for t in rpi4.get_xticklabels() if t.get_text()]
        assert ticks and all("^" not in t and "$" not in t for t in ticks)
        assert {"2", "5", "10"} <= set(ticks)
        lines = [line for line in rpi4.get_lines() if line.get_label() == "model_int8.tflite (threads 1,4)"]
        assert list(lines[0].get_xdata()) == [12.0, 5.0]  # thread counts joined by one line
        assert rpi4.get_ylabel() == "top-1 accuracy (%)"
        assert axes["local: latency vs accuracy"].get_ylabel().startswith("accuracy not measured")
    finally:
        plt.close(figure)


@pytest.mark.skipif(not MODEL.is_file(), reason="../shared/models is absent (a user's checkout)")
def test_bench_names_two_exports_apart_and_bundle_ships_its_recommendation(tmp_path: Path) -> None:
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        shutil.copyfile(MODEL, tmp_path / name / "model_int8.tflite")
    import numpy as np
    from PIL import Image

    labels = (SHARED / "models" / "imagenet_labels.txt").read_text().splitlines()
    with Image.open(SHARED / "models" / "cat.bmp") as image:
        cat = np.asarray(image.convert("RGB").resize((224, 224)), dtype=np.uint8)
    np.savez(tmp_path / "eval.npz", images=cat[None], labels=np.array([labels.index("Egyptian cat")]))
    bench_dir = tmp_path / "bench"
    result = run_edgeft("bench", str(tmp_path / "a" / "model_int8.tflite"), str(tmp_path / "b" / "model_int8.tflite"),
                        "--runs", "3", "--warmup", "1", "--threads", "1", "--eval", str(tmp_path / "eval.npz"),
                        "--out", str(bench_dir))
    assert result.exit_code == 0, result.stderr
    summary = json.loads((bench_dir / "bench.json").read_text())
    assert sorted(r["artifact"] for r in summary["rows"]) == ["a/model_int8.tflite", "b/model_int8.tflite"]
    assert {r["artifact_path"] for r in summary["rows"]} == {str(tmp_path / n / "model_int8.tflite") for n in "ab"}
    assert [r["accuracy"] for r in summary["rows"]] == [1.0, 1.0]
    rec = summary["recommendation"]["local"]
    assert rec["artifact"] in ("a/model_int8.tflite", "b/model_int8.tflite") and rec["threads"] == 1
    assert rec["accuracy"] == 1.0 and "within 1 accuracy points" in rec["reason"]
    assert "recommended artifact" in (bench_dir / "bench.md").read_text()
    assert (bench_dir / "bench_latency_accuracy.png").read_bytes()[:4] == b"\x89PNG"
    chosen = rec["artifact"].split("/")[0]
    app = tmp_path / "app"
    result = run_edgeft("bundle", str(tmp_path / chosen), "--from-bench", str(bench_dir), "--target", "local",
                        "--out", str(app), "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["source"] == str((tmp_path / chosen / "model_int8.tflite").resolve())
    missing = run_edgeft("bundle", str(tmp_path / "a"), "--from-bench", str(bench_dir), "--target", "rpi4",
                         "--out", str(tmp_path / "app2"))
    assert missing.exit_code == 2 and "no measurement for target 'rpi4'" in missing.stderr
