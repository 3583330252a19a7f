"""edgeft.runtime.Classifier on Google's int8 MobileNetV2 (a model edgeft did not make)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import SHARED
MODEL = SHARED / "models" / "tf2_mobilenet_v2_1.0_224_ptq.tflite"
pytestmark = pytest.mark.skipif(not MODEL.is_file(), reason="../shared/models is absent (a user's checkout)")


def _cat() -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(SHARED / "models" / "cat.bmp").convert("RGB"))


def test_classifier_finds_the_cat_with_labels_file():
    from edgeft.runtime import Classifier

    classifier = Classifier.load(MODEL, labels=SHARED / "models" / "imagenet_labels.txt")
    top = classifier.classify(_cat(), top_k=3)
    assert top[0][0] in ("Egyptian cat", "tabby, tabby cat", "tiger cat")
    assert 0.3 < top[0][1] <= 1.0


def test_classifier_uses_sidecar_labels_and_quantizes_float_preprocessing(tmp_path):
    from edgeft.runtime import Classifier

    model = tmp_path / "model_int8.tflite"
    model.write_bytes(MODEL.read_bytes())
    labels = (SHARED / "models" / "imagenet_labels.txt").read_text().splitlines()
    # The sidecar states the float preprocessing; the runtime quantizes with the model's input parameters.
    (tmp_path / "model_int8.tflite.json").write_text(json.dumps({
        "labels": labels, "input_size": 224,
        "preprocessing": {"scale": [1 / 127.5] * 3, "offset": [-1.0] * 3, "channel_order": "RGB"}}))
    top = Classifier.load(model).classify(_cat(), top_k=1)
    assert top[0][0] in ("Egyptian cat", "tabby, tabby cat", "tiger cat")


def test_classifier_rejects_bad_input_and_missing_model(tmp_path):
    from edgeft.errors import ModelFileError, UsageError
    from edgeft.runtime import Classifier

    with pytest.raises(ModelFileError):
        Classifier.load(tmp_path / "nope.tflite")
    with pytest.raises(UsageError):
        Classifier.load(MODEL).classify(np.zeros((4, 4), np.float32))


def test_runtime_does_not_import_tensorflow():
    code = ("import sys; from edgeft.runtime import Classifier; c = Classifier.load(%r); "
            "import numpy as np; c.classify(np.zeros((224, 224, 3), np.uint8)); "
            "print('tensorflow' in sys.modules)" % str(MODEL))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
