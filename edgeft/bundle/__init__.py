"""``edgeft bundle``: one folder to copy to a device, with the model, the device layer and an example app.

APP_DIR holds the chosen artifact and its sidecar, ``edgeft-device.pyz`` (the device layer as one
file: no edgeft install on the device), ``requirements.txt`` pinned per the target's Python
versions (the pins of :data:`edgeft.targets.PINS`), ``app.py`` (folder, files or camera; JSON
lines), ``edgeft-app.service`` (systemd), ``README.md`` and ``bundle.json``. The folder is built
under a temporary name and renamed when complete.

Which artifact: ``--artifact NAME`` or a model file given directly; ``--from-bench BENCH_DIR``:
the one ``edgeft bench`` recommended for the target; else the best one ``export_report.json``
lists for the target's runtime (see :func:`best_in_report`: the Edge TPU model for a Coral, int8
TFLite for a CPU target, preferring artifacts that passed export's accuracy check); an export
folder without a report falls back to the file name (``model_int8_edgetpu.tflite`` or
``model_int8.tflite``).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from importlib import resources
from pathlib import Path
from typing import Any

from edgeft.errors import TargetError, UsageError
from edgeft.fileio import sha256_file

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


# On a CPU target: smallest and fastest first (what XNNPACK runs best on a Pi).
PRECISION_RANK = ("int8", "dynamic_range", "float16", "float32")
REPORT_NAME = "export_report.json"


def _runs_on(record: dict[str, Any], profile: Any) -> bool:
    if profile.delegate == "edgetpu":
        return record.get("format") == "edgetpu" or str(record.get("path", "")).endswith("_edgetpu.tflite")
    return record.get("format") == "tflite" and not str(record.get("path", "")).endswith("_edgetpu.tflite")


def best_in_report(report: dict[str, Any], profile: Any) -> dict[str, Any] | None:
    """The export report's artifact a target's runtime runs best, or None when it has none.

    Only the format the target runs (Edge TPU models for an Edge TPU target, TFLite otherwise);
    artifacts that passed export's accuracy check before those that failed it; then by precision
    (int8, dynamic range, float16, float32); then the most accurate (QAT over PTQ when it measured better).
    """
    records = [r for r in report.get("artifacts") or [] if isinstance(r, dict) and _runs_on(r, profile)]
    if not records:
        return None

    def rank(record: dict[str, Any]) -> tuple[int, int, float]:
        precision = str(record.get("precision"))
        order = PRECISION_RANK.index(precision) if precision in PRECISION_RANK else len(PRECISION_RANK)
        return (1 if record.get("passed") is False else 0, order, -float(record.get("accuracy") or 0.0))

    return min(records, key=rank)


def _from_report(source: Path, profile: Any) -> Path | None:
    """The artifact :func:`best_in_report` picks in ``source`` (None without a report), or a one-line error."""
    report_path = source / REPORT_NAME
    if not report_path.is_file():
        return None
    try:
        report = json.loads(report_path.read_text("utf-8"))
        if not isinstance(report, dict):
            raise ValueError("not a JSON object")
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise UsageError(f"cannot read {report_path}: {str(error).splitlines()[0]}; "
                         "re-export, or choose a file with --artifact NAME") from None
    chosen = best_in_report(report, profile)
    name = default_artifact(profile)
    if chosen is None:
        listed = ", ".join(sorted(str(r.get("path")) for r in report.get("artifacts") or [] if isinstance(r, dict)))
        raise UsageError(f"{source} has no artifact that {profile.name} runs ({listed or 'none exported'}); "
                         f"export it with: {_export_hint(name)}, or choose another file with --artifact NAME")
    path = source / str(chosen.get("path"))
    if not path.is_file():
        raise UsageError(f"{REPORT_NAME} lists {chosen.get('path')} for {profile.name}, but {path} is missing; "
                         "re-export, or choose another file with --artifact NAME")
    return path


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
    if not artifact:
        reported = _from_report(source, profile)
        if reported is not None:
            return reported
    name = artifact or default_artifact(profile)
    path = source / name
    if not path.is_file():
        how = "" if artifact else f" (what {profile.name} runs best)"
        raise UsageError(f"{source} has no {name}{how}; export it with: {_export_hint(name)}, "
                         "or choose another file with --artifact NAME")
    return path


def _chosen_by(source: Path, artifact: str | None, from_bench: Path | None) -> str:
    if source.is_file():
        return "model file given"
    if artifact:
        return "--artifact"
    if from_bench is not None:
        return "--from-bench"
    return REPORT_NAME if (source / REPORT_NAME).is_file() else "file name"


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
                  "source": str(model.resolve()), "sha256": sha256_file(work / model.name),
                  "chosen_by": _chosen_by(source, artifact, from_bench),
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
