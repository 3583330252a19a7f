"""The backbone registry: one entry per Keras application that fits an edge device.

Each entry knows its Keras constructor, its preprocessing, its default input size, how
its layers group into blocks (for ``--strategy partial --unfreeze N``) and the file name
Keras gives its ImageNet weights. Adding a backbone is adding one ``BackboneSpec``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable

from edgeft.errors import UnknownBackboneError, UsageError
from edgeft.preprocessing import IDENTITY, IMAGENET_MEAN_STD, MINUS_ONE_TO_ONE, Preprocessing

KERAS_APPLICATIONS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/"


@dataclass(frozen=True)
class BackboneSpec:
    """How to build, preprocess, split into blocks and find ImageNet weights for one backbone."""

    name: str
    keras_class: str  # attribute of tf_keras.applications
    default_size: int
    preprocessing: Preprocessing
    block_pattern: str  # regex over layer names; group 1 is the block id
    weights_file: Callable[[float | None, int], str]
    weights_url_dir: str
    summary: str
    alphas: tuple[float, ...] = ()
    default_alpha: float | None = None
    weights_sizes: tuple[int, ...] = ()  # sizes with their own ImageNet file (size-independent shapes)
    min_size: int = 32
    constructor_kwargs: dict[str, Any] = field(default_factory=dict)

    def check(self, alpha: float | None, image_size: int) -> float | None:
        """Validate alpha and size for this backbone; return the alpha to use."""
        if self.alphas:
            alpha = self.default_alpha if alpha is None else alpha
            if alpha not in self.alphas:
                allowed = ", ".join(str(a) for a in self.alphas)
                raise UsageError(f"--alpha {alpha} is not available for {self.name}; choose one of {allowed}")
        elif alpha is not None:
            raise UsageError(f"--alpha applies to MobileNet backbones only, not {self.name}")
        if image_size < self.min_size:
            raise UsageError(f"--image-size {image_size} is too small for {self.name} (minimum {self.min_size})")
        return alpha

    def construct(self, input_tensor: Any, weights: str | None, alpha: float | None) -> Any:
        """Build the headless Keras model on ``input_tensor`` (weights: None or an .h5 path)."""
        from edgeft.tfcompat import keras

        constructor = getattr(keras().applications, self.keras_class)
        kwargs: dict[str, Any] = dict(self.constructor_kwargs)
        if self.alphas:
            kwargs["alpha"] = alpha
        return constructor(include_top=False, weights=weights, input_tensor=input_tensor, **kwargs)

    def block_of(self, layer_names: list[str]) -> list[str]:
        """Block id of each layer, in order: stem layers get "stem", trailing layers the last block."""
        pattern = re.compile(self.block_pattern)
        blocks: list[str] = []
        current = "stem"
        for name in layer_names:
            match = pattern.match(name)
            if match:
                current = next((g for g in match.groups() if g), match.group(0))
            blocks.append(current)
        return blocks

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "keras_class": self.keras_class,
            "default_size": self.default_size,
            "alphas": list(self.alphas),
            "preprocessing": self.preprocessing.to_dict(),
            "summary": self.summary,
        }


def _alpha_text(alpha: float | None) -> str:
    return str(float(alpha if alpha is not None else 1.0))


def _mobilenet_v1_alpha(alpha: float | None) -> str:
    return {0.25: "2_5", 0.5: "5_0", 0.75: "7_5", 1.0: "1_0"}[float(alpha or 1.0)]


_SPECS = [
    BackboneSpec(
        name="mobilenet_v2",
        keras_class="MobileNetV2",
        default_size=224,
        preprocessing=MINUS_ONE_TO_ONE,
        block_pattern=r"^(?:block_(\d+)_|(expanded_conv)_)",
        weights_file=lambda a, s: f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{_alpha_text(a)}_{s}_no_top.h5",
        weights_url_dir=KERAS_APPLICATIONS_URL + "mobilenet_v2/",
        summary="MobileNetV2: 0.4-6.9 M params; the edge default",
        alphas=(0.35, 0.5, 0.75, 1.0, 1.3, 1.4),
        default_alpha=1.0,
        weights_sizes=(96, 128, 160, 192, 224),
    ),
    BackboneSpec(
        name="mobilenet",
        keras_class="MobileNet",
        default_size=224,
        preprocessing=MINUS_ONE_TO_ONE,
        block_pattern=r"^conv_(?:dw|pw|pad)_(\d+)",
        weights_file=lambda a, s: f"mobilenet_{_mobilenet_v1_alpha(a)}_{s}_tf_no_top.h5",
        weights_url_dir=KERAS_APPLICATIONS_URL + "mobilenet_v1/",
        summary="MobileNet v1: simplest ops, best Edge TPU coverage",
        alphas=(0.25, 0.5, 0.75, 1.0),
        default_alpha=1.0,
        weights_sizes=(128, 160, 192, 224),
    ),
    BackboneSpec(
        name="mobilenet_v3_small",
        keras_class="MobileNetV3Small",
        default_size=224,
        preprocessing=IDENTITY,  # the Keras model rescales internally
        block_pattern=r"^expanded_conv_?(\d*)/",
        weights_file=lambda a, s: f"weights_mobilenet_v3_small_224_{_alpha_text(a)}_float_no_top_v2.h5",
        weights_url_dir=KERAS_APPLICATIONS_URL + "mobilenet_v3/",
        summary="MobileNetV3-Small: smallest, hard-swish (check your delegate)",
        alphas=(0.75, 1.0),
        default_alpha=1.0,
    ),
    BackboneSpec(
        name="mobilenet_v3_large",
        keras_class="MobileNetV3Large",
        default_size=224,
        preprocessing=IDENTITY,
        block_pattern=r"^expanded_conv_?(\d*)/",
        weights_file=lambda a, s: f"weights_mobilenet_v3_large_224_{_alpha_text(a)}_float_no_top_v2.h5",
        weights_url_dir=KERAS_APPLICATIONS_URL + "mobilenet_v3/",
        summary="MobileNetV3-Large",
        alphas=(0.75, 1.0),
        default_alpha=1.0,
    ),
    *[
        BackboneSpec(
            name=f"efficientnet_b{i}",
            keras_class=f"EfficientNetB{i}",
            default_size=size,
            preprocessing=IDENTITY,  # Rescaling + Normalization live inside the Keras model
            block_pattern=r"^block(\d[a-z])_",
            weights_file=lambda a, s, i=i: f"efficientnetb{i}_notop.h5",
            weights_url_dir="https://storage.googleapis.com/keras-applications/",
            summary=f"EfficientNet-B{i}" + (": accurate, squeeze-excite" if i == 0 else ""),
        )
        for i, size in enumerate((224, 240, 260, 300, 380, 456, 528, 600))
    ],
    BackboneSpec(
        name="resnet50_v2",
        keras_class="ResNet50V2",
        default_size=224,
        preprocessing=MINUS_ONE_TO_ONE,
        block_pattern=r"^(conv\d_block\d+)_",
        weights_file=lambda a, s: "resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5",
        weights_url_dir=KERAS_APPLICATIONS_URL + "resnet/",
        summary="ResNet50V2: 23.6 M params, for a Pi 5 or Jetson",
    ),
    BackboneSpec(
        name="densenet121",
        keras_class="DenseNet121",
        default_size=224,
        preprocessing=IMAGENET_MEAN_STD,
        block_pattern=r"^(conv\d_block\d+)_",
        weights_file=lambda a, s: "densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5",
        weights_url_dir=KERAS_APPLICATIONS_URL + "densenet/",
        summary="DenseNet121: 7 M params",
    ),
    BackboneSpec(
        name="nasnet_mobile",
        keras_class="NASNetMobile",
        default_size=224,
        preprocessing=MINUS_ONE_TO_ONE,
        block_pattern=r"^(?:normal|reduction)_\w+?_(\d+)$|^(?:normal|reduction)_[a-z_]+(\d+)",
        weights_file=lambda a, s: "NASNet-mobile-no-top.h5",
        weights_url_dir=KERAS_APPLICATIONS_URL + "nasnet/",
        summary="NASNetMobile: 4.3 M params",
        min_size=224,
    ),
]

REGISTRY: dict[str, BackboneSpec] = {spec.name: spec for spec in _SPECS}


def get_backbone(name: str) -> BackboneSpec:
    """Look up a backbone by name, or raise a one-line error listing the known ones."""
    key = name.strip().lower().replace("-", "_")
    aliases = {"mobilenetv2": "mobilenet_v2", "efficientnetb0": "efficientnet_b0", "effnet_b0": "efficientnet_b0"}
    key = aliases.get(key, key)
    if key not in REGISTRY:
        raise UnknownBackboneError(f"unknown backbone '{name}'; choose one of: {', '.join(REGISTRY)}")
    return REGISTRY[key]
