"""Quantization-aware training (``edgeft qat``) and the QuantizeConfigs it uses."""

from __future__ import annotations

from typing import Any


def keras_custom_objects() -> dict[str, Any]:
    """Custom objects needed to load a QAT run's ``model.keras`` (used by :func:`edgeft.tfcompat.load_keras_model`).

    Returns an empty dict when tfmot is not installed, so float runs still load.
    """
    try:
        import tensorflow_model_optimization  # noqa: F401
    except ImportError:
        return {}
    from edgeft.quantization.configs import custom_objects

    return custom_objects()


def main_qat(config: Any) -> dict[str, Any]:
    """Run quantization-aware fine-tuning (see :func:`edgeft.quantization.qat.main_qat`)."""
    from edgeft.quantization.qat import main_qat as run

    return run(config)


__all__ = ["keras_custom_objects", "main_qat"]
