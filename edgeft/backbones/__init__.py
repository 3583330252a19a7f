"""Backbones edgeft can fine-tune, and where their ImageNet weights come from."""

from edgeft.backbones.registry import REGISTRY, BackboneSpec, get_backbone

__all__ = ["REGISTRY", "BackboneSpec", "get_backbone"]
