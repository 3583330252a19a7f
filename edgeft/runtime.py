"""Embed an exported model in a Python app: numpy, Pillow and one interpreter, no TensorFlow.

    from edgeft.runtime import Classifier

    with Classifier.load("export/model_int8.tflite") as classifier:
        classifier.classify("photo.jpg")     # [("tabby", 0.61), ...]; also a PIL image or uint8 array

Labels and preprocessing come from the model file's embedded ``edgeft.metadata``, else its
sidecar ``<model>.json``; ``labels=``, ``scale=``, ``offset=``, ``channel_order=`` replace them
for a model edgeft did not make. Images are decoded and resized as training decodes them (EXIF
orientation, transparency over white, Pillow's bilinear filter), so an app fed the original
files gets the accuracy export measured. One classifier may be shared by threads: a lock
serializes the interpreter, decoding runs in parallel. This is the device layer's
:class:`edgeft.targets.classifier.Classifier` (the same code a bundle runs from
``edgeft-device.pyz``) with edgeft's errors: :class:`~edgeft.errors.ModelFileError` for the
model, :class:`~edgeft.errors.UsageError` for arguments, :class:`~edgeft.errors.ImageError`
for images.
"""

from __future__ import annotations

import os
from typing import Any, Optional, Sequence, Union

import numpy as np

from edgeft.errors import CorruptModelError, ImageError, ModelFileError, UsageError
from edgeft.targets import ArgumentError, DeviceError, ModelCorruptError
from edgeft.targets import Classifier as DeviceClassifier
from edgeft.targets import ImageError as DeviceImageError

Prediction = list[tuple[str, float]]

__all__ = ["Classifier", "Prediction"]


class Classifier(DeviceClassifier):
    """An image classifier in ai-edge-litert / tflite-runtime / tf.lite, or onnxruntime (see the module doc)."""

    @classmethod
    def load(cls, path: Union[str, "os.PathLike[str]"], threads: int = 1,
             labels: Union[str, "os.PathLike[str]", Sequence[str], None] = None,
             scale: Any = None, offset: Any = None, channel_order: Optional[str] = None,
             runtime: str = "auto", delegate: Optional[str] = None) -> "Classifier":
        """Load a ``.tflite`` or ``.onnx`` model; raises ModelFileError or UsageError with one line."""
        try:
            return super().load(path, threads, labels, scale, offset, channel_order, runtime, delegate)  # type: ignore[return-value]
        except ArgumentError as error:
            raise UsageError(str(error)) from None
        except ModelCorruptError as error:  # a ModelFileError too: damaged, not merely unloadable here
            raise CorruptModelError(str(error)) from None
        except DeviceError as error:
            raise ModelFileError(str(error)) from None

    def scores(self, image: Any) -> np.ndarray:
        """Real-valued scores (float32, one per class) for a path, PIL image or uint8 array."""
        try:
            return super().scores(image)
        except DeviceImageError as error:
            raise ImageError(str(error)) from None
        except DeviceError as error:
            raise ModelFileError(str(error)) from None
