"""The CLI surface: instant help without TensorFlow, option errors as one line and an exit code."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import run_edgeft, write_shapes


def test_help_does_not_import_tensorflow() -> None:
    code = (
        "import sys\n"
        "from edgeft.cli import cli\n"
        "try:\n    cli.main(['--help'], prog_name='edgeft', standalone_mode=False)\nexcept SystemExit:\n    pass\n"
        "for name in sorted(cli.commands):\n"
        "    try:\n        cli.main([name, '--help'], prog_name='edgeft', standalone_mode=False)\n"
        "    except SystemExit:\n        pass\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'tf_keras', 'keras', 'onnx', 'onnxruntime'))\n"
        "print('HEAVY', heavy)\n"
    )
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "Usage: edgeft" in output
    assert "HEAVY []" in output
    assert "Usage: edgeft finetune" in output


@pytest.mark.parametrize(
    "args,message",
    [
        (["--backbone", "vgg99"], "error: unknown backbone 'vgg99'; choose one of: mobilenet_v2,"),
        (["--alpha", "0.6"], "error: --alpha 0.6 is not available for mobilenet_v2; choose one of"),
        (["--weights", "none", "--strategy", "head"], "error: --strategy head needs pretrained weights"),
        (["--weights", "/nonexistent/w.h5"], "error: --weights must be imagenet, none, or an existing .h5 file"),
        (["--strategy", "head", "--unfreeze", "2"], "error: --unfreeze applies to --strategy partial only"),
        (["--resume", "--force"], "error: --resume and --force contradict each other"),
        (["--backbone", "efficientnet_b0", "--alpha", "0.5"], "error: --alpha applies to MobileNet backbones only"),
    ],
)
def test_option_errors(tmp_path: Path, args: list[str], message: str) -> None:
    data = write_shapes(tmp_path / "data", per_class=2)
    result = run_edgeft("finetune", str(data), *args, "--out", str(tmp_path / "run"))
    assert result.exit_code == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), lines
    assert not (tmp_path / "run").exists()


def test_offline_imagenet_weights_error_names_the_file(tmp_path: Path) -> None:
    data = write_shapes(tmp_path / "data", per_class=2)
    keras_home = tmp_path / "keras"
    result = run_edgeft(
        "finetune", str(data), "--alpha", "0.35", "--image-size", "96", "--out", str(tmp_path / "run"),
        env={"KERAS_HOME": str(keras_home), "EDGEFT_OFFLINE": "1"},
    )
    assert result.exit_code == 3
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("error: ImageNet weights mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_96_no_top.h5 "
                           "not found locally and EDGEFT_OFFLINE is set, so no download was tried; put the file in "
                           + str(keras_home / "models"))


def test_evaluate_missing_run_dir(tmp_path: Path) -> None:
    result = run_edgeft("evaluate", str(tmp_path / "nothing"))
    assert result.exit_code == 2
    assert result.stderr.strip().startswith(f"error: run directory not found: {tmp_path / 'nothing'}")


def test_backbones_lists_registry_as_json() -> None:
    import json

    result = run_edgeft("backbones", "--json")
    names = [row["name"] for row in json.loads(result.stdout)]
    assert {"mobilenet_v2", "efficientnet_b0", "mobilenet_v3_small", "resnet50_v2"} <= set(names)
