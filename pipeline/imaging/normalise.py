"""Pixel values to model input: channels matched to the model, values normalised to float32."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from pipeline.errors import ErrorKind, SampleError


def normalise(image: np.ndarray, normalization: Mapping[str, Any],
              value_range: tuple[Any, Any] | None = None) -> np.ndarray:
    """Return ``image`` as float32 scaled per ``normalization``.

    ``{"mode": "scale"}`` divides by the type's maximum (255 or 65535) to [0, 1];
    ``{"mode": "minmax"}`` maps each image's own minimum..maximum to [0, 1] (a constant image to 0);
    ``value_range`` gives them where the image was measured before a resize (Pillow's
    ``getextrema()``: one pair, or one pair per channel, of which the overall extremes are used).
    Optional ``mean`` and ``std`` (scalars or per channel) are applied afterwards.
    """
    mode = normalization.get("mode", "scale")
    pixels = image.astype(np.float32)
    if mode == "scale":
        pixels /= float(np.iinfo(image.dtype).max) if np.issubdtype(image.dtype, np.integer) else 1.0
    elif mode == "minmax":
        if value_range is None:
            low, high = float(pixels.min()), float(pixels.max())
        else:
            flat = np.asarray(value_range, dtype=np.float64).reshape(-1, 2)
            low, high = float(flat[:, 0].min()), float(flat[:, 1].max())
        pixels = (pixels - low) / (high - low) if high > low else np.zeros_like(pixels)
    else:
        raise ValueError(f"unknown normalization mode {mode!r}; expected 'scale' or 'minmax'")
    if "mean" in normalization:
        pixels -= np.asarray(normalization["mean"], dtype=np.float32)
    if "std" in normalization:
        pixels /= np.asarray(normalization["std"], dtype=np.float32)
    return pixels


def match_channels(image: np.ndarray, channels: int) -> np.ndarray:
    """Return ``image`` with ``channels`` channels: gray is repeated to RGB, RGB averaged to gray
    with ITU-R 601 luma weights."""
    have = image.shape[-1]
    if have == channels:
        return image
    if have == 1 and channels == 3:
        return np.repeat(image, 3, axis=-1)
    if have == 3 and channels == 1:
        weights = np.array([0.299, 0.587, 0.114], dtype=np.float32)
        return (image.astype(np.float32) @ weights)[:, :, np.newaxis].astype(image.dtype)
    raise SampleError(f"image has {have} channels; the model takes {channels}", ErrorKind.UNSUPPORTED_IMAGE)
