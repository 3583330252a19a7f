"""What comes back from a device is untrusted: checks and cleaning before anything reaches a report or a terminal.

A device (or a runner replaced on it) may answer anything. :func:`parse_result` turns one target's
stdout into a result document of the expected shape, with control characters (terminal escape
sequences) removed from every string and non-finite numbers nulled, or raises :class:`TargetError`
for that target alone: the other targets of a fleet run are still reported. The transport caps
the bytes read from a device at :data:`MAX_OUTPUT_BYTES`.

Also here: :func:`csv_cell` (spreadsheet formula injection), :func:`plot_label` (matplotlib's
mathtext) and :func:`shell_path` (a profile's path inside a shell command).
"""

from __future__ import annotations

import json
import math
import re
import shlex
from typing import Any

from edgeft.errors import TargetError

MAX_OUTPUT_BYTES = 16 * 1024 * 1024
MAX_TEXT_CHARS = 2000
_MAX_DEPTH = 8
_MAX_ITEMS = 10000
# C0 and C1 control characters (ESC starts terminal sequences) and bidirectional overrides.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")
NUMBER_FIELDS = ("threads", "load_ms", "first_inference_ms", "warmup", "runs", "mean_ms", "std_ms", "min_ms",
                 "p50_ms", "p90_ms", "p99_ms", "max_ms", "throughput_ips", "peak_rss_mb", "model_size_bytes",
                 "accuracy", "top5_accuracy", "eval_count")
TEXT_FIELDS = ("runtime", "runtime_version", "delegate", "error", "error_kind", "input_dtype")


def clean_text(value: str, limit: int = MAX_TEXT_CHARS) -> str:
    """``value`` on one line without control characters, at most ``limit`` characters."""
    text = _CONTROL.sub(lambda match: " " if match.group() in "\n\r\t" else "", value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def clean(value: Any, depth: int = 0) -> Any:
    """A JSON value with every string cleaned, non-finite floats as None, and bounded nesting."""
    if isinstance(value, str):
        return clean_text(value)
    if value is None or isinstance(value, (bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if depth >= _MAX_DEPTH:
        return None
    if isinstance(value, list):
        return [clean(item, depth + 1) for item in value[:_MAX_ITEMS]]
    if isinstance(value, dict):
        return {clean_text(str(key), 200): clean(item, depth + 1) for key, item in list(value.items())[:_MAX_ITEMS]}
    return None


def parse_result(target: str, output: str, artifacts: list[str]) -> dict[str, Any]:
    """The runner's document for ``target`` (its rows name only ``artifacts``), or :class:`TargetError`."""
    try:
        document = json.loads(output)
    except ValueError:
        raise TargetError(f"target {target}: the runner printed no JSON: "
                          f"{clean_text(output.strip()[-200:]) or '(nothing)'}") from None
    if not isinstance(document, dict):
        raise TargetError(f"target {target}: the device's result is not a JSON object but {type(document).__name__}")
    document = clean(document)
    if "error" in document and "rows" not in document:
        raise TargetError(f"target {target}: {clean_text(str(document['error']), 500)}")
    rows = document.get("rows")
    if not isinstance(rows, list):
        raise TargetError(f"target {target}: the device's result has no list of rows")
    for number, row in enumerate(rows, 1):
        if not isinstance(row, dict):
            raise TargetError(f"target {target}: row {number} of the device's result is not an object")
        artifact = row.get("artifact")
        if artifact not in artifacts:
            raise TargetError(f"target {target}: row {number} of the device's result names an artifact that was "
                              f"not sent: {clean_text(repr(artifact), 80)}")
        for key in NUMBER_FIELDS:
            value = row.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise TargetError(f"target {target}: row {number} ({artifact}): '{key}' is not a number")
        for key in TEXT_FIELDS:
            if row.get(key) is not None and not isinstance(row[key], str):
                raise TargetError(f"target {target}: row {number} ({artifact}): '{key}' is not a string")
    for key in ("device", "before", "after"):
        if document.get(key) is not None and not isinstance(document[key], dict):
            raise TargetError(f"target {target}: '{key}' in the device's result is not an object")
    device = document.get("device") or {}
    for key in ("warnings", "simd", "int8_isa"):
        entries = device.get(key)
        if entries is not None and not (isinstance(entries, list) and all(isinstance(e, str) for e in entries)):
            raise TargetError(f"target {target}: device '{key}' in the device's result is not a list of strings")
    return document


def csv_cell(value: Any) -> Any:
    """A text cell that a spreadsheet would run as a formula (``=``, ``+``, ``-``, ``@``, tab, CR) gets a ``'``."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def plot_label(value: Any) -> str:
    """Text that matplotlib draws as is: ``$`` escaped (no mathtext), control characters removed."""
    return clean_text(str(value), 200).replace("$", r"\$")


def shell_path(path: str) -> str:
    """``path`` as one shell word; a leading ``~/`` becomes ``"$HOME"/`` and the rest is quoted."""
    if path == "~":
        return '"$HOME"'
    if path.startswith("~/"):
        rest = path[2:]
        return '"$HOME"/' + shlex.quote(rest) if rest else '"$HOME"/'
    return shlex.quote(path)
