"""The architecture registry: which networks segpipe builds, what shapes each takes, and which
training settings each allows. The configuration holds values; this module says whether they
make a model (:func:`check_training_config`, run before any training work starts).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from pipeline.config import ConfigError

ARCHITECTURES = ("unet", "unet-vgg16", "fcn8", "segnet", "deeplabv3plus", "kmeans")  # what `segpipe train` builds
VGG_FAMILY = ("unet-vgg16", "fcn8", "segnet")  # on VGG16's convolutional blocks: five poolings
ENCODER_ARCHITECTURES = (*VGG_FAMILY, "deeplabv3plus")  # with an encoder that pretrained weights can start
MOBILENET_WIDTHS = (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)  # the widths Keras publishes ImageNet weights of MobileNetV2 for
DEFAULT_BASE_FILTERS = {"unet": 16, "unet-vgg16": 64, "fcn8": 64, "segnet": 64}  # 64: VGG16 itself
KMEANS_FEATURES = ("colour", "position", "texture")


def architecture_stride(architecture: str, depth: int = 3) -> int:
    """Return what an architecture's input sides must be multiples of: ``2**depth`` for the U-Net,
    32 on VGG16 (five poolings), 16 for DeepLabv3+ (its encoder stops at output stride 16), else 1."""
    if architecture == "unet":
        return 2**depth
    if architecture in VGG_FAMILY:
        return 32
    if architecture == "deeplabv3plus":
        return 16
    return 1


def base_filters(architecture: str, base_filters: int) -> int:
    """Return the first level's filters: ``base_filters``, or the architecture's default when 0."""
    return base_filters or DEFAULT_BASE_FILTERS.get(architecture, 16)


def architecture_problem(architecture: str, input_size: tuple[int, int], channels: int, num_classes: int, depth: int,
                         output_activation: str) -> str | None:
    """Return what is wrong with a model's shape (naming its ``model.*`` keys), or None.

    The one check of a model's fields, for the training config and for a model artifact's spec.
    """
    step = architecture_stride(architecture, depth)
    if architecture not in (*ARCHITECTURES, "imported"):
        return f"model.architecture={architecture!r}: choose one of {', '.join(ARCHITECTURES)}"
    if architecture != "imported" and any(side < step or side % step for side in input_size):
        why = "2**model.depth" if architecture == "unet" else f"what {architecture} takes"
        return (f"model.input_size={input_size[0] if input_size[0] == input_size[1] else input_size} is not divisible "
                f"by {why} = {step}: it must be a multiple of {why}")
    if output_activation not in ("softmax", "sigmoid"):
        return f"model.output_activation={output_activation!r}: choose softmax or sigmoid"
    if num_classes < 2:
        return f"model.num_classes={num_classes}: background plus at least one class"
    if output_activation == "sigmoid" and num_classes != 2:
        return "model.output_activation=sigmoid output needs num_classes=2; use softmax for more classes"
    if channels not in (1, 3):
        return f"model.channels={channels}: 1 (gray) or 3 (RGB)"
    return None


def encoder_problem(model: Any) -> str | None:
    """Return what is wrong with a model config's encoder settings for its architecture, or None."""
    weights, pretrained = model.encoder_weights, model.encoder_weights not in ("none", "")
    filters = base_filters(model.architecture, model.base_filters)
    if (pretrained or model.encoder_trainable_after) and model.architecture not in ENCODER_ARCHITECTURES:
        return (f"model.encoder_weights / encoder_trainable_after: architecture {model.architecture} has no "
                f"pretrainable encoder; use one of {', '.join(ENCODER_ARCHITECTURES)}")
    if weights == "imagenet":
        if model.channels != 3:
            return ("model.encoder_weights=imagenet takes RGB input: set model.channels=3 (gray images are then given "
                    "as three equal channels)")
        if model.architecture in VGG_FAMILY and filters != 64:
            return f"model.encoder_weights=imagenet is VGG16's own weights: leave model.base_filters at 64, not {filters}"
        if model.architecture == "deeplabv3plus" and model.width not in MOBILENET_WIDTHS:
            return (f"model.width={model.width:g}: ImageNet weights of MobileNetV2 exist for widths "
                    + ", ".join(f"{w:g}" for w in MOBILENET_WIDTHS))
    if model.architecture in VGG_FAMILY and filters < 1:
        return f"model.base_filters={model.base_filters}: at least 1"
    return None


def model_config_problem(model: Any) -> str | None:
    """Return what is wrong with a :class:`pipeline.config.ModelConfig` for its architecture, or None.

    Keys still left to the training plan (0) are checked at a value they may take; the planned
    config is checked again.
    """
    depth = model.depth or 3
    model = dataclasses.replace(model, depth=depth, channels=model.channels or 3,
                                input_size=model.input_size or architecture_stride(model.architecture, depth))
    problem = architecture_problem(model.architecture, (model.input_size, model.input_size), model.channels,
                                   model.class_count(), model.depth, model.output_activation)
    if problem or (problem := encoder_problem(model)):
        return problem
    if model.architecture == "kmeans":
        features = model.feature_list()
        if set(features) - set(KMEANS_FEATURES) or not features:
            return f"model.features={model.features!r}: comma-separated from {', '.join(KMEANS_FEATURES)}"
    return None


def check_model_config(model: Any) -> Any:
    """Return a :class:`pipeline.config.ModelConfig` unchanged; raise ConfigError if it makes no model."""
    problem = model_config_problem(model)
    if problem:
        raise ConfigError(problem)
    return model


def check_training_config(cfg: Any) -> Any:
    """Return a :class:`pipeline.config.TrainConfig` unchanged; raise ConfigError if its model or its
    patches do not fit the architecture (the checks that need the registry)."""
    model = check_model_config(cfg.model)
    step, patch = architecture_stride(model.architecture, model.depth), cfg.loader.patch_size
    if patch and not (0 < patch <= model.input_size and patch % step == 0):
        raise ConfigError(f"loader.patch_size={patch}: a multiple of {step} (what the model's input sides must be "
                          f"multiples of) up to input_size={model.input_size}, or 0 to train on whole tiles")
    return cfg
