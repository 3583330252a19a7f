"""Entry point on the device: ``python3 edgeft-device.pyz MODE ...`` (or ``python -m edgeft.targets``).

Modes::

    doctor
    bench --spec SPEC.json [--cleanup DIR] [--watch-stdin]
    one JOB.json
    classify MODEL IMAGES.npy

Every mode prints exactly one JSON document on stdout. ``--cleanup DIR`` removes DIR (which
must hold the marker file ``.edgeft-bench``) when the bench exits, is interrupted, receives
SIGHUP/SIGTERM, or -- with ``--watch-stdin`` -- when its standard input closes (the SSH
connection that started it is gone).
"""

from __future__ import annotations

import json
import os
import sys
from typing import List, Optional

from .contract import DeviceError, ModelCorruptError, pip_line

USAGE = "usage: edgeft-device.pyz doctor | bench --spec SPEC.json [--cleanup DIR] [--watch-stdin] | classify MODEL IMAGES.npy"


def _option(argv: List[str], name: str) -> Optional[str]:
    if name not in argv:
        return None
    index = argv.index(name)
    if index + 1 >= len(argv):
        raise DeviceError("%s needs a value" % name)
    return argv[index + 1]


def _one(job_path: str) -> int:
    from .bench import bench_one

    with open(job_path) as handle:
        job = json.load(handle)
    try:
        result = bench_one(job)
    except ModelCorruptError as error:
        result = {"error": str(error), "error_kind": "model"}
    except DeviceError as error:
        result = {"error": str(error)}
    print(json.dumps(result))
    return 0


def _classify(model_path: str, images_path: str) -> int:
    import numpy as np

    from .contract import read_sidecar
    from .model import Model
    from .images import resize_images

    model = Model(model_path, read_sidecar(model_path))
    images = np.load(images_path, allow_pickle=False)
    scores = model.predict(resize_images(images, *model.input_size))
    print(json.dumps({"top5": [[int(i) for i in np.argsort(-s)[:5]] for s in scores]}))
    return 0


def _bench(argv: List[str]) -> int:
    from .bench import Cleanup, bench

    spec_path = _option(argv, "--spec")
    if spec_path is None:
        raise DeviceError("bench needs --spec SPEC.json")
    cleanup = Cleanup(_option(argv, "--cleanup"))
    cleanup.install("--watch-stdin" in argv)
    try:
        with open(spec_path) as handle:
            spec = json.load(handle)
        print(json.dumps(bench(spec, cleanup, os.path.dirname(os.path.abspath(spec_path)))))
        sys.stdout.flush()
    finally:
        cleanup.run()
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    """Run one mode; returns the exit status (3 after a one-line error, 2 for bad usage)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        print(json.dumps({"error": USAGE}))
        return 2
    mode = argv.pop(0)
    try:
        if mode == "doctor":
            from .device import doctor

            print(json.dumps(doctor()))
            return 0
        if mode == "one" and argv:
            return _one(argv[0])
        if mode == "classify" and len(argv) == 2:
            return _classify(argv[0], argv[1])
        if mode == "bench":
            return _bench(argv)
        raise DeviceError("unknown mode '%s'; %s" % (mode, USAGE))
    except DeviceError as error:
        print(json.dumps({"error": str(error)}))
        return 3
    except ImportError as error:  # numpy missing: the interpreters' own absence is a DeviceError already
        print(json.dumps({"error": "%s on this device (Python %s): %s" % (error, sys.version.split()[0],
                                                                        pip_line(sys.version.split()[0]))}))
        return 3


if __name__ == "__main__":
    sys.exit(main())
