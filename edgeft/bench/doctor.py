"""``edgeft doctor --target T``: preflight on the device, with the exact command that fixes each problem."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

from edgeft import targets as device
from edgeft.bench.config import DoctorConfig
from edgeft.bench.device_app import APP_NAME, device_app
from edgeft.bench.profiles import Profile
from edgeft.bench.results import clean, shell_path
from edgeft.bench.targets import ResolvedTarget, resolve_target
from edgeft.errors import TargetError
from edgeft.progress import log


def device_facts(target: ResolvedTarget, timeout_s: float = 60.0, tmp_root: str = "/tmp") -> dict[str, Any]:
    """Push the device app and run its ``doctor`` mode (its temporary directory is always removed)."""
    transport = target.transport
    remote_dir, python = transport.prepare(tmp_root, target.python)
    try:
        transport.push({APP_NAME: device_app()}, remote_dir)
        out = transport.run([python, f"{remote_dir}/{APP_NAME}", "doctor"], timeout_s)
    finally:
        transport.remove(remote_dir)
    try:
        facts = clean(json.loads(out))  # the device's answer reaches the terminal: no control characters
        if not isinstance(facts, dict):
            raise ValueError("not an object")
    except ValueError:
        raise TargetError(f"target {target.name}: {python} did not run the device app: "
                          f"{out.strip()[-200:] or 'no output'} (is Python >= 3.9 installed?)") from None
    facts["python_command"] = python
    return facts


def install_command(profile: Profile | None, python_version: str) -> str:
    """The shell command that makes the runner's venv in the user's home and installs what it needs."""
    short = ".".join(python_version.split(".")[:2])
    pip = (profile.pip_line(python_version) if profile else None) or device.pip_line(short)
    venv = profile.venv if profile else "~/.edgeft/venv"
    args = shlex.split(pip)[1:]  # drop the leading "pip install"
    return (f'python3 -m venv {shell_path(venv)} && {shell_path(venv.rstrip("/") + "/bin/python")} -m pip install '
            + " ".join(shlex.quote(a) for a in args[1:] if args and args[0] == "install"))


def check(facts: dict[str, Any], profile: Profile | None, artifacts: tuple[Path, ...] = ()) -> list[dict[str, str]]:
    """Problems found, each {"problem", "fix"}; also warns when the runtime is older than a model needs."""
    problems: list[dict[str, str]] = []
    python = str(facts.get("python") or "0")
    fix = install_command(profile, python)
    version = tuple(int(p) for p in python.split(".")[:2] if p.isdigit())
    if version < (3, 9):
        problems.append({"problem": f"Python {python} is too old: the device app needs Python >= 3.9",
                         "fix": "install python3.9 or newer (e.g. Raspberry Pi OS Bullseye or Bookworm)"})
    if not facts.get("numpy"):
        problems.append({"problem": "numpy is not installed", "fix": fix})
    runtimes = facts.get("tflite_runtimes") or []
    wants_tflite = not artifacts or any(str(a).endswith(".tflite") for a in artifacts)
    if wants_tflite and not runtimes:
        problems.append({"problem": "no TFLite interpreter (ai-edge-litert, tflite-runtime or tensorflow)", "fix": fix})
    if any(str(a).endswith(".onnx") for a in artifacts) and not facts.get("onnxruntime"):
        problems.append({"problem": "onnxruntime is not installed (needed for .onnx models)", "fix": fix})
    wants_tpu = (profile is not None and profile.delegate == "edgetpu") or any(
        str(a).endswith("_edgetpu.tflite") for a in artifacts)
    if wants_tpu and not facts.get("edgetpu_library"):
        problems.append({"problem": "the Edge TPU delegate libedgetpu.so.1 is missing",
                         "fix": (profile.system_install if profile and profile.system_install else
                                 "sudo apt-get install libedgetpu1-std")})
    if runtimes:
        best = runtimes[0]
        for artifact in artifacts:
            needed = device.min_runtime_version(str(artifact))
            if device.runtime_too_old(best["name"], best["version"], needed):
                problems.append({"problem": f"{best['name']} {best['version']} is older than {Path(artifact).name} "
                                            f"needs (TFLite >= {needed}): it will refuse some of its ops",
                                 "fix": newer_runtime_fix(profile, python, needed)})
    return problems


def newer_runtime_fix(profile: Profile | None, python_version: str, needed: str | None) -> str:
    """The fix for a TFLite runtime older than a model needs.

    The pinned install when its version is new enough; when the newest runtime for this Python is
    itself too old (ai-edge-litert 2.1.0 is the last for Python 3.9), the fix is a newer OS.
    """
    short = ".".join(python_version.split(".")[:2])
    name, _, pinned = device.pins_for(short)["tflite"].partition("==")
    if not device.runtime_too_old(name, pinned, needed):
        return install_command(profile, python_version)
    newest_name, _, newest = device.PINS["default"]["tflite"].partition("==")
    if device.runtime_too_old(newest_name, newest, needed):
        return (f"no {newest_name} release edgeft pins runs TFLite {needed} models (the newest, {newest}, is "
                f"older): export the model with an older TensorFlow")
    return (f"{name} {pinned} is the newest for Python {short}: upgrade the device to Raspberry Pi OS Bookworm "
            f"(Python 3.11), then: {install_command(profile, '3.11')}")


def main_doctor(config: DoctorConfig) -> dict[str, Any]:
    """Preflight one target: facts, problems with fixes; ``--install`` runs the fix into a venv in the home."""
    target = resolve_target(config.target, config.ssh) if not str(config.target).endswith((".toml", ".json")) else None
    if target is None:
        raise TargetError("edgeft doctor checks one target: pass a profile, local, or user@host")
    if config.artifacts:  # a missing or damaged model is refused here, before the device is asked anything
        from edgeft.bench.checks import inspect_model
        from edgeft.bench.core import expand_artifacts, read_sidecar

        for artifact in expand_artifacts(config.artifacts):
            inspect_model(artifact, read_sidecar(artifact))
    facts = device_facts(target, tmp_root=config.ssh.remote_tmpdir)
    problems = check(facts, target.profile, config.artifacts)
    installed = None
    if config.install and problems:
        command = install_command(target.profile, str(facts.get("python")))
        log(f"doctor: installing on {target.name}: {command}")
        target.transport.run(["sh", "-c", command], 1800.0)
        facts = device_facts(ResolvedTarget(target.name, target.transport, target.profile, None),
                             tmp_root=config.ssh.remote_tmpdir)
        problems = check(facts, target.profile, config.artifacts)
        installed = command
    return {"target": target.name, "facts": facts, "problems": problems, "ok": not problems, "installed": installed}
