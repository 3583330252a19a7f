"""Real transfer learning on the ants-vs-bees photos with real ImageNet weights (slow; CI runs it)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import HYMENOPTERA, SHARED_WEIGHTS, require_shared, run_edgeft


@pytest.mark.slow
def test_head_strategy_reaches_087_on_hymenoptera(tmp_path: Path) -> None:
    data = require_shared(HYMENOPTERA)
    weights = require_shared(SHARED_WEIGHTS)
    # --weights imagenet must find Keras' file name through $EDGEFT_WEIGHTS_DIR (no download).
    result = run_edgeft(
        "finetune", str(data), "--backbone", "mobilenet_v2", "--alpha", "0.35", "--image-size", "224",
        "--weights", "imagenet", "--strategy", "head", "--json", "--out", str(tmp_path / "run"),
        env={"EDGEFT_WEIGHTS_DIR": str(weights.parent), "EDGEFT_OFFLINE": "1"},
    )
    assert result.exit_code == 0, result.stderr[-2000:]
    summary = json.loads(result.stdout)
    assert summary["weights"] == "local"
    assert summary["val_accuracy"] >= 0.87, summary
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["val"]["count"] == 153


@pytest.mark.slow
def test_other_size_weights_are_used_with_a_warning(tmp_path: Path) -> None:
    data = require_shared(HYMENOPTERA)
    weights = require_shared(SHARED_WEIGHTS)
    result = run_edgeft(
        "finetune", str(data), "--alpha", "0.35", "--image-size", "96", "--epochs", "8", "--json",
        "--out", str(tmp_path / "run"),
        env={"EDGEFT_WEIGHTS_DIR": str(weights.parent), "EDGEFT_OFFLINE": "1"},
    )
    assert result.exit_code == 0, result.stderr[-2000:]
    assert ("warning: mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_96_no_top.h5 not found; using "
            "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5") in result.stderr
    # Real features at 96 px: well above the 0.5 of a coin flip.
    assert json.loads(result.stdout)["val_accuracy"] >= 0.7
