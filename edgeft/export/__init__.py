"""``edgeft export``: TFLite (float32, float16, dynamic range, int8), ONNX (float32, int8) and Edge TPU.

One module per format behind a registry (:mod:`edgeft.export.formats`), one conversion per
child process (:mod:`edgeft.export.worker`), every artifact validated by the device layer on
uint8 pixels with the sidecar just written (:mod:`edgeft.export.validate`) and reported
(:mod:`edgeft.export.report`). :func:`main_export` is the single entry point.
"""

from __future__ import annotations

from typing import Any

from edgeft.export.config import ArtifactSpec, ExportConfig, Format, IODtype, Precision, Source


def main_export(config: ExportConfig) -> dict[str, Any]:
    """Run an export described by ``config`` (see :func:`edgeft.export.main.main_export`)."""
    from edgeft.export.main import main_export as run

    return run(config)


__all__ = ["ArtifactSpec", "ExportConfig", "Format", "IODtype", "Precision", "Source", "main_export"]
