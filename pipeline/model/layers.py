"""segpipe's own Keras layers, registered by name so that ``.keras`` files holding them load with
``safe_mode=True``.

A ``.keras`` file names each layer by its registered class (``segpipe>MaxUnpooling2D``) and its
config; loading looks the name up among the classes registered in the running process, so no code
is read from the file. Importing this module (as :func:`pipeline.model.artifact.load_artifact`
does) registers them. Both are written with ``keras.ops`` only: backend-independent and compiled
by XLA like any built-in layer.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="segpipe")
class MaxUnpooling2D(keras.layers.Layer):
    """SegNet's upsampling by pooling indices: ``[values, features]`` to ``features``' shape.

    ``features`` ``(n, h, w, c)`` is what a 2x2 max pooling of stride 2 took; ``values``
    ``(n, h/2, w/2, c)`` lands, in each 2x2 window, where ``features`` had its maximum (the first
    in row-major order on ties) and zero elsewhere. The indices are found again from ``features``
    rather than kept from ``tf.nn.max_pool_with_argmax``, which XLA does not compile.
    """

    def call(self, inputs: Any) -> Any:
        values, features = inputs
        shape = ops.shape(features)
        rows, cols, channels = shape[1] // 2, shape[2] // 2, shape[3]
        windows = ops.reshape(features, (-1, rows, 2, cols, 2, channels))
        windows = ops.reshape(ops.transpose(windows, (0, 1, 3, 5, 2, 4)), (-1, rows, cols, channels, 4))
        chosen = ops.one_hot(ops.argmax(windows, axis=-1), 4, dtype=values.dtype)
        placed = ops.reshape(chosen * ops.expand_dims(values, -1), (-1, rows, cols, channels, 2, 2))
        return ops.reshape(ops.transpose(placed, (0, 1, 4, 2, 5, 3)), (-1, rows * 2, cols * 2, channels))

    def compute_output_shape(self, input_shape: Any) -> Any:
        return input_shape[1]


@keras.saving.register_keras_serializable(package="segpipe")
class BroadcastTo(keras.layers.Layer):
    """``[pooled, like]`` to ``pooled`` ``(n, 1, 1, c)`` repeated over ``like``'s height and width
    (DeepLab's image-pooling branch, for inputs of any size)."""

    def call(self, inputs: Any) -> Any:
        pooled, like = inputs
        shape = ops.shape(like)
        return ops.broadcast_to(pooled, (shape[0], shape[1], shape[2], ops.shape(pooled)[3]))

    def compute_output_shape(self, input_shape: Any) -> Any:
        return (*input_shape[1][:3], input_shape[0][3])
