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
DEFAULT_MAX_IMAGE_PIXELS = 16384 * 16384  # 256 megapixels: a 16k x 16k slide or scene; max_image_pixels raises it

# segpipe checks every image's declared size against max_image_pixels from its header before it
# decodes a pixel (open_header); Pillow's own check (a warning from 89 megapixels, an error from
# 179) would refuse images the user allowed and word it as a decompression bomb.
Image.MAX_IMAGE_PIXELS = None


class SampleError(ValueError):
    """One image or mask cannot be used; the message says what is wrong (the caller adds the key).

    ``kind`` is its :data:`pipeline.schema.ERROR_KINDS` name, written beside the message.
    """

    def __init__(self, message: str, kind: str = "corrupt_image") -> None:
        super().__init__(message)
        self.kind = kind


def open_header(data: bytes, what: str = "image", max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS) -> Image.Image:
    """Return the encoded image opened but not decoded (Pillow reads only its header).

    Raises SampleError if the file is empty or not an image, or (kind ``image_too_large``) if its
    header declares more than ``max_pixels`` pixels (None: no limit).
    """
    bad = bad_kind(what)
    if not data:
        raise SampleError(f"{what} file is empty", bad)
    try:
        picture = Image.open(io.BytesIO(data))
    except Image.UnidentifiedImageError as exc:
        raise SampleError(
            f"{what} cannot be decoded: not a recognised image format (PNG, JPEG, TIFF, BMP, WebP) or corrupt", bad
        ) from exc
    except Exception as exc:  # PIL raises several types for corrupt headers
        raise SampleError(f"{what} cannot be decoded ({type(exc).__name__}: {exc}); the header is corrupt",
                          bad) from exc
    width, height = picture.size
    if max_pixels is not None and width * height > max_pixels:
        raise SampleError(too_large_message(what, width, height, max_pixels), "image_too_large")
    return picture


def too_large_message(what: str, width: int, height: int, max_pixels: int) -> str:
    """Return the message of an image larger than ``max_pixels``, naming the option that raises the limit."""
    return (f"{what} is {width}x{height} = {width * height / 1e6:.0f} megapixels, more than max_image_pixels="
            f"{max_pixels} ({max_pixels / 1e6:.0f} megapixels); to segment it, raise the limit "
            f"(segpipe segment --max-image-pixels N, or max_image_pixels: N in the config)")


def load_picture(picture: Image.Image, what: str = "image") -> Image.Image:
    """Return ``picture`` with its pixels decoded; raise SampleError if the data is corrupt or truncated."""
    try:
        picture.load()
    except Exception as exc:  # PIL raises several types for corrupt and truncated files
        raise SampleError(f"{what} cannot be decoded ({type(exc).__name__}: {exc}); the file is corrupt or truncated",
                          bad_kind(what)) from exc
    return picture


def bad_kind(what: str) -> str:
    """Return the error kind of an unreadable file that holds ``what`` (an image, a mask, an instance label image)."""
    return {"image": "corrupt_image", "mask": "bad_mask"}.get(what, "bad_instances" if "instance" in what else "bad_mask")


def open_image(data: bytes, what: str = "image", max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS) -> Image.Image:
    """Return the fully decoded first frame of an encoded image; raise SampleError if unusable."""
    return load_picture(open_header(data, what, max_pixels), what)


def usable_picture(picture: Image.Image) -> Image.Image:
    """Return a decoded picture in a mode segpipe reads: ``L`` or ``RGB`` (8-bit), ``I;16`` or ``I`` (16-bit).

    Alpha is dropped and palettes expanded. Other modes (CMYK, float, YCbCr, ...) and 32-bit
    values outside 0..65535 raise SampleError (kind ``unsupported_image``) saying how to convert them.
    """
    mode = picture.mode
    if mode in EIGHT_BIT_MODES:
        return picture if mode == EIGHT_BIT_MODES[mode] else picture.convert(EIGHT_BIT_MODES[mode])
    if mode in SIXTEEN_BIT_MODES:
        if mode == "I":
            low, high = picture.getextrema()
            if low < 0 or high > 65535:
                raise SampleError(f"image mode {mode} holds values outside 0..65535; save it as 8- or 16-bit",
                                  "unsupported_image")
        return picture if mode in ("I;16", "I") else picture.convert("I")  # Pillow resizes only I;16 and I
    raise SampleError(f"unsupported image mode {mode!r}; convert it to 8- or 16-bit grayscale or RGB (e.g. PNG)",
                      "unsupported_image")


def picture_array(picture: Image.Image) -> np.ndarray:
    """Return a :func:`usable_picture` as ``(H, W, C)``, C in {1, 3}, uint8 (8-bit) or uint16 (16-bit)."""
    array = np.asarray(picture)
    if array.dtype not in (np.uint8, np.uint16):
        array = array.astype(np.uint16)  # mode I, checked to lie in 0..65535
    return array[:, :, np.newaxis] if array.ndim == 2 else array


TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF, either byte order


def is_tiff(data: bytes) -> bool:
    """Return whether ``data`` starts like a TIFF or BigTIFF file."""
    return data[:4] in TIFF_MAGIC


def read_tiff(data: bytes, what: str = "image", max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
              page: int | None = None) -> np.ndarray:
    """Return one page of a TIFF (strips or tiles, classic or BigTIFF, any codec tifffile knows) as
    ``(H, W, C)``, C in {1, 3}, uint8 or uint16.

    A file of several pages needs ``page`` (0-based; ``tiff_page`` in the run's config); its size is
    checked against ``max_pixels`` from the page's tags before any pixel is decoded. Palette pages
    are expanded to RGB, bilevel pages read as 0/255, an alpha or extra channel dropped; other
    sample types (float, signed, 32-bit) raise SampleError saying how to convert them.
    """
    import tifffile

    bad = "corrupt_image" if what == "image" else "bad_mask"
    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tiff:
            pages = len(tiff.pages)
            if page is None and pages > 1:
                raise SampleError(f"{what} is a TIFF of {pages} pages; choose one with tiff_page: N (segpipe segment "
                                  "--tiff-page N, 0 for the first) or save the page alone", "multi_page_image")
            index = page or 0
            if index >= pages:
                raise SampleError(f"{what} is a TIFF of {pages} page(s); tiff_page={index} does not exist",
                                  "multi_page_image")
            chosen = tiff.pages[index]
            height, width = int(chosen.imagelength), int(chosen.imagewidth)
            if max_pixels is not None and height * width > max_pixels:
                raise SampleError(too_large_message(what, width, height, max_pixels), "image_too_large")
            array = chosen.asarray()
            photometric, colormap, axes = int(chosen.photometric), chosen.colormap, chosen.axes
    except SampleError:
        raise
    except Exception as exc:  # tifffile raises several types for corrupt and truncated files
        raise SampleError(f"{what} cannot be decoded as TIFF ({type(exc).__name__}: {exc}); the file is corrupt, "
                          "truncated or uses a codec that is not installed", bad) from exc
    return tiff_planes(array, photometric, colormap, axes, what)


def tiff_planes(array: np.ndarray, photometric: int, colormap: np.ndarray | None, axes: str,
                what: str) -> np.ndarray:
    """Return a decoded TIFF page as ``(H, W, C)``, C in {1, 3}, uint8 or uint16 (see :func:`read_tiff`)."""
    if axes.startswith("S") and array.ndim == 3:  # planar: samples first
        array = np.moveaxis(array, 0, -1)
    if array.dtype == bool:
        array = array.astype(np.uint8) * np.uint8(255)
    if array.dtype not in (np.uint8, np.uint16):
        raise SampleError(f"{what} is a TIFF of {array.dtype} samples; save it as 8- or 16-bit unsigned integers",
                          "unsupported_image")
    if array.ndim == 2:
        array = array[:, :, np.newaxis]
    if photometric == 3 and colormap is not None and array.shape[2] == 1:  # palette: indices into the colour map
        palette = (np.asarray(colormap).T >> 8).astype(np.uint8)  # (entries, 3), 16-bit levels to 8
        array = palette[array[:, :, 0]]
    if array.ndim != 3 or array.shape[2] not in (1, 2, 3, 4):
        raise SampleError(f"{what} is a TIFF of shape {array.shape}; save one 2-D page of 1 or 3 channels",
                          "unsupported_image")
    if array.shape[2] in (2, 4):  # an alpha (or extra) channel: dropped, as for PNG
        array = array[:, :, :array.shape[2] - 1]
    if photometric == 0:  # min-is-white: invert, so that bright means bright as everywhere else
        array = np.iinfo(array.dtype).max - array
    return np.ascontiguousarray(array)


def tiff_picture(array: np.ndarray, channel: int | None = None) -> Image.Image:
    """Return a TIFF's ``(H, W, C)`` array (or one channel of it) as a Pillow image in its own type."""
    plane = array[:, :, channel] if channel is not None else (array[:, :, 0] if array.shape[2] == 1 else array)
    return Image.fromarray(np.ascontiguousarray(plane))  # uint8: L or RGB; uint16: I;16


def decode_image(data: bytes, max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS, tiff_page: int | None = None) -> np.ndarray:
    """Return the image as ``(H, W, C)``, C in {1, 3}, uint8 (8-bit input) or uint16 (16-bit input).

    Accepts 1-bit, 8-bit and 16-bit grayscale, palette, RGB and RGBA (alpha dropped). Other modes
    (CMYK, float, YCbCr, ...) raise SampleError saying how to convert them; so does an image of
    more than ``max_pixels`` pixels, before it is decoded. TIFFs are read by :func:`read_tiff`.
    """
    if is_tiff(data):
        return read_tiff(data, "image", max_pixels, tiff_page)
    return picture_array(usable_picture(open_image(data, "image", max_pixels)))


def read_model_input(data: bytes, tile: tuple[int, int], channels: int, normalization: Mapping[str, Any],
                     max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
                     tiff_page: int | None = None) -> tuple[np.ndarray, tuple[int, int]]:
    """Return ``(model input, (height, width))``: :func:`read_tile` normalised to float32 (:func:`normalise`)."""
    pixels, size, value_range = read_tile(data, tile, channels, normalization, max_pixels, tiff_page)
    return normalise(pixels, normalization, value_range), size


def read_tile(data: bytes, tile: tuple[int, int], channels: int, normalization: Mapping[str, Any],
              max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
              tiff_page: int | None = None) -> tuple[np.ndarray, tuple[int, int], tuple[Any, Any] | None]:
    """Return ``(tile, (height, width), value range)``: an encoded image resized to the model's tile
    ``(tile_h, tile_w, channels)`` in its own type (uint8 or uint16), the image's own size, and for
    the ``minmax`` normalisation its extremes (else None), for :func:`normalise`.

    Memory stays near one copy of the decoded image at its own dtype: the image is resized to the
    tile in Pillow, in its own mode (8-bit stays 8-bit, 16-bit stays integer), before any float32
    array exists, and a JPEG larger than the tile is decoded at the smallest of 1/2, 1/4 or 1/8 of
    its size that still covers the tile. The ``minmax`` normalisation uses the decoded image's
    own extremes, taken before the resize. A TIFF (:func:`read_tiff`) is resized channel by channel,
    each in its own type.
    """
    if is_tiff(data):
        return tiff_tile(read_tiff(data, "image", max_pixels, tiff_page), tile, channels, normalization)
    picture = open_header(data, "image", max_pixels)
    size = (picture.height, picture.width)
    target = (tile[1], tile[0])  # Pillow sizes are (width, height)
    if picture.size != target:
        picture.draft(picture.mode, target)  # JPEG only: a DCT-domain reduction, never below the target
    picture = usable_picture(load_picture(picture))
    value_range = picture.getextrema() if normalization.get("mode") == "minmax" else None
    if picture.size != target:
        picture = picture.resize(target, Image.Resampling.BILINEAR)
    return match_channels(picture_array(picture), channels), size, value_range


def tiff_tile(array: np.ndarray, tile: tuple[int, int], channels: int,
              normalization: Mapping[str, Any]) -> tuple[np.ndarray, tuple[int, int], tuple[Any, Any] | None]:
    """Return :func:`read_tile`'s result for a decoded TIFF array ``(H, W, C)``."""
    size = array.shape[:2]
    value_range = (array.min(), array.max()) if normalization.get("mode") == "minmax" else None
    if size != tile:
        array = np.stack([np.asarray(tiff_picture(array, k).resize((tile[1], tile[0]), Image.Resampling.BILINEAR))
                          for k in range(array.shape[2])], axis=-1).astype(array.dtype)
    return match_channels(array, channels), size, value_range


def read_native(data: bytes, normalization: Mapping[str, Any], max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
                tiff_page: int | None = None) -> tuple[np.ndarray, tuple[Any, Any] | None]:
    """Return ``(image, value range)``: the decoded ``(H, W, C)`` image at its own size and type (uint8 or
    uint16, the channels it has) and, for the ``minmax`` normalisation, its extremes (else None).

    Inference in windows normalises each window from this one copy (:func:`normalise` with the
    range), so no float32 copy of the whole image is ever made.
    """
    if is_tiff(data):
        array = read_tiff(data, "image", max_pixels, tiff_page)
        return array, ((array.min(), array.max()) if normalization.get("mode") == "minmax" else None)
    picture = usable_picture(open_image(data, "image", max_pixels))
    value_range = picture.getextrema() if normalization.get("mode") == "minmax" else None
    return picture_array(picture), value_range


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
    raise SampleError(f"image has {have} channels; the model takes {channels}", "unsupported_image")


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


def model_input(image: np.ndarray, tile: tuple[int, int], channels: int, normalization: Mapping[str, Any]) -> np.ndarray:
    """Return the model's float32 ``(tile_h, tile_w, channels)`` input for a decoded image array."""
    pixels = normalise(match_channels(image, channels), normalization)
    return resize_channels(pixels, tile[0], tile[1], Image.Resampling.BILINEAR)


MASK_MODES = ("1", "L", "P", "I", "I;16", "I;16L", "I;16B")


def decode_mask(data: bytes, num_classes: int, image_shape: tuple[int, int]) -> np.ndarray:
    """Return a ground-truth mask as uint8 ``(H, W)`` class indices.

    The file must be a single-channel image of the image's size (checked from its header, before
    decoding). A binary mask holding only 0 and 255 is read as classes {0, 1}. Values outside
    ``0..num_classes-1`` raise SampleError.
    """
    if is_tiff(data):
        return checked_classes(tiff_mask(data, image_shape), num_classes)
    picture = open_header(data, "mask", max_pixels=None)  # its size must equal the image's, checked next
    if picture.size != (image_shape[1], image_shape[0]):
        raise SampleError(
            f"mask size {picture.width}x{picture.height} differs from image size "
            f"{image_shape[1]}x{image_shape[0]}; masks must match their images pixel for pixel", "mask_size_mismatch")
    if picture.mode not in MASK_MODES:
        raise SampleError(f"mask has mode {picture.mode!r}; save masks as single-channel class-index PNGs", "bad_mask")
    load_picture(picture, "mask")
    if picture.mode == "I" and picture.width and picture.height:
        low, high = picture.getextrema()
        if low < 0 or high > 65535:
            raise SampleError("mask holds values outside 0..65535; save masks as 8-bit class-index PNGs", "bad_mask")
    return checked_classes(np.asarray(picture.convert("L") if picture.mode == "1" else picture), num_classes)


def tiff_mask(data: bytes, image_shape: tuple[int, int]) -> np.ndarray:
    """Return a TIFF mask's class values ``(H, W)`` (first page); raise SampleError unless it is one
    channel of the image's size."""
    mask = read_tiff(data, "mask", max_pixels=None, page=0)
    if mask.shape[:2] != tuple(image_shape):
        raise SampleError(
            f"mask size {mask.shape[1]}x{mask.shape[0]} differs from image size "
            f"{image_shape[1]}x{image_shape[0]}; masks must match their images pixel for pixel", "mask_size_mismatch")
    if mask.shape[2] != 1:
        raise SampleError("mask is a TIFF of several channels; save masks as single-channel class-index images",
                          "bad_mask")
    return mask[:, :, 0]


def checked_classes(mask: np.ndarray, num_classes: int) -> np.ndarray:
    """Return a decoded mask as uint8 class indices: 0/255 read as {0, 1}; SampleError for values beyond the classes."""
    highest = int(mask.max()) if mask.size else 0
    if highest == 255 and np.count_nonzero(mask) == np.count_nonzero(mask == 255):
        return (mask == 255).astype(np.uint8)
    if highest >= num_classes:
        bad = np.unique(mask[mask >= num_classes])[:5].tolist()
        raise SampleError(
            f"mask holds class values {bad} but the model has {num_classes} classes (0..{num_classes - 1})",
            "mask_classes")
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


def decided(scores: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(mask, confidence)`` from ``(H, W, K)`` scores: the class indices of :func:`mask_from_scores`
    and, as uint8 levels (see :func:`quantise_scores`), the probability of each pixel's own class
    (``p`` or ``1 - p`` for one sigmoid channel, the highest probability otherwise)."""
    mask = mask_from_scores(scores, threshold)
    levels = scores if scores.dtype == np.uint8 else quantise_scores(scores)
    if scores.shape[-1] == 1:
        plane = levels[:, :, 0]
        return mask, np.where(mask == 1, plane, SCORE_LEVELS - plane).astype(np.uint8)
    return mask, levels.max(axis=-1)


def mask_at_size(scores: np.ndarray, height: int, width: int, threshold: float) -> np.ndarray:
    """Return the class-index mask at ``(height, width)``: scores are resized bilinearly, then decided.

    One class plane is resized at a time and the argmax kept as it goes (ties to the lower class,
    as ``np.argmax``), so a large image costs a few bytes per pixel, not ``K`` float planes.
    """
    return mask_and_confidence_at_size(scores, height, width, threshold)[0]


def mask_and_confidence_at_size(scores: np.ndarray, height: int, width: int,
                                threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Return :func:`mask_at_size` and the confidence of :func:`decided` (uint8 levels) at ``(height, width)``."""
    if scores.shape[:2] == (height, width):
        return decided(scores, threshold)
    bilinear = Image.Resampling.BILINEAR
    if scores.shape[-1] == 1:
        return decided(resize_plane(scores[:, :, 0], height, width, bilinear)[:, :, np.newaxis], threshold)
    best = resize_plane(scores[:, :, 0], height, width, bilinear).copy()
    labels = np.zeros((height, width), dtype=np.uint8)
    for k in range(1, scores.shape[-1]):
        plane = resize_plane(scores[:, :, k], height, width, bilinear)
        higher = plane > best
        labels[higher] = k
        np.maximum(best, plane, out=best)
    return labels, best if best.dtype == np.uint8 else quantise_scores(best)


INSTANCE_MODES = ("L", "I", "I;16", "I;16L", "I;16B")  # 8-, 16- and 32-bit integer grey
MAX_PNG_LABEL = 65535


def encode_instances(labels: np.ndarray) -> tuple[bytes, str]:
    """Return ``(bytes, extension)`` of an instance label image ``(H, W)`` (0 = background): a 16-bit
    PNG, or a zlib-compressed 32-bit TIFF when it holds labels above 65,535."""
    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.dtype.kind not in "iu" or (labels.size and labels.min() < 0):
        raise ValueError(f"an instance label image is (H, W) of non-negative integers, not {labels.shape} {labels.dtype}")
    if not labels.size or labels.max() <= MAX_PNG_LABEL:
        return encode_png(labels.astype(np.uint16), compress_level=1), "png"
    import tifffile

    buffer = io.BytesIO()
    tifffile.imwrite(buffer, labels.astype(np.uint32), compression="zlib")
    return buffer.getvalue(), "tif"


def decode_instances(data: bytes, image_shape: tuple[int, int]) -> np.ndarray:
    """Return a ground-truth instance label image as int64 ``(H, W)``, 0 the background.

    It must be one channel of integers (8-, 16- or 32-bit PNG or TIFF) of the image's size; a
    float image, several channels, or an 8-bit image using every label 1..255 (more objects than
    8 bits hold: its labels have wrapped) raise SampleError (``bad_instances``), another size
    ``instances_size_mismatch``.
    """
    if is_tiff(data):
        import tifffile

        try:
            labels = tifffile.imread(io.BytesIO(data), key=0)
        except Exception as exc:  # tifffile raises many types for a broken file
            raise SampleError(f"instance label TIFF cannot be read ({type(exc).__name__}: {exc})", "bad_instances") from exc
        if labels.ndim != 2 or labels.dtype.kind not in "iu":
            raise SampleError(f"instance label image is a TIFF of shape {labels.shape} and type {labels.dtype}; save "
                              "instance labels as one channel of integers (16-bit PNG)", "bad_instances")
    else:
        picture = open_header(data, "instance label image", max_pixels=None)
        if picture.mode not in INSTANCE_MODES:
            raise SampleError(f"instance label image has mode {picture.mode!r}; save instance labels as one channel "
                              "of integers (16-bit PNG, 32-bit TIFF beyond 65,535 objects), not float or colour",
                              "bad_instances")
        load_picture(picture, "instance label image")
        labels = np.asarray(picture)
    if labels.shape != tuple(image_shape):
        raise SampleError(f"instance label image size {labels.shape[1]}x{labels.shape[0]} differs from image size "
                          f"{image_shape[1]}x{image_shape[0]}", "instances_size_mismatch")
    if labels.dtype == np.uint8 and len(np.unique(labels)) == 256:
        raise SampleError("8-bit instance label image uses every label 1..255: it holds more objects than 8 bits "
                          "can number; save instance labels as 16-bit PNG", "bad_instances")
    if labels.size and labels.min() < 0:
        raise SampleError("instance label image holds negative labels", "bad_instances")
    return labels.astype(np.int64)


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
