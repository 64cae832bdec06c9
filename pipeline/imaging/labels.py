"""Ground truth read and written: class-index masks and instance label images.

A mask is uint8 ``(H, W)`` class indices (a binary 0/255 mask reads as {0, 1}); an instance label
image is one channel of integers, 0 the background.
"""

from __future__ import annotations

import io

import numpy as np

from pipeline.errors import ErrorKind, SampleError, cut_list
from pipeline.imaging.codecs import (
    displayed,
    displayed_size,
    encode_png,
    is_tiff,
    load_picture,
    open_header,
    orientation_of,
    read_tiff,
)

MASK_MODES = ("1", "L", "P", "I", "I;16", "I;16L", "I;16B")


def decode_mask(data: bytes, num_classes: int, image_shape: tuple[int, int]) -> np.ndarray:
    """Return a ground-truth mask as uint8 ``(H, W)`` class indices (:func:`decode_mask_counted`)."""
    return decode_mask_counted(data, num_classes, image_shape)[0]


def decode_mask_counted(data: bytes, num_classes: int, image_shape: tuple[int, int]) -> tuple[np.ndarray, int]:
    """Return ``(mask, snapped pixels)``: a ground-truth mask as uint8 ``(H, W)`` class indices, and how
    many of its pixels a lossy format had moved off a class value.

    The file must be a single-channel image of the image's size (checked from its header, before
    decoding). A binary mask holding only 0 and 255 is read as classes {0, 1}. A lossless mask with
    values outside ``0..num_classes-1`` raises SampleError; a JPEG mask is snapped to the nearest
    class value instead (:func:`snapped_classes`).
    """
    if is_tiff(data):
        return checked_classes(tiff_mask(data, image_shape), num_classes), 0
    picture = open_header(data, "mask", max_pixels=None)  # its size must equal the image's, checked next
    orientation = orientation_of(picture)  # a mask that carries one is turned as its image is
    width, height = displayed_size(picture, orientation)
    if (width, height) != (image_shape[1], image_shape[0]):
        raise SampleError(
            f"mask size {width}x{height} differs from image size "
            f"{image_shape[1]}x{image_shape[0]}; masks must match their images pixel for pixel", ErrorKind.MASK_SIZE_MISMATCH)
    lossy = picture.format in LOSSY_FORMATS
    if picture.mode not in MASK_MODES and not (lossy and picture.mode == "RGB"):
        raise SampleError(f"mask has mode {picture.mode!r}; save masks as single-channel class-index PNGs", ErrorKind.BAD_MASK)
    picture = displayed(load_picture(picture, "mask"), orientation)
    if lossy:  # a grey JPEG, or a colour one of a grey mask (as some tools save them)
        return snapped_classes(np.asarray(picture.convert("L")), num_classes)
    if picture.mode == "I" and picture.width and picture.height:
        low, high = picture.getextrema()
        if low < 0 or high > 65535:
            raise SampleError("mask holds values outside 0..65535; save masks as 8-bit class-index PNGs", ErrorKind.BAD_MASK)
    return checked_classes(np.asarray(picture.convert("L") if picture.mode == "1" else picture), num_classes), 0


LOSSY_FORMATS = ("JPEG", "MPO")  # formats whose pixels move off the values saved
FAR_SHARE = 0.05  # a lossy "mask" with more of its pixels far from every class value is no mask


def snapped_classes(values: np.ndarray, num_classes: int) -> tuple[np.ndarray, int]:
    """Return ``(class indices, snapped pixels)`` of a mask saved in a lossy format.

    A two-class mask holding more than 0 and 1 is read on the 0/255 scale (each pixel to the nearer of 0 and 255,
    pixels more than 64 levels from both counting as far); otherwise each pixel goes to the nearest
    of the class indices ``0..num_classes-1`` (far: beyond the last by more than half a level).
    Pixels not exactly on a class value are counted as snapped. Over :data:`FAR_SHARE` of the
    pixels far from every class value means the file is not a class mask (a photo saved as one):
    SampleError ``bad_mask``.
    """
    values = values.astype(np.int16)
    binary = num_classes == 2 and values.size > 0 and int(values.max()) > 1
    if binary:
        classes, exact = (values >= 128).astype(np.uint8), (values == 0) | (values == 255)
        far = np.abs(values - 255 * classes) > 64
    else:
        classes = np.clip(values, 0, num_classes - 1).astype(np.uint8)
        exact, far = values < num_classes, values > num_classes - 0.5
    share = float(far.mean()) if values.size else 0.0
    if share > FAR_SHARE:
        scale = "0 and 255" if binary else f"0..{num_classes - 1}"
        raise SampleError(f"mask is a lossy (JPEG) image whose pixels are not class values: {share:.0%} of them lie "
                          f"far from every class value ({scale}); it looks like a photo, not a mask: save masks as "
                          "PNG class indices", ErrorKind.BAD_MASK)
    return classes, int(np.count_nonzero(~exact))


def labels_at_size(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Return a class-index mask ``(h, w)`` resized to ``size`` by nearest neighbour (classes stay classes)."""
    if labels.shape == tuple(size):
        return labels
    from PIL import Image

    return np.asarray(Image.fromarray(labels).resize((size[1], size[0]), Image.Resampling.NEAREST))


def tiff_mask(data: bytes, image_shape: tuple[int, int]) -> np.ndarray:
    """Return a TIFF mask's class values ``(H, W)`` (first page); raise SampleError unless it is one
    channel of the image's size."""
    mask = read_tiff(data, "mask", max_pixels=None, page=0)
    if mask.shape[:2] != tuple(image_shape):
        raise SampleError(
            f"mask size {mask.shape[1]}x{mask.shape[0]} differs from image size "
            f"{image_shape[1]}x{image_shape[0]}; masks must match their images pixel for pixel", ErrorKind.MASK_SIZE_MISMATCH)
    if mask.shape[2] != 1:
        raise SampleError("mask is a TIFF of several channels; save masks as single-channel class-index images",
                          ErrorKind.BAD_MASK)
    return mask[:, :, 0]


def checked_classes(mask: np.ndarray, num_classes: int) -> np.ndarray:
    """Return a decoded mask as uint8 class indices: 0/255 read as {0, 1}; SampleError for values beyond the classes."""
    highest = int(mask.max()) if mask.size else 0
    if highest == 255 and np.count_nonzero(mask) == np.count_nonzero(mask == 255):
        return (mask == 255).astype(np.uint8)
    if highest >= num_classes:
        bad = np.unique(mask[mask >= num_classes])
        shown = cut_list([str(value) for value in bad.tolist()], 5)
        raise SampleError(
            f"mask holds class values [{shown}] but the model has {num_classes} classes (0..{num_classes - 1}); "
            "relabel the mask to the model's classes (a binary mask may hold 0 and 255 only), or use a model "
            "trained with these classes", ErrorKind.MASK_CLASSES)
    return mask.astype(np.uint8, copy=False)


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
            raise SampleError(f"instance label TIFF cannot be read ({type(exc).__name__}: {exc})", ErrorKind.BAD_INSTANCES) from exc
        if labels.ndim != 2 or labels.dtype.kind not in "iu":
            raise SampleError(f"instance label image is a TIFF of shape {labels.shape} and type {labels.dtype}; save "
                              "instance labels as one channel of integers (16-bit PNG)", ErrorKind.BAD_INSTANCES)
    else:
        picture = open_header(data, "instance label image", max_pixels=None)
        if picture.mode not in INSTANCE_MODES:
            raise SampleError(f"instance label image has mode {picture.mode!r}; save instance labels as one channel "
                              "of integers (16-bit PNG, 32-bit TIFF beyond 65,535 objects), not float or colour",
                              ErrorKind.BAD_INSTANCES)
        labels = np.asarray(displayed(load_picture(picture, "instance label image"), orientation_of(picture)))
    if labels.shape != tuple(image_shape):
        raise SampleError(f"instance label image size {labels.shape[1]}x{labels.shape[0]} differs from image size "
                          f"{image_shape[1]}x{image_shape[0]}", ErrorKind.INSTANCES_SIZE_MISMATCH)
    if labels.dtype == np.uint8 and len(np.unique(labels)) == 256:
        raise SampleError("8-bit instance label image uses every label 1..255: it holds more objects than 8 bits "
                          "can number; save instance labels as 16-bit PNG", ErrorKind.BAD_INSTANCES)
    if labels.size and labels.min() < 0:
        raise SampleError("instance label image holds negative labels", ErrorKind.BAD_INSTANCES)
    return labels.astype(np.int64)
