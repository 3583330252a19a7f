"""Quantization-aware training (``edgeft qat``) and the QuantizeConfigs it uses."""

from __future__ import annotations

from typing import Any


def main_qat(config: Any) -> dict[str, Any]:
    """Run quantization-aware fine-tuning (see :func:`edgeft.quantization.qat.main_qat`)."""
    from edgeft.quantization.qat import main_qat as run

    return run(config)


__all__ = ["main_qat"]
