"""Metadata carried by every exported artifact, embedded in the model file and in a sidecar JSON.

Key: ``edgeft.metadata``; value: a UTF-8 JSON object (schema ``edgeft.metadata/1``) with
``labels``, ``image_size``, ``input`` / ``output`` (name, shape, dtype, quantization
``{scale, zero_point}`` or null), ``preprocessing`` (``input = pixel * scale + offset``,
per channel, ``channel_order``), ``backbone``, ``format``, ``precision``, ``source`` and
``calibration``.

- TFLite: an entry named ``edgeft.metadata`` in the flatbuffer's ``metadata`` table, whose
  buffer holds the JSON bytes (read it with :func:`read_tflite_metadata`, or any flatbuffer
  reader of the TFLite schema: ``Model.Metadata(i).Name()`` / ``Model.Buffers(...)``).
- ONNX: ``model.metadata_props`` entry with key ``edgeft.metadata``.
- Every artifact: its sidecar next to it (:func:`edgeft.targets.sidecar_path`: ``<artifact file name>.json``),
  the same object plus size, sha256 and the export's validation.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edgeft.targets import EDGEFT_METADATA_KEY as METADATA_KEY
SCHEMA = "edgeft.metadata/1"


def base_metadata(manifest: Any, run_dir: Path) -> dict[str, Any]:
    """The part of the metadata that comes from the run directory."""
    from edgeft import __version__

    return {
        "schema": SCHEMA,
        "labels": list(manifest.class_names),
        "num_classes": manifest.num_classes,
        "image_size": manifest.image_size,
        "layout": "NHWC",
        "preprocessing": manifest.preprocessing.to_dict(),
        "backbone": manifest.backbone,
        "alpha": manifest.alpha,
        "run": {"path": str(Path(run_dir).resolve()), "kind": manifest.kind, "parent_run": manifest.parent_run,
                "created": manifest.created},
        "edgeft_version": __version__,
    }


def embed_tflite_metadata(model_bytes: bytes, metadata: dict[str, Any]) -> bytes:
    """Return ``model_bytes`` with an ``edgeft.metadata`` entry (replacing an older one) in its metadata table."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(model_bytes))
    payload = json.dumps(metadata, sort_keys=True).encode("utf-8")
    buffer = schema.BufferT()
    buffer.data = list(payload)  # flatbuffers' object API wants a sequence of ints
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name = METADATA_KEY
    entry.buffer = len(model.buffers) - 1
    model.metadata = [m for m in (model.metadata or []) if _name(m.name) != METADATA_KEY] + [entry]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def _name(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def read_tflite_metadata(path_or_bytes: Path | bytes) -> dict[str, Any] | None:
    """Read the ``edgeft.metadata`` JSON of a ``.tflite`` file (None when absent), with the device layer's
    flatbuffer reader: standard library only, no TensorFlow."""
    from edgeft.targets import edgeft_metadata

    source = str(path_or_bytes) if isinstance(path_or_bytes, (str, Path)) else bytes(path_or_bytes)
    return edgeft_metadata(source)


def embed_onnx_metadata(model: Any, metadata: dict[str, Any]) -> Any:
    """Set ``metadata_props["edgeft.metadata"]`` on an ``onnx.ModelProto`` (in place; returned)."""
    for prop in list(model.metadata_props):
        if prop.key == METADATA_KEY:
            model.metadata_props.remove(prop)
    prop = model.metadata_props.add()
    prop.key = METADATA_KEY
    prop.value = json.dumps(metadata, sort_keys=True)
    return model


def read_onnx_metadata(path: Path) -> dict[str, Any] | None:
    """Read the ``edgeft.metadata`` JSON of an ``.onnx`` file with onnxruntime (None when absent)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    value = session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
    return json.loads(value) if value else None
