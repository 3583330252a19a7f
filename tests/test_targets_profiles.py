"""Target profiles (targets/*.toml), `edgeft targets`, and the runner shipped inside the wheel."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_profiles_exist_with_threads_and_pip_lines_per_python():
    from edgeft.bench.profiles import PROFILE_NAMES, get_profile, list_profiles

    assert {p.name for p in list_profiles()} >= set(PROFILE_NAMES)
    rpi4 = get_profile("rpi4")
    assert rpi4.kind == "ssh" and rpi4.host and rpi4.threads == (1, 2, 4)
    assert "ai-edge-litert==2.1.0" in rpi4.pip_line("3.9.2") and "onnxruntime==1.19.2" in rpi4.pip_line("3.9.2")
    assert "ai-edge-litert==2.3.0" in rpi4.pip_line("3.11.2") and "onnxruntime==1.32.0" in rpi4.pip_line("3.11.2")
    assert get_profile("coral-usb").delegate == "edgetpu"
    assert get_profile("local").kind == "local"


def test_edgeft_targets_lists_them():
    out = subprocess.run([sys.executable, "-m", "edgeft", "targets", "--json"], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert {"local", "rpi4", "rpi5", "coral-usb", "coral-devboard"} <= {row["name"] for row in json.loads(out.stdout)}


def test_install_command_goes_into_a_home_venv():
    from edgeft.bench.doctor import install_command
    from edgeft.bench.profiles import get_profile

    command = install_command(get_profile("rpi4"), "3.9.2")
    assert command.startswith('python3 -m venv "$HOME"/.edgeft/venv && "$HOME"/.edgeft/venv/bin/python -m pip') \
        and "sudo" not in command
    assert "ai-edge-litert==2.1.0" in command


def test_doctor_flags_missing_runtime_and_old_runtime():
    from edgeft.bench.doctor import check

    problems = check({"python": "3.9.2", "numpy": None, "tflite_runtimes": []}, None)
    assert any("numpy" in p["problem"] for p in problems)
    assert any("TFLite interpreter" in p["problem"] and "pip install" in p["fix"] for p in problems)


def test_wheel_ships_runner_and_profiles_and_bench_finds_them(tmp_path):
    if shutil.which("git") is None:
        pytest.skip("git is needed to copy the source tree")
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        if (ROOT / name).exists():
            shutil.copy(ROOT / name, source / name)
        else:
            (source / name).write_text("edgeft\n")
    shutil.copytree(ROOT / "edgeft", source / "edgeft", symlinks=True,
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "targets", source / "targets", ignore=shutil.ignore_patterns("__pycache__"))
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(tmp_path / "dist"), str(source)], capture_output=True, text=True, timeout=180)
    assert build.returncode == 0, build.stderr[-2000:]
    wheel = next((tmp_path / "dist").glob("edgeft-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for needed in ("edgeft/targets/__main__.py", "edgeft/targets/backends/tflite.py", "edgeft/targets/rpi4.toml",
                   "edgeft/targets/coral-usb.toml"):
        assert needed in names
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, timeout=120, capture_output=True)
    env = dict(os.environ, PYTHONPATH=str(target))
    code = ("import sys; sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in type(f).__module__]; "
            "from edgeft.bench.profiles import targets_dir, list_targets; print(targets_dir()); "
            "print(len(list_targets()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60,
                         cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    path, count = out.stdout.split()
    assert Path(path).resolve().is_relative_to(target.resolve()) and int(count) >= 5
