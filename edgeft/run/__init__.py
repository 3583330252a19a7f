"""The run directory: the contract between finetune, qat, evaluate, export and bench."""

from edgeft.run.rundir import (
    HISTORY_FILE,
    LABELS_FILE,
    MANIFEST_FILE,
    METRICS_FILE,
    MODEL_FILE,
    ModelFormat,
    RunDir,
    RunManifest,
    Sample,
    history_csv,
    write_run_dir,
)

__all__ = [
    "HISTORY_FILE",
    "LABELS_FILE",
    "MANIFEST_FILE",
    "METRICS_FILE",
    "MODEL_FILE",
    "ModelFormat",
    "RunDir",
    "RunManifest",
    "Sample",
    "history_csv",
    "write_run_dir",
]
