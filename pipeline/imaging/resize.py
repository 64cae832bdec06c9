"""Images brought to the model's tile, or kept at their own size: the one chain that training at
``scale: resize`` and segmentation in resize mode share.

The chain, in this order: decode (a JPEG larger than the tile is decoded at the smallest of 1/2,
1/4 or 1/8 of its size that still covers the tile), note the image's value range (for the
``minmax`` normalisation), resize to the tile in the image's own type (8-bit stays 8-bit, 16-bit
stays 16-bit: Pillow's bilinear filter), match the model's channels, then normalise to float32
(:func:`pipeline.imaging.normalise.normalise`). :func:`read_tile` does everything but the last
step, so the tile travels at its own type; :func:`tile_input` does the last.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from PIL import Image

from pipeline.imaging.codecs import (
    DEFAULT_MAX_IMAGE_PIXELS,
    displayed,
    displayed_size,
    is_tiff,
    load_picture,
    open_header,
    open_image,
    orientation_of,
    picture_array,
    read_tiff,
    usable_picture,
)
from pipeline.imaging.normalise import match_channels, normalise

ValueRange = tuple[float, float]


def value_range_of(image: np.ndarray, normalization: Mapping[str, Any]) -> ValueRange | None:
    """Return the image's overall ``(low, high)`` for the ``minmax`` normalisation, else None."""
    if normalization.get("mode") != "minmax":
        return None
    return (float(image.min()), float(image.max())) if image.size else (0.0, 0.0)


def picture_range(picture: Image.Image, normalization: Mapping[str, Any]) -> ValueRange | None:
    """Return a decoded picture's overall ``(low, high)`` for the ``minmax`` normalisation, else None
    (Pillow's ``getextrema``: no array of the picture's size)."""
    return extremes(picture.getextrema()) if normalization.get("mode") == "minmax" else None


def read_tile(data: bytes, tile: tuple[int, int], channels: int, normalization: Mapping[str, Any],
              max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
              tiff_page: int | None = None) -> tuple[np.ndarray, tuple[int, int], ValueRange | None]:
    """Return ``(tile, (height, width), value range)``: an encoded image resized to the model's tile
    ``(tile_h, tile_w, channels)`` in its own type (uint8 or uint16), the image's own size, and for
    the ``minmax`` normalisation its extremes before the resize (else None), for :func:`tile_input`.
    An EXIF orientation is applied first: the tile and the size are the image as displayed.

    Memory stays near one copy of the decoded image at its own dtype: no float32 array of the
    image's size exists, and a JPEG larger than the tile is decoded reduced (``draft``).
    """
    if is_tiff(data):
        image = read_tiff(data, "image", max_pixels, tiff_page)
        return match_channels(resize_image(image, tile), channels), image.shape[:2], value_range_of(image, normalization)
    picture = open_header(data, "image", max_pixels)
    orientation = orientation_of(picture)
    width, height = displayed_size(picture, orientation)
    target = (tile[1], tile[0])  # Pillow sizes are (width, height)
    stored_target = target if orientation < 5 else (tile[0], tile[1])  # the tile's sides as the pixels are stored
    if picture.size != stored_target:
        picture.draft(picture.mode, stored_target)  # JPEG only: a DCT-domain reduction, never below the tile
    picture = displayed(usable_picture(load_picture(picture)), orientation)
    value_range = picture_range(picture, normalization)
    if picture.size != target:  # in Pillow, in the picture's own mode: no array of the image's size
        picture = picture.resize(target, Image.Resampling.BILINEAR)
    return match_channels(picture_array(picture), channels), (height, width), value_range


def extremes(value_range: Any) -> ValueRange:
    """Return the overall ``(low, high)`` of an image's value range (one pair, or one pair per channel)."""
    flat = np.asarray(value_range, dtype=np.float64).reshape(-1, 2)
    return float(flat[:, 0].min()), float(flat[:, 1].max())


def resize_image(image: np.ndarray, tile: tuple[int, int]) -> np.ndarray:
    """Return ``image`` ``(H, W, C)`` resized bilinearly to ``tile`` in its own type (uint8 or uint16), as
    :func:`read_tile` resizes a decoded picture: Pillow's filter in the image's own mode."""
    if image.shape[:2] == tuple(tile):
        return image
    target = (tile[1], tile[0])  # Pillow sizes are (width, height)
    if image.dtype == np.uint8 and image.shape[2] in (1, 3):  # one call for grey (L) or RGB
        plane = image[:, :, 0] if image.shape[2] == 1 else image
        resized = np.asarray(Image.fromarray(np.ascontiguousarray(plane)).resize(target, Image.Resampling.BILINEAR))
        return resized.reshape(tile[0], tile[1], image.shape[2])
    planes = [np.asarray(Image.fromarray(np.ascontiguousarray(image[:, :, k])).resize(target, Image.Resampling.BILINEAR))
              for k in range(image.shape[2])]
    return np.stack(planes, axis=-1).astype(image.dtype)


def tile_input(tile: np.ndarray, normalization: Mapping[str, Any], value_range: ValueRange | None = None) -> np.ndarray:
    """Return a :func:`read_tile` tile as the model's float32 input (:func:`normalise` with its value range)."""
    return normalise(tile, normalization, value_range)


def read_model_input(data: bytes, tile: tuple[int, int], channels: int, normalization: Mapping[str, Any],
                     max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
                     tiff_page: int | None = None) -> tuple[np.ndarray, tuple[int, int]]:
    """Return ``(model input, (height, width))``: :func:`read_tile` then :func:`tile_input`."""
    pixels, size, value_range = read_tile(data, tile, channels, normalization, max_pixels, tiff_page)
    return tile_input(pixels, normalization, value_range), size


def model_input(image: np.ndarray, tile: tuple[int, int], channels: int, normalization: Mapping[str, Any]) -> np.ndarray:
    """Return the model's float32 ``(tile_h, tile_w, channels)`` input for a decoded image array, by
    the same chain as :func:`read_model_input` (for an image that is no JPEG larger than the tile)."""
    return tile_input(match_channels(resize_image(image, tile), channels), normalization,
                      value_range_of(image, normalization))


def read_native(data: bytes, normalization: Mapping[str, Any], max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
                tiff_page: int | None = None) -> tuple[np.ndarray, ValueRange | None]:
    """Return ``(image, value range)``: the decoded ``(H, W, C)`` image at its own size and type (uint8 or
    uint16, the channels it has; as displayed, its EXIF orientation applied) and, for the ``minmax``
    normalisation, its extremes (else None).

    Inference in windows normalises each window from this one copy (:func:`normalise` with the
    range), so no float32 copy of the whole image is ever made.
    """
    if is_tiff(data):
        image = read_tiff(data, "image", max_pixels, tiff_page)
        return image, value_range_of(image, normalization)
    opened = open_image(data, "image", max_pixels)
    picture = displayed(usable_picture(opened), orientation_of(opened))
    value_range = picture_range(picture, normalization)
    return picture_array(picture), value_range


def resize_plane(plane: np.ndarray, height: int, width: int, resample: Image.Resampling) -> np.ndarray:
    """Return a ``(height, width)`` resize of a 2-D array: uint8 stays uint8, anything else becomes float32."""
    if plane.dtype == np.uint8:
        return np.asarray(Image.fromarray(plane, mode="L").resize((width, height), resample))
    return np.asarray(Image.fromarray(plane.astype(np.float32, copy=False), mode="F").resize((width, height), resample))


def resize_channels(array: np.ndarray, height: int, width: int, resample: Image.Resampling) -> np.ndarray:
    """Return a ``(height, width, K)`` resize of a ``(h, w, K)`` array, channel by channel.

    uint8 stays uint8 (same value scale); anything else becomes float32.
    """
    if array.shape[:2] == (height, width):
        return array if array.dtype == np.uint8 else array.astype(np.float32, copy=False)
    return np.stack([resize_plane(array[:, :, k], height, width, resample) for k in range(array.shape[2])], axis=-1)
