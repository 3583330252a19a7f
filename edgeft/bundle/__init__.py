"""``edgeft bundle``: one folder to copy to a device, with the model, the device layer and an example app.

APP_DIR holds the chosen artifact and its sidecar, ``edgeft-device.pyz`` (the device layer as one
file: no edgeft install on the device), ``requirements.txt`` pinned per the target's Python
versions (the pins of :data:`edgeft.targets.PINS`), ``app.py`` (folder, files or camera; JSON
lines), ``edgeft-app.service`` (systemd), ``README.md`` and ``bundle.json``. The folder is built
under a temporary name and renamed when complete.

Which artifact: ``--artifact NAME`` or a model file given directly; ``--from-bench BENCH_DIR``:
the one ``edgeft bench`` recommended for the target; else the one for the target's runtime
(``model_int8_edgetpu.tflite`` for an Edge TPU target, ``model_int8.tflite`` otherwise).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from importlib import resources
from pathlib import Path
from typing import Any

from edgeft.errors import TargetError, UsageError

APP_FILES = ("app.py", "edgeft-app.service", "README.md")
# Pillow is not one of the interpreter pins: the newest release for each device Python.
PILLOW_PINS = {"3.9": "pillow==11.3.0", "default": "pillow==12.0.0"}


def _profile(name: str) -> Any:
    from edgeft.bench.profiles import PROFILE_NAMES, get_profile

    profile = get_profile(name)
    if profile is None:
        from edgeft.bench.profiles import list_profiles

        known = sorted({p.name for p in list_profiles()} | set(PROFILE_NAMES))
        raise TargetError(f"unknown target profile '{name}'; choose one of: {', '.join(known)}")
    return profile


def default_artifact(profile: Any) -> str:
    """The artifact a target's runtime runs best: the Edge TPU model for a Coral, int8 TFLite otherwise."""
    return "model_int8_edgetpu.tflite" if profile.delegate == "edgetpu" else "model_int8.tflite"


def _export_hint(name: str) -> str:
    if name.endswith("_edgetpu.tflite"):
        return "edgeft export RUN_DIR --formats tflite,edgetpu --int8 (on a host with edgetpu_compiler)"
    if name.endswith(".onnx"):
        return "edgeft export RUN_DIR --formats onnx" + (" --int8" if "int8" in name else "")
    return "edgeft export RUN_DIR --formats tflite" + (" --int8" if "int8" in name else "")


def choose_artifact(source: Path, profile: Any, artifact: str | None, from_bench: Path | None) -> Path:
    """The model file to ship (see the module doc), or a one-line error saying what to export."""
    from edgeft.targets import known_suffixes

    if source.is_file():
        if artifact:
            raise UsageError("--artifact picks a file in an export folder; SOURCE is already a model file")
        if not any(source.name.endswith(s) for s in known_suffixes()):
            raise UsageError(f"{source} is not a model file ({', '.join(known_suffixes())})")
        return source
    if not source.is_dir():
        raise UsageError(f"no such export folder or model file: {source}")
    if from_bench is not None:
        if artifact:
            raise UsageError("give --artifact or --from-bench, not both")
        from edgeft.bench.recommend import recommended_artifact

        chosen = recommended_artifact(from_bench, profile.name)
        path = Path(chosen["artifact_path"])
        candidate = source / path.name
        if candidate.is_file():
            return candidate
        if path.is_file():
            return path
        raise UsageError(f"the bench recommends {path.name} for {profile.name}, but it is not in {source}")
    name = artifact or default_artifact(profile)
    path = source / name
    if not path.is_file():
        how = "" if artifact else f" (what {profile.name} runs best)"
        raise UsageError(f"{source} has no {name}{how}; export it with: {_export_hint(name)}, "
                         "or choose another file with --artifact NAME")
    return path


def _python_versions(profile: Any) -> list[str]:
    versions = sorted(profile.install, key=lambda v: tuple(int(p) for p in v.split(".") if p.isdigit()))
    return versions or ["default"]


def requirements(profile: Any, model_name: str) -> str:
    """``requirements.txt``: numpy, Pillow and the model's interpreter, pinned per device Python (markers)."""
    from edgeft.targets import backend_for, pins_for

    kind = backend_for(model_name)
    lines = [f"# {model_name} on {profile.name}: pip install -r requirements.txt",
             "# one pinned set per device Python (the versions `edgeft targets` and `edgeft doctor` quote)"]
    versions = _python_versions(profile)
    for i, version in enumerate(versions):
        pins = pins_for(version)
        pillow = PILLOW_PINS.get(version, PILLOW_PINS["default"])
        if len(versions) == 1:
            marker = ""
        elif i == len(versions) - 1:
            marker = f'; python_version > "{versions[i - 1]}"'
        else:
            marker = f'; python_version == "{version}"'
        lines.append(f"# Python {version}" + (" and newer" if " > " in marker else ""))
        lines += [f"{pins['numpy']}{marker}", f"{pillow}{marker}", f"{pins[kind]}{marker}"]
    return "\n".join(lines) + "\n"


def _model_note(model: Path, labels: Path | None) -> str:
    from edgeft.targets import sidecar_path

    if Path(sidecar_path(str(model))).is_file():
        return f"(labels and preprocessing embedded; `{model.name}.json` is the same as a sidecar)"
    return "(labels in `labels.txt`)" if labels is not None else "(no labels: classes print as numbers)"


def _template(name: str) -> str:
    return resources.files("edgeft.bundle").joinpath("templates", name).read_text("utf-8")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def build_bundle(source: Path, target: str, out: Path, artifact: str | None = None,
                 from_bench: Path | None = None, labels: Path | None = None) -> dict[str, Any]:
    """Write APP_DIR ``out`` for ``target``; return what ``bundle.json`` records."""
    from edgeft import __version__
    from edgeft.bench.device_app import device_app
    from edgeft.targets import sidecar_path

    profile = _profile(target)
    source, out = Path(source), Path(out)
    model = choose_artifact(source, profile, artifact, from_bench)
    if labels is not None and not Path(labels).is_file():
        raise UsageError(f"--labels must be a text file with one label per line: {labels}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(f"{out} already exists and is not empty; choose a new folder for the app")
    out.parent.mkdir(parents=True, exist_ok=True)
    app_dir = f"/home/{profile.user or 'pi'}/{out.name}"
    fields = {"@MODEL@": model.name, "@TARGET@": profile.name, "@DESCRIPTION@": profile.description,
              "@BUNDLE_NAME@": out.name, "@APP_DIR@": app_dir, "@USER@": profile.user or "pi",
              "@HOST@": profile.host or "DEVICE",
              "@SYSTEM@": f"    {profile.system_install}\n" if profile.system_install else "",
              "@MODEL_NOTE@": _model_note(model, labels)}
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        shutil.copyfile(model, work / model.name)
        sidecar = Path(sidecar_path(str(model)))
        if sidecar.is_file():
            shutil.copyfile(sidecar, work / sidecar.name)
        if labels is not None:
            shutil.copyfile(labels, work / "labels.txt")
        shutil.copyfile(device_app(), work / "edgeft-device.pyz")
        (work / "requirements.txt").write_text(requirements(profile, model.name), "utf-8")
        for name in APP_FILES:
            text = _template(name)
            for key, value in fields.items():
                text = text.replace(key, value)
            (work / name).write_text(text, "utf-8")
        os.chmod(work / "app.py", 0o755)
        record = {"schema": "edgeft.bundle/1", "target": profile.name, "artifact": model.name,
                  "source": str(model.resolve()), "sha256": _sha256(work / model.name),
                  "from_bench": str(from_bench) if from_bench else None, "edgeft_version": __version__,
                  "files": sorted(p.name for p in work.iterdir()) + ["bundle.json"]}
        (work / "bundle.json").write_text(json.dumps(record, indent=2) + "\n", "utf-8")
        if out.exists():
            out.rmdir()
        os.replace(work, out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    os.chmod(out, 0o755)
    return record
