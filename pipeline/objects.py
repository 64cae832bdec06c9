"""Objects from a class-index mask: connected components per foreground class, optionally split
where they touch (watershed on the distance transform), and one row of measurements per object.

scikit-image does the work (``measure.label``, ``segmentation.watershed``, ``measure.regionprops_table``),
with SciPy's Euclidean distance transform and maximum filter. Labels are numbered
from 1 across all classes of an image (0 is the background) in class order, then in the raster
order of each object's first pixel.
"""

from __future__ import annotations

from typing import Any

import numpy as np

SPLITS = ("none", "watershed")
PROPERTIES = ("label", "area", "bbox", "solidity")  # from regionprops; the moments are summed here, for every object at once
PEAK_DISTANCE = 3  # pixels between two markers of the watershed: smaller peaks are one object's ridge


def label_objects(mask: np.ndarray, num_classes: int, connectivity: int = 8, min_size: int = 0,
                  split: str = "none") -> tuple[np.ndarray, np.ndarray]:
    """Return ``(labels, label_class)``: an int32 label image of ``mask``'s objects and, indexed by
    label, each object's class (``label_class[0]`` is 0, the background).

    ``connectivity`` 4 or 8 decides which neighbours join one object; objects of fewer than
    ``min_size`` pixels are dropped (left as background); ``split="watershed"`` splits touching
    objects along the valleys of their distance transform, one marker per plateau of local maxima
    (:func:`watershed_split`).
    """
    from skimage import measure

    if connectivity not in (4, 8):
        raise ValueError(f"connectivity={connectivity}: 4 or 8")
    if split not in SPLITS:
        raise ValueError(f"split={split!r}: one of {', '.join(SPLITS)}")
    labels = np.zeros(mask.shape, dtype=np.int32)
    classes = [0]
    for class_index in range(1, num_classes):
        region = mask == class_index
        if not region.any():
            continue
        components = measure.label(region, connectivity=1 if connectivity == 4 else 2)
        if min_size > 1:
            small = np.bincount(components.ravel()) < min_size
            small[0] = False
            components[small[components]] = 0
        if split == "watershed":
            components = watershed_split(components, connectivity)
        components, _, _ = relabelled(components)
        count = int(components.max())
        if count:
            labels[components > 0] = components[components > 0] + len(classes) - 1
            classes.extend([class_index] * count)
    return labels, np.array(classes, dtype=np.int32)


def watershed_split(components: np.ndarray, connectivity: int) -> np.ndarray:
    """Return ``components`` with touching objects split by a watershed of their distance transform.

    The markers are the distance transform's local maxima: each connected plateau of pixels that
    are the highest within :data:`PEAK_DISTANCE` pixels (a ``2 * PEAK_DISTANCE + 1`` square) is one
    marker, and a component with none (too thin) gets one at its first pixel. One filter over the
    image, so the time grows with its pixels, not with the peaks of a large noisy component.
    """
    from scipy import ndimage
    from skimage import segmentation

    inside = components > 0
    distance = ndimage.distance_transform_edt(inside)
    peaks = inside & (ndimage.maximum_filter(distance, size=2 * PEAK_DISTANCE + 1) == distance)
    markers, count = ndimage.label(peaks, structure=np.ones((3, 3)))
    present = np.unique(components[inside])
    marked = np.unique(components[markers > 0])
    unmarked = np.setdiff1d(present, marked)
    if len(unmarked):  # a component with no peak of its own keeps one marker, at its first pixel
        flat = components.ravel()
        labels, first = np.unique(flat, return_index=True)
        markers.ravel()[first[np.isin(labels, unmarked)]] = count + 1 + np.arange(len(unmarked))
    return segmentation.watershed(-distance, markers, mask=inside,
                                  connectivity=1 if connectivity == 4 else 2).astype(np.int32)


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
