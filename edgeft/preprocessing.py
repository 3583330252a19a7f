"""How pixels become model input: ``input = pixel * scale + offset`` per channel.

Pure numpy, so the on-device runtime can apply it without TensorFlow. Every run
directory and every exported artifact records one of these.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Preprocessing:
    """Per-channel affine map from 0..255 RGB pixels to the model's input range."""

    scale: tuple[float, float, float] = (1.0, 1.0, 1.0)
    offset: tuple[float, float, float] = (0.0, 0.0, 0.0)
    channel_order: str = "RGB"

    @classmethod
    def uniform(cls, scale: float, offset: float, channel_order: str = "RGB") -> "Preprocessing":
        return cls((scale,) * 3, (offset,) * 3, channel_order)

    def apply(self, images: np.ndarray) -> np.ndarray:
        """Map uint8 RGB images (..., H, W, 3) to float32 model input."""
        pixels = images.astype(np.float32)
        if self.channel_order == "BGR":
            pixels = pixels[..., ::-1]
        return pixels * np.asarray(self.scale, np.float32) + np.asarray(self.offset, np.float32)

    def to_dict(self) -> dict[str, Any]:
        return {
            "formula": "input = pixel * scale + offset (pixel: 0..255, per channel)",
            "scale": list(self.scale),
            "offset": list(self.offset),
            "channel_order": self.channel_order,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Preprocessing":
        return cls(
            tuple(float(v) for v in data["scale"]),  # type: ignore[arg-type]
            tuple(float(v) for v in data["offset"]),  # type: ignore[arg-type]
            str(data.get("channel_order", "RGB")),
        )


IDENTITY = Preprocessing()
MINUS_ONE_TO_ONE = Preprocessing.uniform(1.0 / 127.5, -1.0)
IMAGENET_MEAN_STD = Preprocessing(
    scale=(1 / (255 * 0.229), 1 / (255 * 0.224), 1 / (255 * 0.225)),
    offset=(-0.485 / 0.229, -0.456 / 0.224, -0.406 / 0.225),
)
