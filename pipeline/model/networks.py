"""The Keras networks: the U-Net, a U-Net on VGG16, FCN-8s, SegNet and DeepLabv3+, as plain Keras 3
functional models (built-in layers plus the two registered ones of :mod:`pipeline.model.layers`).

Every builder takes the :class:`~pipeline.model.spec.ModelSpec` and ``free_size``: with it the input
takes any height and width that are multiples of ``spec.stride`` (the same layers and weights, for
windows of another size and whole images). The output is named ``scores``: per-pixel class
probabilities, ``(n, h, w, spec.output_channels)``.

The encoders keep Keras' layer names (``block1_conv1`` ... ``block5_pool`` for VGG16, MobileNetV2's
own), so pretrained weights are copied into them by name (:mod:`pipeline.model.encoders`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.model.spec import ModelSpec

BATCH_NORM_MOMENTUM = 0.9
VGG16_BLOCKS = (2, 2, 3, 3, 3)  # convolutions per block; filters base, 2 base, 4 base, 8 base, 8 base
ASPP_RATES = (6, 12, 18)
DEEPLAB_HIGH = "block_13_expand_relu"  # MobileNetV2 at output stride 16 (before block 13's stride)
DEEPLAB_LOW = "block_3_expand_relu"  # output stride 4, the decoder's low-level skip


def model_input(spec: ModelSpec, free_size: bool) -> Any:
    """Return the Keras input of a network for ``spec``: its tile, or free height and width."""
    import keras

    return keras.Input(shape=(*((None, None) if free_size else spec.input_size), spec.channels), name="image")


def scores_layer(spec: ModelSpec) -> Any:
    """Return the final activation (softmax over classes, or sigmoid) named ``scores``."""
    from keras import layers

    return layers.Activation(spec.output_activation, name="scores")


def conv_bn_relu(x: Any, filters: int, name: str, batch_norm: bool = True, kernel: int = 3, dilation: int = 1,
                 bias: bool = False) -> Any:
    """Return ``x`` through a convolution (with a bias if ``bias`` or no batch norm), batch normalisation
    (optional) and ReLU."""
    from keras import layers

    x = layers.Conv2D(filters, kernel, padding="same", dilation_rate=dilation, use_bias=bias or not batch_norm,
                      name=name)(x)
    if batch_norm:
        # Keras' default momentum (0.99) leaves the moving statistics far from the data after
        # the few hundred steps small training sets give; 0.9 (PyTorch's default) converges.
        x = layers.BatchNormalization(momentum=BATCH_NORM_MOMENTUM, name=f"{name}_bn")(x)
    return layers.Activation("relu", name=f"{name}_relu")(x)


def build_unet(spec: ModelSpec, free_size: bool = False) -> Any:
    """Return an uncompiled Keras U-Net for ``spec`` (encoder of ``depth`` levels, doubling filters)."""
    import keras
    from keras import layers

    def conv_block(x: Any, filters: int) -> Any:
        for _ in range(2):
            x = layers.Conv2D(filters, 3, padding="same", use_bias=not spec.batch_norm)(x)
            if spec.batch_norm:
                x = layers.BatchNormalization(momentum=BATCH_NORM_MOMENTUM)(x)
            x = layers.Activation("relu")(x)
        return x

    inputs = model_input(spec, free_size)
    x = inputs
    skips = []
    for level in range(spec.depth):
        x = conv_block(x, spec.base_filters * 2**level)
        skips.append(x)
        x = layers.MaxPooling2D(2)(x)
    x = conv_block(x, spec.base_filters * 2**spec.depth)
    if spec.dropout:
        x = layers.Dropout(spec.dropout)(x)
    for level in reversed(range(spec.depth)):
        x = layers.Conv2DTranspose(spec.base_filters * 2**level, 2, strides=2, padding="same")(x)
        x = layers.Concatenate()([x, skips[level]])
        x = conv_block(x, spec.base_filters * 2**level)
    outputs = layers.Conv2D(spec.output_channels, 1, activation=spec.output_activation, name="scores")(x)
    return keras.Model(inputs, outputs, name="unet")


def vgg16_filters(base: int, block: int) -> int:
    """Return the filters of VGG16's ``block`` (1-5) scaled to ``base`` filters in the first (64: VGG16)."""
    return base * min(2 ** (block - 1), 8)


def vgg16_blocks(x: Any, base: int, batch_norm: bool = False) -> tuple[list[Any], list[Any]]:
    """Return ``(before_pool, after_pool)``: each VGG16 block's last activation and its pooled output.

    Without ``batch_norm`` the layers are Keras' VGG16 (``include_top=False``) at ``base`` = 64, names
    included; with it (SegNet) each convolution is followed by batch normalisation, then ReLU.
    """
    from keras import layers

    before, after = [], []
    for block, convs in enumerate(VGG16_BLOCKS, start=1):
        for index in range(1, convs + 1):
            name = f"block{block}_conv{index}"
            if batch_norm:  # the bias kept, so that VGG16's weights copy in whole
                x = conv_bn_relu(x, vgg16_filters(base, block), name, bias=True)
            else:
                x = layers.Conv2D(vgg16_filters(base, block), 3, padding="same", activation="relu", name=name)(x)
        before.append(x)
        x = layers.MaxPooling2D(2, strides=2, name=f"block{block}_pool")(x)
        after.append(x)
    return before, after


def build_unet_vgg16(spec: ModelSpec, free_size: bool = False) -> Any:
    """Return a U-Net whose encoder is VGG16's convolutional blocks: the decoder upsamples from
    ``block5_pool`` (1/32) and joins ``block5_conv3`` ... ``block1_conv2``, halving its filters
    (``8 base`` ... ``base / 4``) at each of its five levels."""
    import keras
    from keras import layers

    inputs = model_input(spec, free_size)
    before, after = vgg16_blocks(inputs, spec.base_filters)
    x = after[-1]
    if spec.dropout:
        x = layers.Dropout(spec.dropout, name="center_dropout")(x)
    for level in reversed(range(5)):
        filters = max(1, spec.base_filters * 2**level // 4)
        x = layers.UpSampling2D(2, name=f"decoder{level + 1}_up")(x)
        x = layers.Concatenate(name=f"decoder{level + 1}_join")([x, before[level]])
        x = conv_bn_relu(x, filters, f"decoder{level + 1}_conv1", spec.batch_norm)
        x = conv_bn_relu(x, filters, f"decoder{level + 1}_conv2", spec.batch_norm)
    x = layers.Conv2D(spec.output_channels, 1, name="logits")(x)
    return keras.Model(inputs, scores_layer(spec)(x), name="unet_vgg16")


def bilinear_kernel(size: int, channels: int) -> np.ndarray:
    """Return a ``Conv2DTranspose`` kernel ``(size, size, channels, channels)`` that upsamples each
    channel bilinearly by ``size // 2`` (FCN's initialisation of its learnt upsampling)."""
    factor = (size + 1) // 2
    centre = factor - 1 if size % 2 == 1 else factor - 0.5
    grid = np.ogrid[:size, :size]
    weights = (1 - abs(grid[0] - centre) / factor) * (1 - abs(grid[1] - centre) / factor)
    kernel = np.zeros((size, size, channels, channels), dtype=np.float32)
    for channel in range(channels):
        kernel[:, :, channel, channel] = weights
    return kernel


def build_fcn8(spec: ModelSpec, free_size: bool = False) -> Any:
    """Return FCN-8s on VGG16 (Long et al.): fc6 (7x7) and fc7 (1x1) as convolutions on ``block5_pool``,
    1x1 score layers on it, ``block4_pool`` and ``block3_pool``, fused by learnt 2x, 2x and 8x
    upsampling (transposed convolutions initialised bilinear)."""
    import keras
    from keras import layers

    classes = spec.output_channels
    inputs = model_input(spec, free_size)
    _, pooled = vgg16_blocks(inputs, spec.base_filters)
    x = pooled[4]
    for name, kernel in (("fc6", 7), ("fc7", 1)):
        x = layers.Conv2D(spec.fc_filters, kernel, padding="same", activation="relu", name=name)(x)
        if spec.dropout:
            x = layers.Dropout(spec.dropout, name=f"{name}_dropout")(x)
    x = layers.Conv2D(classes, 1, name="score_fr")(x)
    upsampling = []
    for pool, name in ((pooled[3], "pool4"), (pooled[2], "pool3")):
        up = layers.Conv2DTranspose(classes, 4, strides=2, padding="same", use_bias=False, name=f"upscore_{name}")
        upsampling.append(up)
        x = layers.Add(name=f"fuse_{name}")([up(x), layers.Conv2D(classes, 1, name=f"score_{name}")(pool)])
    final = layers.Conv2DTranspose(classes, 16, strides=8, padding="same", use_bias=False, name="upscore8")
    upsampling.append(final)
    model = keras.Model(inputs, scores_layer(spec)(final(x)), name="fcn8")
    for layer in upsampling:
        layer.set_weights([bilinear_kernel(layer.kernel_size[0], classes)])
    return model


def build_segnet(spec: ModelSpec, free_size: bool = False) -> Any:
    """Return SegNet (Badrinarayanan et al.): VGG16's 13 convolutions with batch normalisation as the
    encoder; a mirrored decoder whose every level upsamples by the encoder's pooling indices
    (:class:`pipeline.model.layers.MaxUnpooling2D`) before its convolutions."""
    import keras
    from keras import layers

    from pipeline.model.layers import MaxUnpooling2D

    inputs = model_input(spec, free_size)
    before, after = vgg16_blocks(inputs, spec.base_filters, batch_norm=True)
    x = after[-1]
    for block in reversed(range(1, 6)):
        x = MaxUnpooling2D(name=f"decoder{block}_unpool")([x, before[block - 1]])
        convs = VGG16_BLOCKS[block - 1]
        for index in range(1, convs + 1):
            last = index == convs and block > 1
            filters = vgg16_filters(spec.base_filters, block - 1 if last else block)
            x = conv_bn_relu(x, filters, f"decoder{block}_conv{index}")
    x = layers.Conv2D(spec.output_channels, 1, name="logits")(x)
    return keras.Model(inputs, scores_layer(spec)(x), name="segnet")


def mobilenet_v2(inputs: Any, spec: ModelSpec) -> Any:
    """Return Keras' MobileNetV2 (``include_top=False``, random weights) on ``inputs``, at ``spec.width``."""
    import keras

    return keras.applications.MobileNetV2(input_tensor=inputs, include_top=False, weights=None, alpha=spec.width)


def build_deeplabv3plus(spec: ModelSpec, free_size: bool = False) -> Any:
    """Return DeepLabv3+ (Chen et al. 2018) on MobileNetV2 at output stride 16.

    ASPP on ``block_13_expand_relu`` (1/16): a 1x1 convolution, 3x3 atrous convolutions at rates
    6, 12 and 18, and image pooling, joined and projected to ``aspp_filters``; the decoder upsamples
    it 4x, joins ``block_3_expand_relu`` (1/4) projected to 48 channels, refines with two 3x3
    convolutions and upsamples 4x to the input. The backbone is MobileNetV2 rather than ResNet50 or
    Xception: about 10x fewer operations, which is what a CPU budget and wide GPU batches favour.
    """
    import keras
    from keras import layers

    from pipeline.model.layers import BroadcastTo

    inputs = model_input(spec, free_size)
    backbone = mobilenet_v2(inputs, spec)
    for layer in backbone.layers:
        if isinstance(layer, layers.BatchNormalization):
            layer.momentum = BATCH_NORM_MOMENTUM  # Keras' MobileNetV2 uses 0.999: too slow for short training
    high = backbone.get_layer(DEEPLAB_HIGH).output
    low = backbone.get_layer(DEEPLAB_LOW).output
    filters = spec.aspp_filters
    branches = [conv_bn_relu(high, filters, "aspp_1x1", kernel=1)]
    branches += [conv_bn_relu(high, filters, f"aspp_rate{rate}", dilation=rate) for rate in ASPP_RATES]
    pooled = layers.GlobalAveragePooling2D(keepdims=True, name="aspp_pool")(high)
    pooled = conv_bn_relu(pooled, filters, "aspp_pool_conv", kernel=1)
    branches.append(BroadcastTo(name="aspp_pool_broadcast")([pooled, high]))
    x = conv_bn_relu(layers.Concatenate(name="aspp_join")(branches), filters, "aspp_project", kernel=1)
    x = layers.UpSampling2D(4, interpolation="bilinear", name="decoder_up4")(x)
    x = layers.Concatenate(name="decoder_join")([x, conv_bn_relu(low, 48, "decoder_low", kernel=1)])
    x = conv_bn_relu(x, filters, "decoder_conv1")
    x = conv_bn_relu(x, filters, "decoder_conv2")
    x = layers.Conv2D(spec.output_channels, 1, name="logits")(x)
    x = layers.UpSampling2D(4, interpolation="bilinear", name="logits_up4")(x)
    return keras.Model(inputs, scores_layer(spec)(x), name="deeplabv3plus")


BUILDERS = {"unet": build_unet, "unet-vgg16": build_unet_vgg16, "fcn8": build_fcn8, "segnet": build_segnet,
            "deeplabv3plus": build_deeplabv3plus}


def build_model(spec: ModelSpec, free_size: bool = False) -> Any:
    """Return the uncompiled Keras network ``spec`` describes (random weights, bilinear upsampling for FCN-8s)."""
    if spec.architecture not in BUILDERS:
        raise ValueError(f"architecture {spec.architecture!r} is not a network segpipe builds")
    return BUILDERS[spec.architecture](spec, free_size)
