"""``edgeft bench``: push the device app, models and an evaluation set to each target, run, pull the JSON back.

The bench only stages files and parses results: every measurement is the device layer's
(:mod:`edgeft.targets`), run on the device from the one-file app (:mod:`edgeft.bench.device_app`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from edgeft import targets as device
from edgeft.bench.checks import ModelFacts, check_eval_fits, inspect_model
from edgeft.bench.config import BenchConfig
from edgeft.bench.device_app import APP_NAME, device_app
from edgeft.bench.recommend import artifact_labels
from edgeft.bench.results import parse_result
from edgeft.bench.targets import ResolvedTarget, resolve_targets
from edgeft.bench.transport import stop_all
from edgeft.errors import CorruptModelError, DatasetError, ModelFileError, TargetError, UsageError
from edgeft.progress import log

EXPORT_REPORT = "export_report.json"


def _export_order(directory: Path) -> dict[str, int]:
    """File name -> position in the directory's export report (the order the export wrote them)."""
    report = directory / EXPORT_REPORT
    try:
        artifacts = json.loads(report.read_text("utf-8")).get("artifacts", []) if report.is_file() else []
        return {str(a["path"]): i for i, a in enumerate(artifacts)}
    except (OSError, ValueError, AttributeError, KeyError, TypeError):
        return {}


def _is_model(path: Path) -> bool:
    return path.is_file() and any(path.name.endswith(suffix) for suffix in device.known_suffixes())


def expand_artifacts(paths: tuple[Path, ...] | list[Path]) -> list[Path]:
    """Model files named directly, and the model files of each export directory (in the export's order)."""
    result: list[Path] = []
    suffixes = ", ".join(device.known_suffixes())
    for path in paths:
        path = Path(path)
        if path.is_dir():
            found = [p for p in path.iterdir() if _is_model(p)]
            if not found:
                raise ModelFileError(f"no model file ({suffixes}) in {path} (make them with `edgeft export`)")
            rank = _export_order(path)
            result.extend(sorted(found, key=lambda p: (rank.get(p.name, len(rank)), p.name)))
        elif path.is_file():
            if not _is_model(path):
                raise ModelFileError(f"not a model file: {path} (edgeft bench takes {suffixes} files)")
            result.append(path)
        else:
            raise ModelFileError(f"model file or export directory not found: {path}")
    if not result:
        raise UsageError("no artifact given: pass model files or an export directory")
    seen: set[Path] = set()
    return [p for p in result if not (p.resolve() in seen or seen.add(p.resolve()))]


def read_sidecar(model: Path) -> dict[str, Any] | None:
    """The sidecar next to a model (labels, input_size, preprocessing, input quantization), or None."""
    try:
        return device.read_sidecar(str(model))
    except device.DeviceError as error:
        raise ModelFileError(str(error)) from None


def model_input_size(model: Path, sidecar: dict[str, Any] | None) -> int:
    """The square input size: from the sidecar, else from the model itself, else 224."""
    if sidecar:
        size = sidecar.get("input_size") or sidecar.get("image_size")
        if isinstance(size, (list, tuple)):
            size = size[0]
        if size:
            return int(size)
    try:
        return int(device.Model(str(model)).input_size[0])
    except device.DeviceError:
        return 224


# ----------------------------------------------------------------------------- evaluation sets
def load_eval_set(source: Path, size: int, limit: int | None = None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """uint8 images (N, size, size, 3), int labels and class names from an .npz, a run directory, or class folders."""
    source = Path(source)
    if source.is_file() and source.suffix == ".npz":
        try:
            images, labels, names = device.load_eval(str(source))
        except device.DeviceError as error:
            raise DatasetError(str(error)) from None
        images = device.resize_images(images, size, size)
    elif (source / "edgeft.json").is_file():
        from edgeft.data import load_samples
        from edgeft.run.rundir import RunDir

        run = RunDir.open(source)
        samples = run.samples("val")[: limit or None]
        split = load_samples(samples, size, label="decoding evaluation images")
        images, labels, names = split.images, split.labels.astype(np.int64), list(run.manifest.class_names)
    elif source.is_dir():
        from edgeft.data.dataset import decode_files
        from edgeft.data.images import IMAGE_SUFFIXES

        names = sorted(d.name for d in source.iterdir() if d.is_dir() and not d.name.startswith("."))
        if not names:
            raise DatasetError(f"evaluation folder {source} has no class folders")
        files, file_labels = [], []
        for label, name in enumerate(names):
            for path in sorted((source / name).rglob("*")):
                if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
                    files.append(path)
                    file_labels.append(label)
        if limit:
            files, file_labels = files[:limit], file_labels[:limit]
        decoded, failures = decode_files(files, size, label="decoding evaluation images")
        keep = [i for i, failure in enumerate(failures) if failure is None]
        images = decoded[keep]
        labels = np.array([file_labels[i] for i in keep], dtype=np.int64)
    else:
        raise DatasetError(f"evaluation set not found: {source} (an .npz, a run directory, or class folders)")
    if limit:
        images, labels = images[:limit], labels[:limit]
    if len(labels) == 0:
        raise DatasetError(f"evaluation set {source} has no usable image")
    return np.ascontiguousarray(images, dtype=np.uint8), labels, names


def write_eval_npz(path: Path, images: np.ndarray, labels: np.ndarray, names: list[str]) -> None:
    """The evaluation file pushed to the device (the device layer's schema)."""
    device.write_eval(str(path), images, labels, names)


# ----------------------------------------------------------------------------- one target
def _stage(config: BenchConfig, artifacts: list[Path], workdir: Path,
           facts: dict[Path, ModelFacts] | None = None) -> tuple[dict[str, Path], dict[str, Any]]:
    """Files to push and the bench spec (relative file names)."""
    files: dict[str, Path] = {APP_NAME: device_app()}
    models = []
    eval_files: dict[int, tuple[str, list[str], int]] = {}
    labels_of = artifact_labels(artifacts)
    for index, artifact in enumerate(artifacts):
        sidecar = read_sidecar(artifact)
        remote_name = f"m{index}_{artifact.name}"
        files[remote_name] = artifact
        entry: dict[str, Any] = {"name": labels_of[index], "file": remote_name, "sidecar": sidecar}
        if config.eval_source is not None:
            size = model_input_size(artifact, sidecar)
            if size not in eval_files:
                images, labels, names = load_eval_set(config.eval_source, size, config.eval_limit)
                npz = workdir / f"eval_{size}.npz"
                write_eval_npz(npz, images, labels, names)
                eval_files[size] = (npz.name, list(names), int(labels.max()))
                files[npz.name] = npz
            if facts and artifact in facts:
                check_eval_fits(facts[artifact], eval_files[size][1], eval_files[size][2], config.eval_source)
            entry["eval"] = eval_files[size][0]
        models.append(entry)
    spec = {"models": models, "runs": config.runs, "duration": config.duration_s, "warmup": config.warmup}
    return files, spec


def run_target(target: ResolvedTarget, config: BenchConfig, files: dict[str, Path], spec: dict[str, Any],
               workdir: Path) -> dict[str, Any]:
    """Run the device app on one target; always removes the remote directory. Returns its document."""
    profile = target.profile
    threads = list(config.threads or default_threads(target))
    spec = dict(spec, threads=threads, runtime=profile.tflite_runtime if profile else "auto")
    for model in spec["models"]:
        if profile and profile.delegate == "edgetpu" and model["name"].endswith("_edgetpu.tflite"):
            model["delegate"] = "edgetpu"
    spec_path = workdir / f"spec-{abs(hash(target.name))}.json"
    spec_path.write_text(json.dumps(spec), "utf-8")
    transport = target.transport
    remote_dir, python = transport.prepare(config.ssh.remote_tmpdir, target.python)
    try:
        transport.push(dict(files, **{"spec.json": spec_path}), remote_dir)
        argv = [python, f"{remote_dir}/{APP_NAME}", "bench", "--spec", f"{remote_dir}/spec.json",
                "--cleanup", remote_dir, "--watch-stdin"]
        out = transport.run(argv, config.timeout_s, keep_stdin_open=True)
    finally:
        transport.remove(remote_dir)
    document = parse_result(target.name, out, [model["name"] for model in spec["models"]])
    staged = {model["file"]: model["name"] for model in spec["models"]}
    for row in document.get("rows", []):
        if row.get("error"):
            row["error"] = user_names(str(row["error"]), staged)
    return document


def default_threads(target: ResolvedTarget) -> list[int]:
    """The profile's thread counts; on this host (``local``) none above its cores (2 cores: 1,2,4 -> 1,2)."""
    profile = target.profile
    threads = list(profile.threads if profile else (1,))
    if profile is not None and profile.kind == "local":
        cores = host_cores()
        threads = sorted({min(t, cores) for t in threads})
    return threads


def host_cores() -> int:
    """The cores this process may run on (its CPU affinity, which containers and taskset limit)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def user_names(message: str, staged: dict[str, str]) -> str:
    """A device message with each staged file (``/tmp/edgeft-bench.x/m0_model.tflite``) named as the user named it."""
    for remote_name, name in staged.items():
        message = re.sub(r"[^\s:'\"()]*" + re.escape(remote_name), lambda _m, n=name: n, message)
    return message


# ----------------------------------------------------------------------------- main
def main_bench(config: BenchConfig) -> dict[str, Any]:
    """Benchmark every artifact on every target; write BENCH_DIR; return the summary.

    Rows measured before a failure are written; any failure then raises :class:`TargetError` (exit 7).
    ``--out`` is checked and locked before anything is staged or measured.
    """
    if config.runs is not None and config.duration_s is not None:
        raise UsageError("--runs and --duration are exclusive: give one")
    if config.runs is not None and config.runs < 1:
        raise UsageError("--runs must be at least 1")
    if config.duration_s is not None and config.duration_s <= 0:
        raise UsageError("--duration must be positive")
    if config.warmup < 0:
        raise UsageError("--warmup must be 0 or more")
    if config.threads is not None and any(t < 1 for t in config.threads):
        raise UsageError("--threads must list positive integers, e.g. 1,2,4")
    from edgeft import interrupts
    from edgeft.outputs import has_content, open_output

    out = Path(config.out_dir)
    earlier = " (the results already there are unchanged)" if has_content(out) else ""
    interrupts.advise(f"interrupted; nothing was written to {out}{earlier}: run the same command again")
    with open_output(out, replace=False):
        return _bench(config)


def _bench(config: BenchConfig) -> dict[str, Any]:
    """Stage, measure on every target and write BENCH_DIR (locked by the caller)."""
    from edgeft.bench.report import build_rows, write_reports

    artifacts = expand_artifacts(config.artifacts)
    targets = resolve_targets(config.targets, config.ssh)
    facts = {artifact: inspect_model(artifact, read_sidecar(artifact)) for artifact in artifacts}
    started = time.time()
    workdir = Path(tempfile.mkdtemp(prefix="edgeft-bench-stage."))
    results: dict[str, dict[str, Any]] = {}
    errors: dict[str, str] = {}
    try:
        files, spec = _stage(config, artifacts, workdir, facts)

        def one(target: ResolvedTarget) -> tuple[str, dict[str, Any] | None, str | None]:
            log(f"bench: {target.name}: {len(artifacts)} artifact(s)")
            try:
                return target.name, run_target(target, config, files, spec, workdir), None
            except TargetError as error:
                return target.name, None, error.message

        pool = ThreadPoolExecutor(max_workers=max(1, len(targets)))
        try:
            for name, document, error in pool.map(one, targets):
                if document is not None:
                    results[name] = document
                if error is not None:
                    errors[name] = error
                    log(f"bench: {error}")
        except KeyboardInterrupt:
            # the targets run in worker threads, which Ctrl-C does not reach: end their device processes so
            # that each worker removes its remote directory and returns
            stop_all()
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        pool.shutdown(wait=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    rows, warnings = build_rows(targets, artifacts, results, errors)
    summary = write_reports(config, rows, targets, results, errors, warnings, started)
    failed = [row for row in rows if row.get("error")]
    if errors or failed:
        first = next(iter(errors.values()), None) or f"{failed[0]['artifact']} on {failed[0]['target']}: {failed[0]['error']}"
        # one failure per target that failed as a whole, and per (artifact, target) pair otherwise
        count = len(errors) + len({(r["artifact"], r["target"]) for r in failed if r["target"] not in errors})
        more = f" (+{count - 1} more failure(s))" if count > 1 else ""
        message = f"{first}{more}; measured results written to {config.out_dir / 'bench.json'}"
        if not errors and all(row.get("error_kind") == "model" for row in failed):
            raise CorruptModelError(message)
        raise TargetError(message)
    return summary
