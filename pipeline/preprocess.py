"""Pure functions that decode, normalise and resize images and masks, and encode masks.

Array conventions: images are ``(H, W, C)`` with ``C`` in {1, 3}, ``uint8`` or ``uint16`` as
decoded; model inputs are ``float32 (h, w, C)``; masks are ``uint8 (H, W)`` class indices;
scores are ``(h, w, K)`` class probabilities with ``K = 1`` (sigmoid, probability of class 1) or
``K = num_classes`` (softmax), as floats or as uint8 levels (see :func:`quantise_scores`).
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

import numpy as np
from PIL import Image

EIGHT_BIT_MODES = {"1": "L", "L": "L", "LA": "L", "P": "RGB", "PA": "RGB", "RGB": "RGB", "RGBA": "RGB"}
SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I"}


class SampleError(ValueError):
    """One image or mask cannot be used; the message says what is wrong (the caller adds the key)."""


def open_image(data: bytes, what: str = "image") -> Image.Image:
    """Return the fully decoded first frame of an encoded image; raise SampleError if corrupt."""
    if not data:
        raise SampleError(f"{what} file is empty")
    try:
        picture = Image.open(io.BytesIO(data))
        picture.load()
    except Image.UnidentifiedImageError as exc:
        raise SampleError(
            f"{what} cannot be decoded: not a recognised image format (PNG, JPEG, TIFF, BMP, WebP) or corrupt"
        ) from exc
    except Exception as exc:  # PIL raises several types for corrupt and truncated files
        raise SampleError(f"{what} cannot be decoded ({type(exc).__name__}: {exc}); the file is corrupt or truncated") from exc
    return picture


def decode_image(data: bytes) -> np.ndarray:
    """Return the image as ``(H, W, C)``, C in {1, 3}, uint8 (8-bit input) or uint16 (16-bit input).

    Accepts 1-bit, 8-bit and 16-bit grayscale, palette, RGB and RGBA (alpha dropped). Other modes
    (CMYK, float, YCbCr, ...) raise SampleError saying how to convert them.
    """
    picture = open_image(data)
    mode = picture.mode
    if mode in EIGHT_BIT_MODES:
        array = np.asarray(picture.convert(EIGHT_BIT_MODES[mode]), dtype=np.uint8)
    elif mode in SIXTEEN_BIT_MODES:
        array = np.asarray(picture)
        if array.dtype != np.uint16:
            if array.size and (array.min() < 0 or array.max() > 65535):
                raise SampleError(f"image mode {mode} holds values outside 0..65535; save it as 8- or 16-bit")
            array = array.astype(np.uint16)
    else:
        raise SampleError(
            f"unsupported image mode {mode!r}; convert it to 8- or 16-bit grayscale or RGB (e.g. PNG)"
        )
    if array.ndim == 2:
        array = array[:, :, np.newaxis]
    return array


def normalise(image: np.ndarray, normalization: Mapping[str, Any]) -> np.ndarray:
    """Return ``image`` as float32 scaled per ``normalization``.

    ``{"mode": "scale"}`` divides by the type's maximum (255 or 65535) to [0, 1];
    ``{"mode": "minmax"}`` maps each image's own minimum..maximum to [0, 1] (a constant image to 0).
    Optional ``mean`` and ``std`` (scalars or per channel) are applied afterwards.
    """
    mode = normalization.get("mode", "scale")
    pixels = image.astype(np.float32)
    if mode == "scale":
        pixels /= float(np.iinfo(image.dtype).max) if np.issubdtype(image.dtype, np.integer) else 1.0
    elif mode == "minmax":
        low, high = float(pixels.min()), float(pixels.max())
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
    raise SampleError(f"image has {have} channels; the model takes {channels}")


def resize_channels(array: np.ndarray, height: int, width: int, resample: Image.Resampling) -> np.ndarray:
    """Return a ``(height, width, K)`` resize of a ``(h, w, K)`` array, channel by channel.

    uint8 stays uint8 (same value scale); anything else becomes float32.
    """
    as_bytes = array.dtype == np.uint8
    if array.shape[:2] == (height, width):
        return array if as_bytes else array.astype(np.float32, copy=False)
    planes = [
        np.asarray(Image.fromarray(plane if as_bytes else plane.astype(np.float32), mode="L" if as_bytes else "F")
                   .resize((width, height), resample))
        for plane in (array[:, :, k] for k in range(array.shape[2]))
    ]
    return np.stack(planes, axis=-1)


def model_input(image: np.ndarray, tile: tuple[int, int], channels: int, normalization: Mapping[str, Any]) -> np.ndarray:
    """Return the model's float32 ``(tile_h, tile_w, channels)`` input for a decoded image."""
    pixels = normalise(match_channels(image, channels), normalization)
    return resize_channels(pixels, tile[0], tile[1], Image.Resampling.BILINEAR)


def decode_mask(data: bytes, num_classes: int, image_shape: tuple[int, int]) -> np.ndarray:
    """Return a ground-truth mask as uint8 ``(H, W)`` class indices.

    The file must be a single-channel image of the image's size. A binary mask holding only 0 and
    255 is read as classes {0, 1}. Values outside ``0..num_classes-1`` raise SampleError.
    """
    picture = open_image(data, "mask")
    if picture.mode not in ("1", "L", "P", "I", "I;16", "I;16L", "I;16B"):
        raise SampleError(f"mask has mode {picture.mode!r}; save masks as single-channel class-index PNGs")
    mask = np.asarray(picture.convert("L") if picture.mode == "1" else picture)
    if mask.shape != tuple(image_shape):
        raise SampleError(
            f"mask size {mask.shape[1]}x{mask.shape[0]} differs from image size "
            f"{image_shape[1]}x{image_shape[0]}; masks must match their images pixel for pixel"
        )
    if mask.dtype != np.uint8 and mask.size and (mask.min() < 0 or mask.max() > 65535):
        raise SampleError("mask holds values outside 0..65535; save masks as 8-bit class-index PNGs")
    present = np.flatnonzero(np.bincount(mask.ravel().astype(np.int64, copy=False), minlength=1))
    if present.size and present[-1] == 255 and set(present.tolist()) <= {0, 255}:
        return (mask == 255).astype(np.uint8)
    if present.size and present[-1] >= num_classes:
        bad = [int(v) for v in present if v >= num_classes]
        raise SampleError(
            f"mask holds class values {bad[:5]} but the model has {num_classes} classes (0..{num_classes - 1})"
        )
    return mask.astype(np.uint8, copy=False)


SCORE_LEVELS = 255  # scores travel between stages as uint8: probability * 255, rounded


def quantise_scores(probabilities: np.ndarray) -> np.ndarray:
    """Return probabilities in [0, 1] as uint8 levels ``round(p * 255)`` (4x smaller than float32)."""
    return np.rint(np.clip(probabilities, 0.0, 1.0) * SCORE_LEVELS).astype(np.uint8)


def mask_from_scores(scores: np.ndarray, threshold: float) -> np.ndarray:
    """Return uint8 ``(H, W)`` class indices from ``(H, W, K)`` scores: ``p >= threshold`` for K=1, argmax otherwise.

    Scores are probabilities, as floats in [0, 1] or uint8 levels (see :func:`quantise_scores`).
    """
    if scores.shape[-1] == 1:
        level = threshold * SCORE_LEVELS if scores.dtype == np.uint8 else threshold
        return (scores[:, :, 0] >= level).astype(np.uint8)
    return np.argmax(scores, axis=-1).astype(np.uint8)


def mask_at_size(scores: np.ndarray, height: int, width: int, threshold: float) -> np.ndarray:
    """Return the class-index mask at ``(height, width)``: scores are resized bilinearly, then decided."""
    if scores.shape[:2] != (height, width):
        scores = resize_channels(scores, height, width, Image.Resampling.BILINEAR)
    return mask_from_scores(scores, threshold)


def encode_png(array: np.ndarray, compress_level: int = 6) -> bytes:
    """Return ``array`` encoded as a lossless PNG.

    Accepts uint8 ``(H, W)`` (grey, e.g. a class-index mask), uint8 ``(H, W, 3)`` (RGB),
    uint8 ``(H, W, 4)`` (RGBA) or uint16 ``(H, W)`` (16-bit grey). ``compress_level`` 1 is
    several times faster than the default 6 and costs little on class-index masks.
    """
    array = np.asarray(array)
    grey = array.ndim == 2 and array.dtype in (np.uint8, np.uint16)
    colour = array.ndim == 3 and array.shape[2] in (3, 4) and array.dtype == np.uint8
    if not (grey or colour):
        raise ValueError(
            f"cannot encode an array of shape {array.shape} and dtype {array.dtype} as PNG; "
            "give uint8 (H, W), (H, W, 3) or (H, W, 4), or uint16 (H, W)"
        )
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="PNG", compress_level=compress_level)
    return buffer.getvalue()
