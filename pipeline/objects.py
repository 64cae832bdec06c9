"""Objects from a class-index mask: connected components per foreground class, optionally split
where they touch, and one row of measurements per object.

Three ways to tell touching objects apart (``split``):

- ``none``: each connected component is one object;
- ``watershed``: a watershed of the distance transform of each component large enough to hold
  several objects, one marker per peak; what counts as large and how deep a peak must be follow
  the objects' typical diameter (:func:`watershed_split`);
- ``borders``: for a model trained on border targets (:func:`border_target`), whose decided mask
  holds the class ``num_classes`` where one object meets another, markers are the predicted
  interiors and each grows back over its class's pixels (a marker-controlled watershed).

scikit-image does the work (``measure.label``, ``segmentation.watershed``, ``morphology.h_maxima``,
``measure.regionprops_table``), with SciPy's Euclidean distance transform and rank filters. Labels are numbered
from 1 across all classes of an image (0 is the background) in class order, then in the raster
order of each object's first pixel.
"""

from __future__ import annotations

from typing import Any

import numpy as np

SPLITS = ("none", "watershed", "borders")
PROPERTIES = ("label", "area", "bbox", "solidity")  # from regionprops; the moments are summed here, for every object at once
LARGE_SHARE = 1.5  # the watershed splits only components above this many typical objects' area
FEW_COMPONENTS = 5  # below this many components an image's median area says little of one object's
DEPTH_SHARE = 0.05  # the watershed's markers: h-maxima of the distance transform this share of the diameter deep
MIN_SIZE_SHARE = 0.25  # objects below the area of a disc of this share of the typical diameter are speckle
BORDER_SHARE = 0.15  # the border target's width, as a share of the objects' typical diameter (1 to 4 pixels)


def label_objects(mask: np.ndarray, num_classes: int, connectivity: int = 8, min_size: int = 0,
                  split: str = "none", diameter: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(labels, label_class)``: an int32 label image of ``mask``'s objects and, indexed by
    label, each object's class (``label_class[0]`` is 0, the background).

    ``connectivity`` 4 or 8 decides which neighbours join one object; objects of fewer than
    ``min_size`` pixels are dropped (left as background); ``split="watershed"`` splits touching
    large components along the valleys of their distance transform, for objects of a typical
    ``diameter`` (pixels; None: measured on the image; :func:`watershed_split`);
    ``split="borders"`` takes a border model's decided mask (the value ``num_classes`` on
    borders) and grows each predicted interior back over its class (:func:`grown_interiors`).
    """
    from skimage import measure

    if connectivity not in (4, 8):
        raise ValueError(f"connectivity={connectivity}: 4 or 8")
    if split not in SPLITS:
        raise ValueError(f"split={split!r}: one of {', '.join(SPLITS)}")
    labels = np.zeros(mask.shape, dtype=np.int32)
    classes = [0]
    decided = mask
    if split == "borders":
        mask = fold_borders(mask, num_classes)
    for class_index in range(1, num_classes):
        region = mask == class_index
        if not region.any():
            continue
        if split == "borders":
            # an interior below twice the speckle size is a sliver, not an object's own (tuned on DSB 2018)
            components = grown_interiors(region, decided == class_index, connectivity, 2 * min_size)
        else:
            components = measure.label(region, connectivity=1 if connectivity == 4 else 2)
        components = without_small(components, min_size)
        if split == "watershed":  # speckle dropped before (it is no typical object) and after (no piece below it)
            components = without_small(watershed_split(components, connectivity, diameter), min_size)
        components, _, _ = relabelled(components)
        count = int(components.max())
        if count:
            labels[components > 0] = components[components > 0] + len(classes) - 1
            classes.extend([class_index] * count)
    return labels, np.array(classes, dtype=np.int32)


def without_small(components: np.ndarray, min_size: int) -> np.ndarray:
    """Return a label image with the objects of fewer than ``min_size`` pixels set to 0 (in place)."""
    if min_size > 1:
        small = np.bincount(components.ravel()) < min_size
        small[0] = False
        components[small[components]] = 0
    return components


def watershed_split(components: np.ndarray, connectivity: int, diameter: float | None = None) -> np.ndarray:
    """Return ``components`` with touching objects split by a watershed of their distance transform.

    Only a component larger than :data:`LARGE_SHARE` times the typical object's area is split:
    one of about that size is one object, however irregular. The typical object is a disc of
    ``diameter`` pixels, or, without it, of the median area of the image's own components (with
    fewer than :data:`FEW_COMPONENTS`, twice the median radius of their widest inscribed discs). Its
    markers are the distance transform's h-maxima of depth :data:`DEPTH_SHARE` of that diameter
    (at least half a pixel): a peak must rise that far above the saddle to its neighbour, so the
    depth follows the objects' size. A large component with no marker stays whole.
    """
    from scipy import ndimage
    from skimage import morphology, segmentation

    areas = np.bincount(components.ravel())
    areas[0] = 0
    present = areas[areas > 0]
    if not len(present):
        return components
    inside = components > 0
    distance = ndimage.distance_transform_edt(inside)
    if not diameter and len(present) < FEW_COMPONENTS:  # too few for a median: each one's widest inscribed disc
        diameter = 2 * float(np.median(ndimage.maximum(distance, components, np.flatnonzero(areas))))
    elif not diameter:
        diameter = float(np.sqrt(4 * np.median(present) / np.pi))
    large = areas > LARGE_SHARE * np.pi * diameter**2 / 4
    if not large.any():
        return components
    candidates = large[components]
    depth = max(0.5, DEPTH_SHARE * diameter)
    peaks = np.zeros(components.shape, dtype=bool)
    # h-maxima component by component, each in its own box: the reconstruction it runs costs by the
    # pixels it sees, and on a large image most pixels are background or small objects
    for index, box in enumerate(ndimage.find_objects(np.where(candidates, components, 0)), start=1):
        if box is not None:
            own = components[box] == index
            peaks[box] |= morphology.h_maxima(np.where(own, distance[box], 0.0), depth).astype(bool) & own
    markers, count = ndimage.label(peaks, structure=np.ones((3, 3)))
    grown = segmentation.watershed(-distance, markers, mask=candidates,
                                   connectivity=1 if connectivity == 4 else 2).astype(np.int32)
    result = components.astype(np.int32, copy=True)
    flooded = grown > 0
    result[flooded] = grown[flooded] + int(components.max())
    return result


def grown_interiors(region: np.ndarray, interior: np.ndarray, connectivity: int, min_marker: int = 0) -> np.ndarray:
    """Return the objects of one class of a border model: each connected part of ``interior`` (the
    pixels decided as the class itself, not border) of ``min_marker`` pixels or more is a marker,
    grown over ``region`` (the class's pixels, borders included) by a watershed of the distance to
    the markers, so each border pixel joins the nearest interior (a smaller part joins its
    neighbour's object). A part of ``region`` no marker reaches is one object."""
    from scipy import ndimage
    from skimage import measure, segmentation

    structure = 1 if connectivity == 4 else 2
    markers = without_small(measure.label(interior & region, connectivity=structure), min_marker)
    if not markers.any():
        return measure.label(region, connectivity=structure)
    grown = segmentation.watershed(ndimage.distance_transform_edt(markers == 0), markers, mask=region,
                                   connectivity=structure).astype(np.int32)
    left = region & (grown == 0)
    if left.any():  # unreachable from any interior: an object of its own
        rest = measure.label(left, connectivity=structure)
        grown[left] = rest[left] + int(markers.max())
    return grown


def fold_borders(mask: np.ndarray, num_classes: int) -> np.ndarray:
    """Return a border model's decided mask in the user's classes: each border pixel (the value
    ``num_classes``) takes the class of the nearest pixel of a foreground class (class 1 for two
    classes, or where there is none). Other values, IGNORE among them, stay."""
    border = mask == num_classes
    if not border.any():
        return mask
    folded = mask.copy()
    inner = (mask > 0) & (mask < num_classes)
    if num_classes == 2 or not inner.any():
        folded[border] = 1
        return folded
    from scipy import ndimage

    rows, cols = ndimage.distance_transform_edt(~inner, return_distances=False, return_indices=True)
    folded[border] = mask[rows[border], cols[border]]
    return folded


def border_target(mask: np.ndarray, instances: np.ndarray, width: int, num_classes: int) -> np.ndarray:
    """Return the training target of a border model: ``mask`` (class indices) with the value
    ``num_classes`` on every foreground pixel that has a pixel of another object within ``width``
    pixels (a disc), by the instance labels ``instances`` (0 the background). Where objects touch,
    the border splits them; where one stands alone, its edge stays its class."""
    from scipy import ndimage

    labels = instances.astype(np.int64)
    radius = max(1, int(width))
    offsets = np.arange(-radius, radius + 1)
    disc = offsets[:, np.newaxis] ** 2 + offsets[np.newaxis, :] ** 2 <= radius**2
    highest = ndimage.maximum_filter(labels, footprint=disc)
    lowest = ndimage.minimum_filter(np.where(labels > 0, labels, np.iinfo(np.int64).max), footprint=disc)
    near_other = (labels > 0) & ((highest != labels) | (lowest != labels))
    target = mask.copy()
    target[near_other & (mask > 0) & (mask < num_classes)] = num_classes
    return target


def border_width(diameter: float | None) -> int:
    """Return the border target's width for objects of a typical ``diameter`` (pixels): 1 to 4."""
    return int(np.clip(round(BORDER_SHARE * diameter), 1, 4)) if diameter else 1


def speckle_size(diameter: float | None) -> int:
    """Return the smallest object kept for objects of a typical ``diameter``: the area of a disc of
    :data:`MIN_SIZE_SHARE` of it (0: keep all, where the size is unknown)."""
    return int(np.pi * (MIN_SIZE_SHARE * diameter / 2) ** 2) if diameter else 0


def typical_diameter(mask: np.ndarray, num_classes: int) -> float | None:
    """Return the median equivalent diameter of a mask's connected components (None without any):
    the objects' size measured on the image itself, where nothing else records it."""
    from skimage import measure

    areas: list[np.ndarray] = []
    for class_index in range(1, num_classes):
        region = mask == class_index
        if region.any():
            areas.append(np.bincount(measure.label(region, connectivity=2).ravel())[1:])
    found = np.concatenate(areas) if areas else np.zeros(0)
    found = found[found > 0]
    return float(np.sqrt(4 * np.median(found) / np.pi)) if len(found) else None


def relabelled(labels: np.ndarray) -> tuple[np.ndarray, Any, Any]:
    """Return ``labels`` renumbered 1..n in the raster order of each object's first pixel."""
    from skimage import segmentation

    return segmentation.relabel_sequential(labels)


def second_moments(labels: np.ndarray, label: np.ndarray) -> dict[str, np.ndarray]:
    """Return, for the objects ``label`` of a label image, their centroids and eccentricities, summed
    over all objects at once (what ``regionprops`` computes object by object: the eccentricity of the
    ellipse of the same second central moments, ``sqrt(1 - l2 / l1)`` of the inertia tensor's
    eigenvalues, 0 where it has none)."""
    flat = labels.ravel()
    rows, cols = np.divmod(np.arange(flat.size, dtype=np.float64), labels.shape[1])
    count = int(flat.max()) + 1 if flat.size else 1

    def total(weights: np.ndarray | None = None) -> np.ndarray:
        return np.bincount(flat, weights=weights, minlength=count)[label]

    area = np.maximum(total(), 1)
    mean_row, mean_col = total(rows) / area, total(cols) / area
    # central moments of coordinates taken from each object's own centroid, so none loses precision
    shift_row = rows - per_pixel(flat, mean_row, label, count)
    shift_col = cols - per_pixel(flat, mean_col, label, count)
    var_row, var_col = total(shift_row**2) / area, total(shift_col**2) / area
    covariance = total(shift_row * shift_col) / area
    half_sum, root = (var_row + var_col) / 2, np.sqrt(((var_row - var_col) / 2) ** 2 + covariance**2)
    major, minor = half_sum + root, half_sum - root
    with np.errstate(divide="ignore", invalid="ignore"):
        eccentricity = np.where(major > 0, np.sqrt(np.clip(1 - minor / major, 0, 1)), 0.0)
    return {"centroid_row": mean_row, "centroid_col": mean_col, "eccentricity": eccentricity}


def per_pixel(flat: np.ndarray, means: np.ndarray, label: np.ndarray, count: int) -> np.ndarray:
    """Return, for every pixel, the mean of its object (``means`` given in ``label`` order; 0 for the background)."""
    per_label = np.zeros(count)
    per_label[label] = means
    return per_label[flat]


def object_rows(labels: np.ndarray, label_class: np.ndarray, scores: np.ndarray | None = None,
                confidence: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Return the measurements of every object of a label image, as columns of equal length.

    ``class``, ``label``, ``area`` (pixels), ``bbox_top``/``bbox_left``/``bbox_bottom``/``bbox_right``
    (bottom and right exclusive), ``centroid_row``/``centroid_col``, ``equivalent_diameter`` (of the
    disc of the same area), ``eccentricity`` (of the ellipse of the same second moments, 0 for a
    disc), ``solidity`` (area over convex hull area) and, with ``scores`` ``(h, w, K)`` in [0, 1],
    ``mean_score``: the mean probability of the object's own class over its pixels. ``confidence``
    ``(h, w)`` in [0, 1], each pixel's probability of the class it was given, serves the same when
    only that is at hand.
    """
    from skimage import measure

    table = measure.regionprops_table(labels, properties=PROPERTIES)
    label = table["label"].astype(np.int32)
    moments = second_moments(labels, label)
    rows = {
        "class": label_class[label].astype(np.int32) if len(label) else np.zeros(0, np.int32),
        "label": label, "area": table["area"].astype(np.int64),
        "bbox_top": table["bbox-0"].astype(np.int32), "bbox_left": table["bbox-1"].astype(np.int32),
        "bbox_bottom": table["bbox-2"].astype(np.int32), "bbox_right": table["bbox-3"].astype(np.int32),
        "centroid_row": moments["centroid_row"], "centroid_col": moments["centroid_col"],
        "equivalent_diameter": np.sqrt(4 * table["area"] / np.pi), "eccentricity": moments["eccentricity"],
        "solidity": table["solidity"],
    }
    own = None
    if scores is not None:
        own = np.take_along_axis(scores, label_class[labels][..., np.newaxis], axis=-1)[..., 0]
    elif confidence is not None:
        own = confidence
    if own is not None:
        sums = np.bincount(labels.ravel(), weights=np.asarray(own, dtype=np.float64).ravel(), minlength=len(label_class))
        rows["mean_score"] = sums[label] / np.maximum(rows["area"], 1)
    return rows
