"""The GPU-present-but-unused warning, with the driver's files and nvidia-smi stood in (no GPU here)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from edgeft.training.devices import host_gpus, gpu_warning

_DRIVER = "NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.14  Thu Feb 22 01:44:30 UTC 2024\n"


def _fake_nvidia_smi(folder: Path) -> str:
    script = folder / "nvidia-smi"
    script.write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-1234)'\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return str(script)


def test_stand_in_gpu_unused_by_tensorflow_is_named_with_the_fix(tmp_path: Path) -> None:
    (tmp_path / "version").write_text(_DRIVER)
    host = host_gpus(tmp_path / "version", _fake_nvidia_smi(tmp_path))
    assert host.names == ("GPU 0: NVIDIA H100 80GB HBM3",) and host.driver == "550.54.14"
    cpu_build = gpu_warning(host, tensorflow_gpus=0, built_with_cuda=False)
    assert cpu_build is not None and "NVIDIA H100" in cpu_build and "no CUDA support" in cpu_build
    assert "edgeft[gpu]" in cpu_build and "\n" not in cpu_build
    mismatch = gpu_warning(host, tensorflow_gpus=0, built_with_cuda=True)
    assert mismatch is not None and "cannot use it" in mismatch
    assert gpu_warning(host, tensorflow_gpus=1, built_with_cuda=True) is None


def test_no_gpu_no_warning(tmp_path: Path) -> None:
    host = host_gpus(tmp_path / "absent", nvidia_smi=None)
    assert host.names == () and gpu_warning(host, 0, False) is None


def test_driver_without_nvidia_smi_still_counts(tmp_path: Path) -> None:
    (tmp_path / "version").write_text(_DRIVER)
    host = host_gpus(tmp_path / "version", nvidia_smi=str(tmp_path / "missing"))
    assert host.names == ("an NVIDIA GPU",)
    assert "an NVIDIA GPU (driver 550.54.14)" in (gpu_warning(host, 0, True) or "")


def test_finetune_names_its_devices_and_warns_once_about_an_unused_gpu(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """The stand-in nvidia-smi on PATH: TensorFlow here sees no GPU, so finetune's set-up warns, once."""
    from edgeft.training.config import FinetuneConfig
    from edgeft.training.finetune import _setup_tensorflow

    _fake_nvidia_smi(tmp_path)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ.get('PATH', '')}")
    config = FinetuneConfig.from_options(data_dir=tmp_path, out_dir=tmp_path / "run", weights="none",
                                         alpha=0.35, image_size=32)
    _setup_tensorflow(config)
    lines = capsys.readouterr().err.splitlines()
    assert "devices: CPU only" in lines
    warnings = [line for line in lines if "NVIDIA H100" in line]
    assert len(warnings) == 1 and warnings[0].startswith("warning: GPU 0: NVIDIA H100 80GB HBM3")
    assert "edgeft[gpu]" in warnings[0]
