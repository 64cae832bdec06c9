"""Images in and out, one chain for training and segmentation (a leaf: imports nothing of segpipe's but
:mod:`pipeline.errors`).

- :mod:`~pipeline.imaging.codecs`: decode images (Pillow, tifffile), encode PNGs.
- :mod:`~pipeline.imaging.normalise`: channels matched to the model, values to float32.
- :mod:`~pipeline.imaging.resize`: the resize chain (own type, then normalise) and native-size reads.
- :mod:`~pipeline.imaging.labels`: class-index masks and instance label images.
- :mod:`~pipeline.imaging.scores`: model scores to masks (and each pixel's confidence).
"""

from pipeline.errors import SampleError
from pipeline.imaging.codecs import (
    DEFAULT_MAX_IMAGE_PIXELS,
    decode_image,
    encode_png,
    image_orientation,
    is_tiff,
    read_tiff,
)
from pipeline.imaging.labelmap import IGNORE, MAX_CLASSES, LabelMap
from pipeline.imaging.labels import (
    decode_instances,
    decode_mask,
    decode_mask_counted,
    encode_instances,
    labels_at_size,
)
from pipeline.imaging.normalise import match_channels, normalise
from pipeline.imaging.resize import (
                                     extremes,
                                     model_input,
                                     read_model_input,
                                     read_native,
                                     read_tile,
                                     resize_channels,
                                     resize_image,
                                     tile_input,
)
from pipeline.imaging.scores import (
                                     SCORE_LEVELS,
                                     decide,
                                     decided,
                                     mask_and_confidence_at_size,
                                     mask_at_size,
                                     mask_from_scores,
                                     quantise_scores,
)

__all__ = [
    "DEFAULT_MAX_IMAGE_PIXELS", "IGNORE", "LabelMap", "MAX_CLASSES", "SCORE_LEVELS", "SampleError", "decide", "extremes", "decided", "decode_image", "decode_instances",
    "decode_mask", "decode_mask_counted", "encode_instances", "encode_png", "image_orientation", "is_tiff", "labels_at_size", "mask_and_confidence_at_size", "mask_at_size",
    "mask_from_scores", "match_channels", "model_input", "normalise", "quantise_scores", "read_model_input",
    "read_native", "read_tiff", "read_tile", "resize_channels", "resize_image", "tile_input",
]
