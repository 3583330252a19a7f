"""An image classifier for apps: a model file in, ``[(label, score), ...]`` out.

Where labels and preprocessing come from, in order: the ``edgeft.metadata`` entry embedded in
the model file (TFLite flatbuffer metadata, ONNX ``metadata_props``), else the sidecar
``<model>.json`` next to it. Arguments given to :meth:`Classifier.load` (``labels=``,
``scale=``, ``offset=``, ``channel_order=``) replace what they name, for a model edgeft did
not make. A float model with none of these gets the MobileNet convention and one warning.

Thread safety: one interpreter per classifier, guarded by a lock. Decoding, resizing and the
pixel -> input mapping run outside the lock (in parallel across threads); only the invocation is
serialized. For parallel inference load one classifier per thread. ``threads`` is the
interpreter's thread count and also how many threads share one image's resize (the pixels are
the same whatever the count).

Speed: the pixel -> input mapping (scale, offset, channel order, quantization) is a table of the
model's input for each of the 256 pixel values per channel, made once by the model's own
``prepare`` and checked against it at load: a lookup per pixel, identical to ``prepare``, instead
of five float passes over the image.
"""

from __future__ import annotations

import json
import os
import threading
import warnings
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from .contract import DeviceError, ModelCorruptError, read_sidecar, validate_sidecar
from .flatbuffer import EDGEFT_METADATA_KEY, tflite_metadata
from .images import load_image
from .model import Model

Prediction = List[Tuple[str, float]]
ASSUMED_CONVENTION = "input = pixel / 127.5 - 1 (MobileNet)"


class ArgumentError(DeviceError):
    """An argument to :meth:`Classifier.load` that cannot be used (labels file, preprocessing)."""


def read_labels(path: Union[str, "os.PathLike[str]"]) -> List[str]:
    """A labels file: one label per line (blank lines skipped)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise ArgumentError("labels must be a text file with one label per line, not a folder: %s" % path)
    try:
        with open(path, "r", encoding="utf-8") as handle:
            labels = [line.strip() for line in handle if line.strip()]
    except OSError as error:
        raise ArgumentError("cannot read labels file %s: %s" % (path, error.strerror or error))
    except UnicodeDecodeError:
        raise ArgumentError("labels file %s is not UTF-8 text" % path)
    if not labels:
        raise ArgumentError("labels file %s has no labels" % path)
    return labels


def embedded_metadata(path: str, model: Optional[Model] = None) -> Tuple[Optional[Dict[str, Any]], Optional[str]]:
    """The model file's own ``edgeft.metadata`` object, and why it could not be used (None, reason)."""
    raw: Any = None
    if path.endswith(".tflite"):
        raw = tflite_metadata(path).get(EDGEFT_METADATA_KEY)
    elif path.endswith(".onnx") and model is not None:
        session = getattr(model.backend, "session", None)
        if session is not None:
            raw = session.get_modelmeta().custom_metadata_map.get(EDGEFT_METADATA_KEY)
    if not raw:
        return None, None
    try:
        value = json.loads(raw.decode("utf-8") if isinstance(raw, bytes) else raw)
        return validate_sidecar(value, "embedded metadata"), None
    except (UnicodeDecodeError, ValueError) as error:
        return None, "corrupted embedded metadata (%s)" % str(error).splitlines()[0]
    except DeviceError as error:
        return None, str(error)


def _three(value: Any, name: str) -> List[float]:
    values = [value] * 3 if isinstance(value, (int, float)) else list(value)
    if len(values) != 3 or not all(isinstance(v, (int, float)) for v in values):
        raise ArgumentError("%s must be a number or 3 numbers (one per channel), got %r" % (name, value))
    return [float(v) for v in values]


class InputTable:
    """A model's input for each pixel value (256, 3), and how to apply it: ``Model.prepare`` by lookup."""

    def __init__(self, table: Any, bgr: bool, nchw: bool) -> None:
        import numpy as np

        self.table = np.ascontiguousarray(table)
        self.bgr = bgr
        self.nchw = nchw
        same = all(np.array_equal(self.table[:, 0], self.table[:, c]) for c in (1, 2))
        self.column = np.ascontiguousarray(self.table[:, 0]) if same else None

    def lookup(self, pixels: Any) -> Any:
        """uint8 pixels (N, H, W, 3) -> the model's input tensor."""
        import numpy as np

        pixels = np.asarray(pixels, dtype=np.uint8)
        if self.bgr:
            pixels = pixels[..., ::-1]
        if self.column is not None:  # one mapping for all channels: one lookup over the whole image
            tensor = np.take(self.column, pixels)
        else:
            tensor = np.empty(pixels.shape, self.table.dtype)
            for channel in range(3):
                np.take(self.table[:, channel], pixels[..., channel], out=tensor[..., channel])
        if self.nchw:
            tensor = np.transpose(tensor, (0, 3, 1, 2))
        return np.ascontiguousarray(tensor)


def input_table(model: Model) -> Optional[InputTable]:
    """The table that maps pixels to ``model``'s input, or None when the pixels are the input already.

    Made by ``model.prepare`` itself on the 256 pixel values, then checked against it on an image;
    None (use ``prepare``) if the mapping is not one value per pixel and channel.
    """
    import numpy as np

    backend = model.backend
    ramp = np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, axis=1)[None, None]  # (1, 1, 256, 3)
    tensor = model.prepare(ramp)
    nchw = getattr(backend, "layout", "NHWC") == "NCHW"
    table = tensor[0, :, 0, :].T if nchw else tensor[0, 0]
    if table.dtype == np.uint8 and np.array_equal(table, ramp[0, 0]) and tensor.shape == ramp.shape:
        return None  # raw pixels are the input: nothing to map
    prep = (model.sidecar or {}).get("preprocessing") or {}
    candidate = InputTable(table, prep.get("channel_order", "RGB") == "BGR", nchw)
    h, w = model.input_size
    probe = np.random.default_rng(1).integers(0, 256, size=(1, h, w, 3), dtype=np.uint8)
    expected = model.prepare(probe)
    got = candidate.lookup(probe)
    if got.dtype != expected.dtype or got.shape != expected.shape or not np.array_equal(got, expected):
        return None
    return candidate


class Classifier:
    """One model file with its labels and preprocessing; classifies paths, PIL images and numpy arrays."""

    def __init__(self, model: Model, labels: Sequence[str], metadata_source: str, num_classes: int) -> None:
        self.model = model
        self.path = model.path
        self.labels: Tuple[str, ...] = tuple(labels)
        self.metadata_source = metadata_source  # "embedded", "sidecar", "arguments" or "none"
        self.num_classes = num_classes
        self._input_size: Tuple[int, int] = tuple(model.input_size)  # type: ignore[assignment]
        self._lock = threading.Lock()
        self._table = input_table(model)

    @classmethod
    def load(cls, path: Union[str, "os.PathLike[str]"], threads: int = 1,
             labels: Union[str, "os.PathLike[str]", Sequence[str], None] = None,
             scale: Any = None, offset: Any = None, channel_order: Optional[str] = None,
             runtime: str = "auto", delegate: Optional[str] = None) -> "Classifier":
        """Load a ``.tflite`` or ``.onnx`` model with its labels and preprocessing.

        ``labels``: a labels file or a list of names. ``scale``/``offset`` (a number or one per
        channel) and ``channel_order`` ("RGB"/"BGR") set ``input = pixel * scale + offset``.
        """
        path = os.fspath(path)
        if os.path.isdir(path):
            raise DeviceError("model path is a folder, not a model file: %s" % path)
        if not os.path.isfile(path):
            raise DeviceError("model file not found: %s" % path)
        if os.path.getsize(path) == 0:
            raise ModelCorruptError("model file is empty (0 bytes): %s" % path)
        names: Optional[List[str]] = None
        if labels is not None:
            names = read_labels(labels) if isinstance(labels, (str, os.PathLike)) else [str(v) for v in labels]
        prep: Dict[str, Any] = {}
        if scale is not None:
            prep["scale"] = _three(scale, "scale")
        if offset is not None:
            prep["offset"] = _three(offset, "offset")
        if channel_order is not None:
            if channel_order not in ("RGB", "BGR"):
                raise ArgumentError("channel_order must be RGB or BGR, got %r" % channel_order)
            prep["channel_order"] = channel_order

        model = Model(path, None, threads, runtime=runtime, delegate=delegate)
        metadata, problem = embedded_metadata(path, model)
        source = "embedded"
        if metadata is None:
            sidecar = read_sidecar(path)
            if problem:
                warnings.warn("%s: %s; using %s" % (os.path.basename(path), problem,
                                                    "its sidecar" if sidecar else "the defaults"), stacklevel=2)
            metadata, source = (sidecar, "sidecar") if sidecar else ({}, "none")
        metadata = dict(metadata)
        if prep:
            merged = dict(metadata.get("preprocessing") or {"scale": [1.0] * 3, "offset": [0.0] * 3})
            merged.update(prep)
            metadata["preprocessing"] = merged
            source = "arguments" if source == "none" else source
        if names is not None:
            metadata["labels"] = names
            source = "arguments" if source == "none" else source
        if not metadata.get("preprocessing") and model.input_dtype.kind == "f":
            warnings.warn("%s has no preprocessing metadata (no edgeft.metadata, no sidecar): assuming %s; "
                          "pass scale= and offset= to change it" % (os.path.basename(path), ASSUMED_CONVENTION),
                          stacklevel=2)
        model.sidecar = validate_sidecar(metadata, "metadata of %s" % os.path.basename(path))
        model.set_input(model.random_input())
        model.invoke()  # first invocation: allocates, and tells the number of outputs
        num_classes = int(model.output().size)
        label_list = list(metadata.get("labels") or [])
        if label_list and len(label_list) != num_classes:
            raise ArgumentError("%d labels for a model with %d outputs (%s)"
                                % (len(label_list), num_classes, os.path.basename(path)))
        return cls(model, label_list, source, num_classes)

    @property
    def input_size(self) -> Tuple[int, int]:
        """(height, width) of the model's input."""
        return self._input_size

    def pixels(self, image: Any) -> Any:
        """The uint8 RGB (height, width, 3) pixels the model sees for ``image`` (decoded, resized)."""
        return load_image(image, self.input_size, self.model.threads)

    def scores(self, image: Any) -> Any:
        """Real-valued scores (float32, one per class; dequantized) for one image."""
        import numpy as np

        tensor = self.prepare(self.pixels(image)[None])
        with self._lock:
            if self.model.backend is None:
                raise DeviceError("the classifier for %s is closed" % os.path.basename(self.path))
            self.model.set_input(tensor)
            self.model.invoke()
            out = self.model.output()
        return np.asarray(out, dtype=np.float32).reshape(-1)

    def prepare(self, pixels: Any) -> Any:
        """uint8 RGB pixels (N, H, W, 3) at the model's size -> its input tensor (the same as ``Model.prepare``)."""
        if self._table is None:
            if self.model.backend is None:
                raise DeviceError("the classifier for %s is closed" % os.path.basename(self.path))
            return self.model.prepare(pixels)
        return self._table.lookup(pixels)

    def classify(self, image: Any, top_k: int = 5) -> Prediction:
        """The ``top_k`` (label, probability) pairs, best first (softmax applied when outputs are not probabilities)."""
        import numpy as np

        scores = self.scores(image).astype(np.float64)
        if scores.min() < 0 or scores.max() > 1.0 or not 0.5 < scores.sum() < 1.5:
            exp = np.exp(scores - scores.max())
            scores = exp / exp.sum()
        order = np.argsort(-scores, kind="stable")[:max(1, int(top_k))]
        return [(self.label(int(i)), float(scores[i])) for i in order]

    def classify_batch(self, images: Sequence[Any], top_k: int = 5) -> List[Prediction]:
        """:meth:`classify` for each image, in order."""
        return [self.classify(image, top_k) for image in images]

    def label(self, index: int) -> str:
        """The name of class ``index`` (its number when the model has no labels)."""
        return self.labels[index] if index < len(self.labels) else str(index)

    def close(self) -> None:
        """Release the interpreter."""
        with self._lock:
            self.model.backend = None  # type: ignore[assignment]

    def __enter__(self) -> "Classifier":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
