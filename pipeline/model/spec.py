"""What a model is, without TensorFlow: its architecture and shape (:class:`ModelSpec`) and the
input preprocessing its encoder expects (:func:`encoder_input`)."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from pipeline.model.architectures import ENCODER_ARCHITECTURES, VGG_FAMILY, architecture_problem, architecture_stride

# The encoders' own input preprocessing, on model input already scaled to [0, 1] by the artifact's
# normalisation. ``caffe`` is VGG16's (Keras' ``vgg16.preprocess_input``): RGB to BGR, then the ImageNet
# mean subtracted on the 0-255 scale; ``tf`` is MobileNetV2's: [-1, 1]; ``torch``: ImageNet mean and
# standard deviation per channel.
PREPROCESSING = ("none", "caffe", "tf", "torch")
TARGETS = ("classes", "borders")  # what a network is trained to predict: the classes, or also the borders between objects
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

PARAMETERS = {  # architecture -> the ModelSpec fields model.json records under "parameters" (output_activation too)
    "unet": ("depth", "base_filters", "batch_norm", "dropout"),
    "unet-vgg16": ("base_filters", "batch_norm", "dropout"),
    "fcn8": ("base_filters", "fc_filters", "dropout"),
    "segnet": ("base_filters",),
    "deeplabv3plus": ("width", "aspp_filters"),
    "imported": ("from_logits", "multiple", "free_input"),
    "kmeans": (),
}


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A model's architecture and shape. ``input_size`` must be a multiple of :attr:`stride`.

    ``output_activation="sigmoid"`` needs ``num_classes == 2`` and gives one output channel
    (probability of class 1); ``"softmax"`` gives ``num_classes`` channels. An imported model that
    returns logits has ``from_logits`` (the predictor applies the activation); one with free spatial
    input has ``free_input`` and takes sides that are multiples of ``multiple``. ``target="borders"``
    adds one softmax channel, class ``num_classes``: the borders where one object meets another
    (:func:`pipeline.objects.border_target`); a softmax network segpipe builds only.
    """

    architecture: str = "unet"
    input_size: tuple[int, int] = (64, 64)
    channels: int = 3
    num_classes: int = 2
    depth: int = 3
    base_filters: int = 8
    batch_norm: bool = True
    dropout: float = 0.0
    output_activation: str = "softmax"
    fc_filters: int = 1024
    width: float = 1.0
    aspp_filters: int = 256
    from_logits: bool = False
    multiple: int = 1
    free_input: bool = False
    target: str = "classes"

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_size", tuple(int(v) for v in self.input_size))
        if self.target not in TARGETS:
            raise ValueError(f"target {self.target!r}: one of {', '.join(TARGETS)}")
        if self.target == "borders" and (self.output_activation != "softmax" or not self.keras
                                         or self.architecture == "imported" or self.num_classes >= 255):
            raise ValueError("target borders: a softmax network segpipe builds, of fewer than 255 classes")
        problem = architecture_problem(self.architecture, self.input_size, self.channels, self.num_classes, self.depth,
                                       self.output_activation)
        if problem:
            raise ValueError(problem)

    @property
    def output_channels(self) -> int:
        """Return the number of model output channels (1 for sigmoid, ``num_classes`` for softmax, one
        more with border targets)."""
        return 1 if self.output_activation == "sigmoid" else self.label_classes

    @property
    def label_classes(self) -> int:
        """Return the classes of the model's training targets: ``num_classes``, and the border class with border targets."""
        return self.num_classes + (self.target == "borders")

    @property
    def stride(self) -> int:
        """Return what the model's input sides must be multiples of."""
        return self.multiple if self.architecture == "imported" else architecture_stride(self.architecture, self.depth)

    @property
    def keras(self) -> bool:
        """Return whether the model is a Keras network (not the K-means baseline)."""
        return self.architecture != "kmeans"

    @property
    def has_encoder(self) -> bool:
        """Return whether the architecture has a pretrainable encoder (VGG16 or MobileNetV2)."""
        return self.architecture in ENCODER_ARCHITECTURES

    def takes_size(self, size: tuple[int, int]) -> bool:
        """Return whether the model (or the free-size copy segmentation builds of it) takes inputs of ``size``."""
        if self.architecture == "imported" and not self.free_input:
            return tuple(size) == self.input_size
        return all(side >= self.stride and side % self.stride == 0 for side in size)

    def parameters(self) -> dict[str, Any]:
        """Return the architecture's parameters as model.json records them."""
        fields = dataclasses.asdict(self)
        parameters = {**{name: fields[name] for name in PARAMETERS[self.architecture]},
                      "output_activation": self.output_activation}
        return {**parameters, "target": self.target} if self.target != "classes" else parameters


def encoder_preprocessing(architecture: str, encoder_weights: str) -> str:
    """Return the preprocessing a model's encoder expects: its pretraining's, or ``none`` for random weights."""
    if encoder_weights in ("", "none"):
        return "none"
    return "caffe" if architecture in VGG_FAMILY else "tf"


def encoder_input(pixels: Any, mode: str) -> Any:
    """Return model input ``(n, h, w, C)`` in [0, 1] (NumPy or TensorFlow) preprocessed as ``mode`` says.

    ``caffe``: RGB to BGR, times 255, less the ImageNet mean per channel; ``tf``: times 2, less 1;
    ``torch``: less the ImageNet mean, over its standard deviation; ``none``: as it is.
    """
    if mode == "none":
        return pixels
    if mode == "caffe":
        return pixels[..., ::-1] * 255.0 - np.array(CAFFE_MEAN_BGR, dtype=np.float32)
    if mode == "tf":
        return pixels * 2.0 - 1.0
    if mode == "torch":
        return (pixels - np.array(IMAGENET_MEAN, dtype=np.float32)) / np.array(IMAGENET_STD, dtype=np.float32)
    raise ValueError(f"preprocessing {mode!r}: one of {', '.join(PREPROCESSING)}")
