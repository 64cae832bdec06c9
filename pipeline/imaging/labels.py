"""Ground truth read and written: class-index masks and instance label images.

A mask is uint8 ``(H, W)`` class indices, :data:`IGNORE` (255) where a pixel is not labelled. How a
data set stores its classes is its :class:`LabelMap` (``labels.yaml``): plain class indices (a binary
0/255 mask reads as {0, 1}), declared stored values, or colours, and the values meaning "not
labelled". An instance label image is one channel of integers, 0 the background.
"""

from __future__ import annotations

import io
from collections.abc import Iterable

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
from pipeline.imaging.labelmap import IGNORE, LabelMap

MASK_MODES = ("1", "L", "P", "I", "I;16", "I;16L", "I;16B")
COLOUR_MODES = ("RGB", "RGBA", "P", "L", "LA", "1")  # what a colour mask may be stored as (a palette: its colours)
LOSSY_FORMATS = ("JPEG", "MPO")  # formats whose pixels move off the values saved
FAR_SHARE = 0.05  # a lossy "mask" with more of its pixels far from every class value is no mask
FAR_LEVELS = 64  # a lossy pixel further than this from every declared value (or colour) is far from all


def decode_mask(data: bytes, labels: LabelMap | int, image_shape: tuple[int, int]) -> np.ndarray:
    """Return a ground-truth mask as uint8 ``(H, W)`` class indices (:func:`decode_mask_counted`)."""
    return decode_mask_counted(data, labels, image_shape)[0]


def decode_mask_counted(data: bytes, labels: LabelMap | int, image_shape: tuple[int, int]) -> tuple[np.ndarray, int]:
    """Return ``(mask, snapped pixels)``: a ground-truth mask as uint8 ``(H, W)`` class indices, with
    :data:`IGNORE` where the label map says "not labelled", and how many of its pixels a lossy format
    had moved off a declared value.

    ``labels`` is the data set's :class:`LabelMap` (a number of classes: plain class indices). The file
    must be an image of the image's size (checked from its header, before decoding): one channel of
    stored values, or with ``colors`` declared a colour (or palette) image. A plain mask holding only
    0 and 255 is read as classes {0, 1}. A lossless mask with values the map does not declare raises
    SampleError; a JPEG mask is snapped to the nearest declared value instead (:func:`snapped_values`).
    """
    label_map = labels if isinstance(labels, LabelMap) else LabelMap(num_classes=labels)
    if is_tiff(data):
        return mapped_values(tiff_mask(data, image_shape), label_map), 0
    picture = open_header(data, "mask", max_pixels=None)  # its size must equal the image's, checked next
    orientation = orientation_of(picture)  # a mask that carries one is turned as its image is
    width, height = displayed_size(picture, orientation)
    if (width, height) != (image_shape[1], image_shape[0]):
        raise SampleError(
            f"mask size {width}x{height} differs from image size "
            f"{image_shape[1]}x{image_shape[0]}; masks must match their images pixel for pixel", ErrorKind.MASK_SIZE_MISMATCH)
    lossy = picture.format in LOSSY_FORMATS
    if label_map.colors or label_map.ignore_colors:
        if picture.mode not in COLOUR_MODES:
            raise SampleError(f"mask has mode {picture.mode!r}; the label map declares colours (labels.colors), so "
                              "save masks as RGB or palette PNGs", ErrorKind.BAD_MASK)
        rgb = np.asarray(displayed(load_picture(picture, "mask"), orientation).convert("RGB"))
        return colour_classes(rgb, label_map, lossy)
    if picture.mode not in MASK_MODES and not (lossy and picture.mode == "RGB"):
        raise SampleError(f"mask has mode {picture.mode!r}; save masks as single-channel class-index PNGs, or declare "
                          "the colour of each class (labels.colors) to read colour masks", ErrorKind.BAD_MASK)
    picture = displayed(load_picture(picture, "mask"), orientation)
    if lossy:  # a grey JPEG, or a colour one of a grey mask (as some tools save them)
        values = np.asarray(picture.convert("L"))
        return snapped_classes(values, label_map.num_classes) if not label_map.declared else snapped_values(values, label_map)
    if picture.mode == "I" and picture.width and picture.height:
        low, high = picture.getextrema()
        if low < 0 or high > 65535:
            raise SampleError("mask holds values outside 0..65535; save masks as 8-bit class-index PNGs", ErrorKind.BAD_MASK)
    return mapped_values(np.asarray(picture.convert("L") if picture.mode == "1" else picture), label_map), 0


def stored_targets(label_map: LabelMap, present: Iterable[int]) -> dict[int, int]:
    """Return stored value -> class index (or :data:`IGNORE`) for a mask holding the values ``present``:
    the declared values, else the class indices, or {0: 0, 255: 1} for a plain binary 0/255 mask."""
    if label_map.values:
        targets = dict(label_map.values)
    else:
        targets = {value: value for value in range(label_map.num_classes)}
        labelled = set(present) - set(label_map.ignore)
        if 255 in labelled and labelled <= {0, 255}:
            targets = {0: 0, 255: 1}
    targets.update({value: IGNORE for value in label_map.ignore})
    return targets


def mapped_values(values: np.ndarray, label_map: LabelMap) -> np.ndarray:
    """Return a lossless mask's stored values as uint8 class indices (:data:`IGNORE` where ignored);
    SampleError ``mask_classes`` for a value the label map does not declare."""
    flat = values.reshape(-1).astype(np.int64, copy=False)
    counts = np.bincount(flat) if flat.size else np.zeros(1, dtype=np.int64)
    present = np.flatnonzero(counts).tolist()
    targets = stored_targets(label_map, present)
    unknown = [value for value in present if value not in targets]
    if unknown:
        raise SampleError(unknown_values_message(unknown, label_map), ErrorKind.MASK_CLASSES)
    table = np.full(len(counts), IGNORE, dtype=np.uint8)
    for stored, index in targets.items():
        if stored < len(table):
            table[stored] = index
    return table[values]


def unknown_values_message(unknown: list[int], label_map: LabelMap) -> str:
    """Return the error of a mask holding the stored values ``unknown``, naming the fix."""
    shown = cut_list([str(value) for value in unknown], 5)
    classes = label_map.num_classes
    if label_map.values:
        return (f"mask holds values [{shown}] that the label map does not declare (labels.values: "
                f"{cut_list([str(stored) for stored, _ in label_map.values], 8)}); add them to labels.values, or to "
                "labels.ignore where they mean 'not labelled'")
    if unknown == [255]:
        return (f"mask holds 255 beside the class values 0..{classes - 1}: many data sets (PASCAL VOC, Cityscapes) "
                "mark pixels that are not labelled 255; declare it with labels.ignore=255 (or 'ignore: [255]' in the "
                "input's labels.yaml), or relabel the mask")
    return (f"mask holds class values [{shown}] but the model has {classes} classes (0..{classes - 1}); relabel the "
            "mask to the model's classes (a binary mask may hold 0 and 255 only), declare its stored values "
            "(labels.values, labels.ignore) in the input's labels.yaml, or use a model trained with these classes")


def snapped_values(values: np.ndarray, label_map: LabelMap) -> tuple[np.ndarray, int]:
    """Return ``(class indices, snapped pixels)`` of an 8-bit lossy mask read through a declared label
    map: each pixel goes to the nearest declared stored value; more than :data:`FAR_SHARE` of the
    pixels over :data:`FAR_LEVELS` from every one is SampleError ``bad_mask``."""
    binary = not label_map.values and label_map.num_classes == 2 and int(values.max(initial=0)) > 1 \
        and 255 not in label_map.ignore
    targets = stored_targets(label_map, [0, 255] if binary else [])
    declared = np.array(sorted(targets), dtype=np.int64)
    levels = np.arange(256)
    nearest = np.abs(levels[:, None] - declared[None, :]).argmin(axis=1)
    distance = np.abs(levels - declared[nearest])
    classes = np.array([targets[int(value)] for value in declared], dtype=np.uint8)[nearest][values]
    far = distance[values] > FAR_LEVELS
    refuse_far(far, f"every declared value ({cut_list([str(v) for v in declared.tolist()], 8)})")
    return classes, int(np.count_nonzero(distance[values]))


def colour_classes(rgb: np.ndarray, label_map: LabelMap, lossy: bool) -> tuple[np.ndarray, int]:
    """Return ``(class indices, snapped pixels)`` of a colour mask ``(H, W, 3)`` through the label map's
    colours: lossless, a colour it does not declare is SampleError ``mask_classes``; lossy, each
    pixel goes to the nearest declared colour (Euclidean), as :func:`snapped_values` does for values."""
    packed = (rgb[..., 0].astype(np.uint32) << 16) | (rgb[..., 1].astype(np.uint32) << 8) | rgb[..., 2]
    targets = {(r << 16) | (g << 8) | b: index for (r, g, b), index in label_map.colors}
    targets.update({(r << 16) | (g << 8) | b: IGNORE for r, g, b in label_map.ignore_colors})
    unique, inverse = np.unique(packed, return_inverse=True)
    inverse = inverse.reshape(packed.shape)
    if not lossy:
        unknown = [int(value) for value in unique if int(value) not in targets]
        if unknown:
            shown = cut_list([f"{v >> 16},{(v >> 8) & 255},{v & 255}" for v in unknown], 5)
            raise SampleError(f"mask holds colours [{shown}] that the label map does not declare (labels.colors); "
                              "add each colour with its class, or to labels.ignore", ErrorKind.MASK_CLASSES)
        return np.array([targets[int(value)] for value in unique], dtype=np.uint8)[inverse], 0
    declared = np.array(sorted(targets), dtype=np.int64)
    as_rgb = lambda packed_values: np.stack([(packed_values >> 16) & 255, (packed_values >> 8) & 255,  # noqa: E731
                                             packed_values & 255], axis=-1).astype(np.float64)
    gaps = np.linalg.norm(as_rgb(unique.astype(np.int64))[:, None, :] - as_rgb(declared)[None, :, :], axis=-1)
    nearest = gaps.argmin(axis=1)
    distance = gaps[np.arange(len(unique)), nearest]
    classes = np.array([targets[int(value)] for value in declared], dtype=np.uint8)[nearest][inverse]
    refuse_far(distance[inverse] > FAR_LEVELS, "every declared colour")
    return classes, int(np.count_nonzero(distance[inverse]))


def refuse_far(far: np.ndarray, what: str) -> None:
    """Raise SampleError ``bad_mask`` when over :data:`FAR_SHARE` of a lossy mask's pixels are far from ``what``."""
    share = float(far.mean()) if far.size else 0.0
    if share > FAR_SHARE:
        raise SampleError(f"mask is a lossy (JPEG) image whose pixels are not class values: {share:.0%} of them lie "
                          f"far from {what}; it looks like a photo, not a mask: save masks as PNG", ErrorKind.BAD_MASK)


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
    refuse_far(far, "every class value (" + ("0 and 255" if binary else f"0..{num_classes - 1}") + ")")
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
