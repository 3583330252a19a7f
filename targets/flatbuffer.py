"""A TFLite flatbuffer reader without TensorFlow: the ``metadata`` table and ``min_runtime_version``."""

from __future__ import annotations

import json
import struct
from typing import Any, Dict, Optional, Tuple, Union

EDGEFT_METADATA_KEY = "edgeft.metadata"


def _fb_table(buf: bytes, pos: int) -> Tuple[int, int, int]:
    vtable = pos - struct.unpack_from("<i", buf, pos)[0]
    return pos, vtable, struct.unpack_from("<H", buf, vtable)[0]


def _fb_field(buf: bytes, table: Tuple[int, int, int], index: int) -> Optional[int]:
    pos, vtable, vt_len = table
    entry = 4 + 2 * index
    if entry >= vt_len:
        return None
    offset = struct.unpack_from("<H", buf, vtable + entry)[0]
    return pos + offset if offset else None


def _fb_deref(buf: bytes, at: int) -> int:
    return at + struct.unpack_from("<I", buf, at)[0]


def _fb_vector(buf: bytes, at: int) -> Tuple[int, int]:
    start = _fb_deref(buf, at)
    return start + 4, struct.unpack_from("<I", buf, start)[0]


def _fb_string(buf: bytes, at: int) -> str:
    start, length = _fb_vector(buf, at)
    return buf[start:start + length].decode("utf-8", "replace")


def _buffer_bytes(buf: bytes, buffers_start: int, index: int) -> bytes:
    buffer = _fb_table(buf, _fb_deref(buf, buffers_start + 4 * index))
    data_at = _fb_field(buf, buffer, 0)
    if data_at is not None:
        start, length = _fb_vector(buf, data_at)
        return buf[start:start + length]
    off_at, size_at = _fb_field(buf, buffer, 1), _fb_field(buf, buffer, 2)
    if off_at is None or size_at is None:  # large models keep buffers after the flatbuffer
        return b""
    offset = struct.unpack_from("<Q", buf, off_at)[0]
    return buf[offset:offset + struct.unpack_from("<Q", buf, size_at)[0]]


def _read(source: Union[str, bytes]) -> bytes:
    if isinstance(source, (bytes, bytearray)):
        return bytes(source)
    with open(source, "rb") as handle:
        return handle.read()


def tflite_metadata(source: Union[str, bytes]) -> Dict[str, bytes]:
    """The ``metadata`` entries of a .tflite flatbuffer (a path or its bytes): name -> bytes."""
    buf = _read(source)
    if len(buf) < 8 or buf[4:8] != b"TFL3":
        return {}
    try:
        model = _fb_table(buf, _fb_deref(buf, 0))
        buffers_at, metadata_at = _fb_field(buf, model, 4), _fb_field(buf, model, 6)
        if buffers_at is None or metadata_at is None:
            return {}
        buffers_start, n_buffers = _fb_vector(buf, buffers_at)
        meta_start, n_meta = _fb_vector(buf, metadata_at)
        result = {}
        for i in range(n_meta):
            entry = _fb_table(buf, _fb_deref(buf, meta_start + 4 * i))
            name_at, index_at = _fb_field(buf, entry, 0), _fb_field(buf, entry, 1)
            if name_at is None or index_at is None:
                continue
            index = struct.unpack_from("<I", buf, index_at)[0]
            if index < n_buffers:
                result[_fb_string(buf, name_at)] = _buffer_bytes(buf, buffers_start, index)
        return result
    except (struct.error, IndexError, UnicodeDecodeError):
        return {}


def edgeft_metadata(source: Union[str, bytes]) -> Optional[Dict[str, Any]]:
    """The ``edgeft.metadata`` JSON object embedded in a .tflite file, or None."""
    raw = tflite_metadata(source).get(EDGEFT_METADATA_KEY)
    if not raw:
        return None
    try:
        value = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def min_runtime_version(model_path: str) -> Optional[str]:
    """The ``min_runtime_version`` the converter recorded in a .tflite file (e.g. "2.17.0"), or None."""
    import os

    if not model_path.endswith(".tflite") or not os.path.isfile(model_path):
        return None
    raw = tflite_metadata(model_path).get("min_runtime_version")
    if not raw:
        return None
    text = raw.split(b"\0", 1)[0].decode("ascii", "replace").strip()
    return text or None
