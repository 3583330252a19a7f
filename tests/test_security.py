"""Inputs from someone else, each attack reproduced against local files and refused with one line.

Run directories and model files (code in a model), fleet files and profiles (ssh options, paths),
the device's answers (result documents), output folders (planted symlinks).
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from edgeft.cli import main


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """Run the CLI in-process; return (exit code, the single ``error:`` line)."""
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    return int(exit_info.value.code or 0), lines[0]


# ----------------------------------------------------------------------------- 1. code in a run directory
def _tiny_run(root: Path, model_file: Path) -> Path:
    """A complete run directory (manifest, labels, 4 real images) around ``model_file``."""
    from PIL import Image

    data = root / "data"
    samples = {"train": [], "val": []}
    for label, name in enumerate(("a", "b")):
        for split in ("train", "val"):
            folder = data / split / name
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / "0.png"
            Image.fromarray(np.full((32, 32, 3), 60 + 120 * label, np.uint8)).save(path)
            samples[split].append({"path": str(path.relative_to(data)), "label": label})
    run = root / "run"
    run.mkdir()
    model_file.replace(run / "model.keras")
    (run / "labels.txt").write_text("a\nb\n")
    (run / "metrics.json").write_text('{"val_accuracy": 0.5}')
    manifest = {"manifest_version": 1, "kind": "float", "backbone": "mobilenet_v2", "alpha": 0.35,
                "image_size": 32, "preprocessing": {"scale": [1 / 127.5] * 3, "offset": [-1.0] * 3,
                                                    "channel_order": "RGB"},
                "class_names": ["a", "b"], "strategy": "head", "weights": "none", "hyperparameters": {},
                "seed": 0, "data_dir": str(data), "dataset": {}, "splits": samples, "versions": {}}
    (run / "edgeft.json").write_text(json.dumps(manifest))
    return run


def _tiny_model(function: object | None = None) -> object:
    from edgeft.tfcompat import keras

    k = keras()
    inputs = k.Input((32, 32, 3), name="image")
    x = k.layers.Lambda(function, name="payload")(inputs) if function is not None else inputs
    x = k.layers.GlobalAveragePooling2D()(x)
    return k.Model(inputs, k.layers.Dense(2, activation="softmax", name="predictions")(x))


@pytest.mark.slow  # about 20 s: three commands, export's model load in its own child process
def test_hdf5_model_with_code_renamed_model_keras_is_refused_by_evaluate_export_qat(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "pwned"
    payload = eval(f"lambda x: (__import__('pathlib').Path({str(marker)!r}).touch(), x)[1]")  # noqa: S307
    h5 = tmp_path / "evil.h5"
    _tiny_model(payload).save(h5, save_format="h5")
    marker.unlink(missing_ok=True)  # building the model called the Lambda once
    run = _tiny_run(tmp_path, h5)
    for command in (["evaluate", str(run)], ["export", str(run), "--formats", "tflite", "--out", str(tmp_path / "x")],
                    ["qat", str(run), "--out", str(tmp_path / "q")]):
        code, line = _cli(capsys, *command)
        assert (code, line) == (2, f"error: refusing {run / 'model.keras'}: it contains a Lambda layer (Python code "
                                   "that would run on load); edgeft never writes one, so this run directory was "
                                   "not made by edgeft"), command
        assert not marker.exists(), command
    # the attack is real: Keras itself runs the code from this file, safe_mode or not
    from edgeft.tfcompat import keras

    keras().models.load_model(run / "model.keras", compile=False, safe_mode=True)
    assert marker.exists()


def test_model_file_that_is_no_keras_format_or_names_a_module_is_refused(tmp_path: Path) -> None:
    from edgeft.errors import ModelFileError
    from edgeft.tfcompat import load_keras_model

    pickle_file = tmp_path / "model.keras"
    pickle_file.write_bytes(b"\x80\x04\x95 a pickle, or a SavedModel, is not a Keras model file")
    with pytest.raises(ModelFileError, match="neither a Keras v3 archive .zip with config.json and metadata.json."):
        load_keras_model(pickle_file)
    good = tmp_path / "good.keras"
    _tiny_model().save(good)
    assert load_keras_model(good).output_shape == (None, 2)  # a plain Keras v3 file loads
    config = json.loads(zipfile.ZipFile(good).read("config.json"))
    config["config"]["layers"][1]["module"] = "os"
    config["config"]["layers"][1]["registered_name"] = "system"
    evil = tmp_path / "evil.keras"
    with zipfile.ZipFile(good) as source, zipfile.ZipFile(evil, "w") as target:
        for name in source.namelist():
            target.writestr(name, json.dumps(config) if name == "config.json" else source.read(name))
    with pytest.raises(ModelFileError, match="it names Python module 'os' .class 'GlobalAveragePooling2D'."):
        load_keras_model(evil)


# ----------------------------------------------------------------------------- bench: helpers
SHARED = Path(__file__).resolve().parents[1].parent / "shared"
MODEL = SHARED / "models" / "tf2_mobilenet_v2_1.0_224_ptq.tflite"
needs_model = pytest.mark.skipif(not MODEL.is_file(), reason="../shared/models is absent (a user's checkout)")


def _edgeft(*args: str, timeout: float = 180) -> tuple[int, str, str]:
    """Run edgeft in a child process; return (exit code, the single ``error:`` line or "", stderr)."""
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "edgeft", *args], capture_output=True, text=True, timeout=timeout)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) <= 1, result.stderr
    return result.returncode, errors[0] if errors else "", result.stderr


def _ssh_args(config: Path, device: Path, python: bool = True) -> list[str]:
    import sys

    return ["--ssh-config", str(config), "--remote-tmpdir", str(device)] + (
        ["--python", sys.executable] if python else [])


def _ssh_version() -> tuple[int, int]:
    import re
    import subprocess

    text = subprocess.run(["ssh", "-V"], capture_output=True, text=True).stderr
    match = re.search(r"OpenSSH_(\d+)\.(\d+)", text)
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)


def _dummy_model(folder: Path) -> Path:
    """A model file name for commands that stop before reading it."""
    path = folder / "m.tflite"
    path.write_bytes(b"TFL3")
    return path


# ----------------------------------------------------------------------------- 2. ssh option injection
def test_host_read_as_an_ssh_option_is_refused_from_command_line_fleet_and_profile(tmp_path: Path) -> None:
    import shutil
    import subprocess

    from edgeft.bench.config import SshOptions
    from edgeft.bench.transport import SshTransport
    from edgeft.errors import TargetError

    if shutil.which("ssh") is None:
        pytest.skip("no ssh client")
    marker = tmp_path / "proxy-ran"
    evil_host = f"-oProxyCommand=touch {marker}"
    # the attack: what edgeft ran before (`ssh [options] HOST -- CMD`); OpenSSH < 9.6 runs the command
    subprocess.run(["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=2", evil_host, "--", "true"],
                   capture_output=True, timeout=30)
    if _ssh_version() < (9, 6):
        assert marker.exists()
        marker.unlink()
    version = subprocess.run(["ssh", "-l", "pi", "-V", "--", "true"], capture_output=True, text=True, timeout=30)
    assert "OpenSSH" in version.stderr  # `--target pi@-V` made ssh print its version

    code, line, _ = _edgeft("bench", str(_dummy_model(tmp_path)), "--target", "pi@-V", "--out", str(tmp_path / "b"))
    assert (code, line) == (7, "error: bad target 'pi@-V': the host '-V' starts with '-' or holds spaces or control "
                               "characters (ssh would read it as an option)")
    fleet = tmp_path / "fleet.toml"
    fleet.write_text(f'[[target]]\nname = "pi"\nhost = "{evil_host}"\n')
    code, line, _ = _edgeft("bench", str(_dummy_model(tmp_path)), "--target", str(fleet), "--out", str(tmp_path / "b"))
    # long values are shortened in the message (a deep temporary path makes this one long)
    assert code == 7 and line.startswith(f"error: bad target '{evil_host[:20]}") and "' starts with '-'" in line
    fleet.write_text('[[target]]\nname = "pi"\nhost = "raspberrypi"\nuser = "-oProxyCommand=x"\n')
    code, line, _ = _edgeft("bench", str(_dummy_model(tmp_path)), "--target", str(fleet), "--out", str(tmp_path / "b"))
    assert code == 7 and "the user '-oProxyCommand=x' starts with '-'" in line
    assert not marker.exists()
    # a profile's connection.host reaches the same check
    from edgeft.bench.profiles import load_profile_file

    profile_file = tmp_path / "evil.toml"
    profile_file.write_text(f'name = "evil"\n[connection]\nhost = "{evil_host}"\n')
    profile = load_profile_file(profile_file)
    with pytest.raises(TargetError, match="the host '-oProxyCommand=.*' starts with '-'"):
        SshTransport(profile.host, SshOptions(), name=profile.name, user=profile.user)
    # and the host always follows "--", for the command and for `ssh -G`
    assert SshTransport("pi@raspberrypi", SshOptions()).ssh_base()[-2:] == ["--", "raspberrypi"]


# ----------------------------------------------------------------------------- 3. profile names are not paths
def test_profile_given_as_a_path_is_refused(tmp_path: Path) -> None:
    evil = tmp_path / "elsewhere" / "evil.toml"
    evil.parent.mkdir()
    evil.write_text('name = "evil"\nkind = "local"\n[connection]\npython = "/bin/false"\n')
    code, line, _ = _edgeft("doctor", "--target", str(evil.with_suffix("")))
    assert (code, line) == (7, f"error: bad target '{evil.with_suffix('')}': expected local, a profile name, "
                               "or [user@]host[:port]")
    fleet = tmp_path / "fleet" / "fleet.toml"
    fleet.parent.mkdir()
    fleet.write_text('[[target]]\nname = "x"\nprofile = "../elsewhere/evil"\n')
    code, line, _ = _edgeft("bench", str(_dummy_model(tmp_path)), "--target", str(fleet), "--out", str(tmp_path / "b"))
    assert (code, line) == (7, "error: bad profile name '../elsewhere/evil': a profile is named by letters, digits, "
                               "'-' and '_' (see `edgeft targets`), never by a path")
    from edgeft.bench.profiles import get_profile

    assert get_profile("rpi4") is not None and get_profile("../targets/rpi4") is None


# ----------------------------------------------------------------------------- 4. doctor --install quoting
def test_install_command_keeps_a_profile_venv_with_quotes_inside_its_quotes(tmp_path: Path) -> None:
    import dataclasses
    import os
    import subprocess

    from edgeft.bench.doctor import install_command
    from edgeft.bench.profiles import get_profile

    marker = tmp_path / "injected"
    venv = f'~/venvs/a"; touch {marker}; echo "'
    profile = dataclasses.replace(get_profile("rpi4"), venv=venv)
    command = install_command(profile, "3.11.2")
    # the attack: the old command line, `python3 -m venv "$HOME/..."`, ran the injected `touch`
    old = f'python3 -m venv "{venv.replace("~", "$HOME", 1)}" && true'
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "python3").write_text("#!/bin/sh\nprintf '%s\\n' \"$@\" > \"$ARGS_FILE\"\n")
    (fake_bin / "python3").chmod(0o755)
    env = dict(os.environ, PATH=f"{fake_bin}:{os.environ['PATH']}", HOME=str(tmp_path / "home"),
               ARGS_FILE=str(tmp_path / "args"))
    subprocess.run(["sh", "-c", old], env=env, capture_output=True, timeout=30)
    assert marker.exists()
    marker.unlink()
    subprocess.run(["sh", "-c", command], env=env, capture_output=True, timeout=30)
    assert not marker.exists()
    assert (tmp_path / "args").read_text().splitlines() == ["-m", "venv", f"{tmp_path / 'home'}/venvs/a\"; touch "
                                                            f"{marker}; echo \""]
    assert command.startswith("python3 -m venv \"$HOME\"/'venvs/a\"; touch ")


# ----------------------------------------------------------------------------- 5. the device's temp directory
def test_prepare_output_is_read_by_label_and_checked() -> None:
    from edgeft.bench.transport import parse_prepare_output
    from edgeft.errors import TargetError

    banner = "Welcome to Raspberry Pi OS\nlast login: today\n"
    output = banner + "edgeft-dir=/tmp/a b/edgeft-bench.Ab12Cd34\nedgeft-python=/opt/my py/bin/python\n"
    assert parse_prepare_output("pi", output, "/tmp/a b") == ("/tmp/a b/edgeft-bench.Ab12Cd34", "/opt/my py/bin/python")
    with pytest.raises(TargetError) as caught:
        parse_prepare_output("pi", "edgeft-dir=/tmp/edgeft-bench.keep\nedgeft-python=python3\n", "/tmp")
    assert caught.value.message == ("target pi: the device did not report a temporary directory under /tmp "
                                    "(got '/tmp/edgeft-bench.keep')")
    from edgeft.bench.transport import _check_tmp_root

    assert _check_tmp_root("pi", "/tmp/a b/") == "/tmp/a b"
    for bad in ("-x", "/tmp/a\nb"):
        with pytest.raises(TargetError, match="bad --remote-tmpdir .*: give a directory path that does not start "
                                              "with '-', without control characters"):
            _check_tmp_root("pi", bad)


@needs_model
def test_space_in_remote_tmpdir_neither_fills_nor_deletes_a_sibling_directory(tmp_path: Path) -> None:
    from sshd import ALIAS, start_sshd

    server = start_sshd(tmp_path / "sshd")
    try:
        device = tmp_path / "device"
        sibling = device / "edgeft-bench.keep"  # what "…/edgeft-bench.keep x/…" split on whitespace pointed at
        sibling.mkdir(parents=True)
        (sibling / "precious.txt").write_text("keep me")
        root = device / "edgeft-bench.keep x"
        code, line, stderr = _edgeft("bench", str(MODEL), "--target", ALIAS, "--runs", "2", "--warmup", "0",
                                     "--threads", "1", *_ssh_args(server.client_config(), root),
                                     "--out", str(tmp_path / "b"))
        assert sibling.is_dir() and sorted(p.name for p in sibling.iterdir()) == ["precious.txt"]
        assert code == 0, stderr
        assert list(root.iterdir()) == []
        report = json.loads((tmp_path / "b" / "bench.json").read_text())
        assert report["rows"][0]["p50_ms"] > 0
    finally:
        server.proc.terminate()
        server.proc.wait(timeout=10)


# ----------------------------------------------------------------------------- 6. symlinks planted in --out
def test_planted_symlinks_in_the_output_folder_are_never_written_through(tmp_path: Path) -> None:
    import os

    from edgeft.bench.config import BenchConfig
    from edgeft.bench.report import write_reports
    from edgeft.bench.targets import ResolvedTarget
    from edgeft.bench.transport import LocalTransport
    from edgeft.fileio import write_json_atomic

    out = tmp_path / "bench"
    out.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    dangling = tmp_path / "created-through-a-link"
    # the old fixed temporary names, and a symlink at a final name
    (out / ".bench_latency_accuracy.partial.png").symlink_to(victim)
    (out / f".bench.partial-{os.getpid()}.json").symlink_to(dangling)
    (out / "bench.csv").symlink_to(victim)
    row = {"artifact": "m.tflite", "target": "local", "threads": 1, "p50_ms": 1.0, "accuracy": 0.5}
    config = BenchConfig(artifacts=(), targets=("local",), out_dir=out)
    write_reports(config, [row], [ResolvedTarget("local", LocalTransport(), None, None)], {}, {}, [], 0.0)
    write_json_atomic(out / "bench.json", {"again": True})
    assert victim.read_text() == "precious" and not dangling.exists()
    assert not (out / "bench.csv").is_symlink() and (out / "bench.csv").read_text().startswith("artifact,")
    assert (out / "bench_latency_accuracy.png").read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in out.iterdir() if ".partial" in p.name) == [
        ".bench.partial-%d.json" % os.getpid(), ".bench_latency_accuracy.partial.png"]  # the planted links only
    assert oct((out / "bench.md").stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask() -> int:
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask


# ----------------------------------------------------------------------------- 7. results from a device
def _fake_runner(folder: Path, name: str, payload: str) -> Path:
    """A "python" for the device that prints ``payload`` whatever it is asked to run."""
    script = folder / f"{name}.sh"
    data = folder / f"{name}.out"
    data.write_text(payload)
    script.write_text(f"#!/bin/sh\ncat '{data}'\n")
    script.chmod(0o755)
    return script


@needs_model
def test_bad_device_results_fail_their_target_only_and_are_cleaned(tmp_path: Path) -> None:
    import csv
    import io

    from sshd import ALIAS, start_sshd

    model = tmp_path / "m$\\frac{$.tflite"  # mathtext that crashed matplotlib after bench.json was written
    model.symlink_to(MODEL)
    row = {"artifact": model.name, "threads": 1, "p50_ms": 2.5, "mean_ms": 2.5, "accuracy": None,
           "runtime": "\x1b]0;owned\x07ai-edge-litert\x1b[2J", "error": '=HYPERLINK("http://evil","x")'}
    fakes = {"list": "[]", "number": "5", "rows": '{"rows": [7]}',
             "foreign": json.dumps({"rows": [dict(row, artifact="../../etc/passwd")]}),
             "escapes": json.dumps({"rows": [row], "device": {"warnings": ["\x1b[31mred\x1b[0m"]}}),
             "huge": "[" + " " * (17 << 20) + "]"}
    server = start_sshd(tmp_path / "sshd")
    try:
        fleet = tmp_path / "fleet.toml"
        fleet.write_text('[[target]]\nname = "local"\nprofile = "local"\n' + "".join(
            f'[[target]]\nname = "{name}"\nhost = "{ALIAS}"\npython = "{_fake_runner(tmp_path, name, text)}"\n'
            for name, text in fakes.items()))
        out = tmp_path / "b"
        code, line, stderr = _edgeft("bench", str(model), "--target", str(fleet), "--runs", "2", "--warmup", "0",
                                     "--threads", "1", *_ssh_args(server.client_config(), tmp_path / "device",
                                                                  python=False), "--out", str(out))
    finally:
        server.proc.terminate()
        server.proc.wait(timeout=10)
    assert code == 7 and "Traceback" not in stderr and "\x1b" not in stderr and "\x07" not in stderr
    assert line.startswith("error: target list: the device's result is not a JSON object but list (+5 more failure(s))")
    report = json.loads((out / "bench.json").read_text())
    assert report["errors"] == {
        "list": "target list: the device's result is not a JSON object but list",
        "number": "target number: the device's result is not a JSON object but int",
        "rows": "target rows: row 1 of the device's result is not an object",
        "foreign": "target foreign: row 1 of the device's result names an artifact that was not sent: "
                   "'../../etc/passwd'",
        "huge": "target huge (run): the device sent more than 16 MiB of output; stopped reading it",
    }
    rows = {r["target"]: r for r in report["rows"]}
    assert rows["local"]["p50_ms"] > 0 and rows["local"]["error"] is None  # the healthy target is reported
    assert rows["escapes"]["runtime"] == "]0;ownedai-edge-litert[2J"
    assert report["warnings"][-1] == "escapes: [31mred[0m"
    cells = {r["target"]: r for r in csv.DictReader(io.StringIO((out / "bench.csv").read_text()))}
    assert cells["escapes"]["error"] == "'=HYPERLINK(\"http://evil\",\"x\")"
    assert (out / "bench_latency_accuracy.png").stat().st_size > 0
    assert list((tmp_path / "device").glob("edgeft-bench.*")) == []


# ----------------------------------------------------------------------------- 8. symlinked models
@needs_model
def test_a_symlinked_model_is_staged_as_its_file_on_local_and_ssh_targets(tmp_path: Path) -> None:
    from sshd import ALIAS, start_sshd

    store = tmp_path / "store"
    store.mkdir()
    (store / "x.tflite").symlink_to(MODEL)
    export = tmp_path / "export"
    export.mkdir()
    (export / "model_int8.tflite").symlink_to("../store/x.tflite")
    server = start_sshd(tmp_path / "sshd")
    try:
        code, line, stderr = _edgeft("bench", str(export), "--target", ALIAS, "--target", "local", "--runs", "2",
                                     "--warmup", "0", "--threads", "1",
                                     *_ssh_args(server.client_config(), tmp_path / "device"),
                                     "--out", str(tmp_path / "b"))
    finally:
        server.proc.terminate()
        server.proc.wait(timeout=10)
    assert code == 0, stderr
    rows = json.loads((tmp_path / "b" / "bench.json").read_text())["rows"]
    assert sorted(r["target"] for r in rows) == sorted([ALIAS, "local"])
    assert all(r["error"] is None and r["p50_ms"] > 0 and r["model_size_bytes"] == MODEL.stat().st_size
               for r in rows)
