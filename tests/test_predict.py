"""``edgeft predict``: files and folders, one line each, bad files reported and skipped, no TensorFlow."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run_edgeft

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
MODELS = SHARED / "models"
MODEL = MODELS / "tf2_mobilenet_v2_1.0_224_ptq.tflite"
LABELS = MODELS / "imagenet_labels.txt"
pytestmark = pytest.mark.skipif(not MODEL.is_file(), reason="../shared/models is absent (a user's checkout)")
CATS = ("Egyptian cat", "tabby, tabby cat", "tiger cat")


@pytest.fixture()
def photos(tmp_path: Path) -> Path:
    folder = tmp_path / "photos"
    (folder / "birds").mkdir(parents=True)
    shutil.copyfile(MODELS / "cat.bmp", folder / "a_cat.bmp")
    shutil.copyfile(MODELS / "parrot.jpg", folder / "birds" / "parrot.jpg")
    (folder / "b_broken.jpg").write_bytes((MODELS / "parrot.jpg").read_bytes()[:300])  # truncated JPEG
    (folder / "notes.txt").write_text("not an image, not an image suffix: skipped")
    return folder


def test_folder_and_files_one_line_each_bad_ones_reported(photos: Path, tmp_path: Path) -> None:
    result = run_edgeft("predict", str(MODEL), str(photos), str(tmp_path / "missing.png"), str(MODELS / "cat.bmp"),
                        "--labels", str(LABELS))
    assert result.exit_code == 9, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 5
    assert lines[0].split("\t")[:2][1] in CATS and lines[0].startswith(str(photos / "a_cat.bmp"))
    assert lines[1].startswith(f"{photos / 'b_broken.jpg'}\terror: cannot decode image")
    assert lines[2].split("\t")[1] == "macaw" and 0.5 < float(lines[2].split("\t")[2]) <= 1.0
    assert lines[3].startswith(f"{tmp_path / 'missing.png'}\terror: cannot read image")
    assert lines[4].split("\t")[1] in CATS
    assert "2 of 5 inputs could not be classified" in result.stderr
    assert "Traceback" not in result.stderr


def test_json_lines_carry_every_top_k(photos: Path) -> None:
    result = run_edgeft("predict", str(MODEL), str(photos / "birds"), str(photos / "a_cat.bmp"), "--json",
                        "--top-k", "3", "--labels", str(LABELS))
    assert result.exit_code == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [Path(r["file"]).name for r in rows] == ["parrot.jpg", "a_cat.bmp"]
    assert all(len(r["top"]) == 3 for r in rows)
    assert rows[0]["top"][0][0] == "macaw" and rows[1]["top"][0][0] in CATS
    assert rows[0]["top"][0][1] >= rows[0]["top"][1][1] >= rows[0]["top"][2][1]


def test_without_labels_the_class_index_is_printed(photos: Path) -> None:
    result = run_edgeft("predict", str(MODEL), str(photos / "birds" / "parrot.jpg"))
    assert result.exit_code == 0
    assert result.stdout.split("\t")[1] == "89"  # macaw's index in the 1001 ImageNet outputs


@pytest.mark.parametrize("case", ["missing", "empty", "corrupt", "labels-folder", "no-images"])
def test_bad_model_and_arguments_are_one_line(case: str, tmp_path: Path, photos: Path) -> None:
    model, extra = str(MODEL), []
    if case == "missing":
        model = str(tmp_path / "nope.tflite")
    elif case == "empty":
        (tmp_path / "empty.tflite").write_bytes(b"")
        model = str(tmp_path / "empty.tflite")
    elif case == "corrupt":
        (tmp_path / "bad.tflite").write_bytes(MODEL.read_bytes()[:5000])
        model = str(tmp_path / "bad.tflite")
    elif case == "labels-folder":
        extra = ["--labels", str(tmp_path)]
    empty_dir = tmp_path / "nothing"
    empty_dir.mkdir()
    target = str(empty_dir) if case == "no-images" else str(photos / "a_cat.bmp")
    result = run_edgeft("predict", model, target, *extra)
    if case == "no-images":
        assert result.exit_code == 9 and "no image files" in result.stdout
        return
    assert result.exit_code == (10 if case in ("empty", "corrupt") else 2), (result.stdout, result.stderr)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr and result.stdout == ""


def test_predict_imports_no_tensorflow(photos: Path) -> None:
    code = ("import sys\nfrom edgeft.cli import main\n"
            f"try:\n    main(['predict', {str(MODEL)!r}, {str(photos)!r}])\nexcept SystemExit as e:\n    code = e.code\n"
            "print(code, sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'tf_keras')), "
            "file=sys.stderr)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stderr.strip().splitlines()[-1] == "9 []", out.stderr
