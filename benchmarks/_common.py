"""What the benchmark scripts share: where the repository and the offline assets are (never the tests' code)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
MOBILENET_035_WEIGHTS = SHARED / "weights" / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5"
HYMENOPTERA = SHARED / "datasets" / "hymenoptera_data"
