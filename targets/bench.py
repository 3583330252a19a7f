"""The bench driver on the device: one child process per (model, threads) job, self-cleaning directory."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import zipfile
from typing import Any, Dict, List, Optional

from .contract import DEVICE_VERSION, MARKER_FILE, DeviceError, load_eval
from .device import doctor, temperatures, throttle_state, throttled_during
from .measure import latency_stats, peak_rss_mb, time_invocations
from .model import Model
from .images import resize_images

# A JSON list of strings that starts each job's Python, e.g. an emulator plus its Python.
PYTHON_ARGV_ENV = "EDGEFT_DEVICE_PYTHON_ARGV"


def label_map(eval_names: List[str], model_labels: List[str]) -> Optional[Dict[int, int]]:
    """Map eval class indices to model output indices by name when every name is in the model's labels."""
    if not eval_names or not model_labels:
        return None
    lookup: Dict[str, int] = {}
    for index, label in enumerate(model_labels):
        for part in [label] + [p.strip() for p in label.split(",")]:
            lookup.setdefault(part.strip().lower(), index)
    mapping = {}
    for i, name in enumerate(eval_names):
        key = name.strip().lower()
        if key not in lookup:
            return None
        mapping[i] = lookup[key]
    return mapping


def accuracy(model: Model, eval_path: str) -> Dict[str, Any]:
    """Top-1 (and top-5 with more than 5 classes) accuracy of ``model`` on an evaluation file."""
    import numpy as np

    images, labels, names = load_eval(eval_path)
    images = resize_images(images, *model.input_size)
    mapping = label_map(names, list(model.sidecar.get("labels") or []))
    if mapping is not None:
        labels = np.array([mapping[int(label)] for label in labels], dtype=np.int64)
    if len(labels) == 0:
        return {"accuracy": None, "top5_accuracy": None, "eval_count": 0}
    scores = model.predict(images)
    if mapping is None and ((names and len(names) != scores.shape[1]) or int(labels.max()) >= scores.shape[1]):
        raise DeviceError("the evaluation set has %d classes but %s has %d outputs and no labels naming them"
                          % (len(names) or int(labels.max()) + 1, os.path.basename(model.path), scores.shape[1]))
    top1 = float(np.mean(np.argmax(scores, axis=1) == labels))
    top5 = None
    if scores.shape[1] > 5:
        best5 = np.argsort(-scores, axis=1)[:, :5]
        top5 = float(np.mean([labels[i] in best5[i] for i in range(len(labels))]))
    return {"accuracy": top1, "top5_accuracy": top5, "eval_count": int(len(labels))}


def bench_one(job: Dict[str, Any]) -> Dict[str, Any]:
    """Load one model with one thread count, time it, and measure accuracy when asked."""
    model = Model(job["path"], job.get("sidecar"), int(job["threads"]), job.get("runtime", "auto"), job.get("delegate"))
    model.set_input(model.random_input(seed=0))
    warmup = int(job.get("warmup", 10))
    first_ms, latencies, loop_s = time_invocations(model.invoke, warmup, job.get("runs"), job.get("duration"))
    row: Dict[str, Any] = {
        "runtime": model.runtime, "runtime_version": model.runtime_version, "delegate": model.delegate,
        "threads": model.threads, "input_shape": model.input_shape, "input_dtype": model.input_dtype.name,
        "load_ms": model.load_ms, "first_inference_ms": first_ms, "warmup": warmup, "runs": len(latencies),
    }
    row.update(latency_stats(latencies))
    row["throughput_ips"] = len(latencies) / loop_s if loop_s > 0 else None
    if job.get("eval"):
        row.update(accuracy(model, job["eval"]))
    row["peak_rss_mb"] = peak_rss_mb()
    return row


class Cleanup:
    """Removes the bench directory and its child process on every way out."""

    def __init__(self, directory: Optional[str]) -> None:
        self.directory = directory
        self.child: Optional[subprocess.Popen] = None
        self.lock = threading.Lock()
        self.done = False
        if directory and not os.path.isfile(os.path.join(directory, MARKER_FILE)):
            raise DeviceError("refusing to clean up %s: it has no %s marker" % (directory, MARKER_FILE))

    def run(self) -> None:
        with self.lock:
            if self.done:
                return
            self.done = True
            child = self.child
            if child is not None and child.poll() is None:
                try:
                    child.kill()
                    child.wait(timeout=5)
                except Exception:
                    pass
            if self.directory:
                shutil.rmtree(self.directory, ignore_errors=True)

    def install(self, watch_stdin: bool) -> None:
        def on_signal(signum: int, frame: Any) -> None:
            self.run()
            os._exit(128 + signum)

        for name in ("SIGHUP", "SIGTERM", "SIGINT", "SIGPIPE"):
            if hasattr(signal, name):
                signal.signal(getattr(signal, name), on_signal)
        if watch_stdin:
            def watch() -> None:
                try:
                    while os.read(0, 4096):
                        pass
                except OSError:
                    pass
                self.run()
                os._exit(129)

            threading.Thread(target=watch, name="stdin-watch", daemon=True).start()


def python_argv() -> List[str]:
    """The command prefix that starts a job's Python: ``$EDGEFT_DEVICE_PYTHON_ARGV`` or this Python."""
    raw = os.environ.get(PYTHON_ARGV_ENV)
    if not raw:
        return [sys.executable]
    try:
        argv = json.loads(raw)
    except ValueError:
        argv = None
    if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
        raise DeviceError("%s must be a JSON list of strings, got %r" % (PYTHON_ARGV_ENV, raw[:80]))
    return argv


def entry_argv() -> List[str]:
    """How a child runs this same device code: the zipapp file, or ``-m <package>``."""
    path = os.path.dirname(os.path.abspath(__file__))
    while path and not os.path.exists(path):  # inside a zipapp: walk up to the archive itself
        path = os.path.dirname(path)
    if os.path.isfile(path) and zipfile.is_zipfile(path):
        return [path]
    return ["-m", __package__ or "targets"]


def child_command(job_path: str) -> List[str]:
    """The command line of one job's process."""
    return python_argv() + entry_argv() + ["one", job_path]


def _child_env() -> Dict[str, str]:
    env = dict(os.environ)
    if not os.path.isfile(entry_argv()[0]):  # ``-m package``: the child must find the package
        package_root = os.path.abspath(__file__)
        for _ in range(len((__package__ or "x").split(".")) + 1):
            package_root = os.path.dirname(package_root)
        env["PYTHONPATH"] = os.pathsep.join([package_root] + [p for p in [env.get("PYTHONPATH")] if p])
    return env


def _run_job(job: Dict[str, Any], job_path: str, name: str, cleanup: Cleanup, workdir: str) -> Dict[str, Any]:
    with open(job_path, "w") as handle:
        json.dump(job, handle)
    child = subprocess.Popen(child_command(job_path), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, cwd=workdir, env=_child_env())
    cleanup.child = child
    out, err = child.communicate()
    cleanup.child = None
    try:
        return json.loads(out.decode("utf-8"))
    except ValueError:
        tail = err.decode("utf-8", "replace").strip().splitlines()
        signal_note = " (killed by signal %d)" % -child.returncode if child.returncode < 0 else ""
        return {"error": "the device code crashed on %s%s: %s" % (name, signal_note, tail[-1] if tail else "no output")}


def bench(spec: Dict[str, Any], cleanup: Cleanup, workdir: str) -> Dict[str, Any]:
    """Run every (model, thread count) of ``spec`` in its own child process; returns the JSON document."""
    before = {"temperatures_c": temperatures(), "throttled": throttle_state()}
    facts = doctor()
    rows: List[Dict[str, Any]] = []
    threads_list = spec.get("threads") or [1]
    for model in spec["models"]:
        model_rows = []
        for position, threads in enumerate(threads_list):
            path = os.path.join(workdir, model["file"])
            job = {"path": path, "sidecar": model.get("sidecar"), "threads": int(threads), "runs": spec.get("runs"),
                   "duration": spec.get("duration"), "warmup": spec.get("warmup", 10),
                   "runtime": spec.get("runtime", "auto"), "delegate": model.get("delegate"),
                   "eval": os.path.join(workdir, model["eval"]) if model.get("eval") and position == 0 else None}
            row = {"artifact": model["name"], "threads": int(threads),
                   "model_size_bytes": os.path.getsize(path) if os.path.isfile(path) else None}
            row.update(_run_job(job, os.path.join(workdir, "job-%d.json" % len(rows)), model["name"], cleanup, workdir))
            rows.append(row)
            model_rows.append(row)
            if row.get("error_kind") == "model":  # a damaged file fails the same way at every thread count
                break
        for other in model_rows[1:]:  # accuracy does not depend on the thread count
            for key in ("accuracy", "top5_accuracy", "eval_count"):
                if key in model_rows[0] and "error" not in other:
                    other[key] = model_rows[0][key]
    after = {"temperatures_c": temperatures(), "throttled": throttle_state()}
    return {"runner_version": DEVICE_VERSION, "device": facts, "before": before, "after": after,
            "throttled_during_run": throttled_during(before, after), "rows": rows}
