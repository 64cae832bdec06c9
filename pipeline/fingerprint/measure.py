"""What one labelled image says about its data set: size, channels, depth, intensities, polarity,
class pixels and object sizes (:func:`image_fingerprint`), and the set's fingerprint from them
(:class:`FingerprintTotals`)."""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import numpy as np

from pipeline import imaging
from pipeline.imaging import IGNORE, LabelMap

MAX_OBJECTS_PER_IMAGE = 2000  # object areas kept per image (a speckled mask would give millions)
AREA_EDGES = np.unique(np.round(np.logspace(0, 8, 65)).astype(np.int64))  # log bins of object areas, 1 px .. 10^8
VARIES = 0.2  # per-image median intensities whose 5th-95th percentile span exceeds this share of full scale vary
POLARITY_MARGIN = 0.02  # a foreground this much brighter (darker) than its background, as a share of full scale


def image_fingerprint(row: dict[str, Any], label_map: LabelMap) -> dict[str, Any]:
    """Return one input row's measurements (``error_kind`` set and the rest empty where the image fails).

    Intensities are the luminance (mean of the channels) as a share of the type's full scale
    (255 or 65535): its 1st, 50th and 99th percentiles. With a mask, ``fg_mean``/``bg_mean`` are
    the mean luminance of its foreground (any class but 0) and background pixels, ``class_pixels``
    counts each stored class 0..254 and ``ignored_pixels`` the pixels not labelled; object areas
    come from the instance labels, else from each foreground class's connected components.
    """
    record: dict[str, Any] = {"key": str(row["key"]), "shard": str(row["shard"]), "error_kind": str(row["error_kind"]),
                              "truth_error_kind": str(row["truth_error_kind"])}
    if row["error"]:
        return record
    try:
        image = imaging.decode_image(row["image"])
    except imaging.SampleError as exc:
        return {**record, "error_kind": exc.kind}
    scale = 65535.0 if image.dtype == np.uint16 else 255.0
    luminance = image.mean(axis=2) / scale if image.shape[2] > 1 else image[:, :, 0] / scale
    low, median, high = np.percentile(luminance, [1, 50, 99])
    grey = image.shape[2] == 1 or bool((image[:, :, 0] == image[:, :, 1]).all() and (image[:, :, 1] == image[:, :, 2]).all())
    record.update(height=image.shape[0], width=image.shape[1], channels=image.shape[2], bits=16 if scale > 255 else 8,
                  grey=grey, p01=float(low), p50=float(median), p99=float(high))
    if len(row["mask"]):
        try:
            mask = imaging.decode_mask(row["mask"], label_map, image.shape[:2])
        except imaging.SampleError as exc:
            return {**record, "truth_error_kind": exc.kind}
        labelled = mask != IGNORE
        foreground = labelled & (mask > 0)
        background = labelled & (mask == 0)
        record.update(class_pixels=np.bincount(mask[labelled].ravel(), minlength=1).tolist(),
                      ignored_pixels=int((~labelled).sum()),
                      fg_mean=float(luminance[foreground].mean()) if foreground.any() else None,
                      bg_mean=float(luminance[background].mean()) if background.any() else None)
        record.update(object_areas(mask, row["instances"], image.shape[:2]))
    return record


def object_areas(mask: np.ndarray, instances: bytes, shape: tuple[int, int]) -> dict[str, Any]:
    """Return ``object_areas`` (pixels of each object, up to :data:`MAX_OBJECTS_PER_IMAGE`) and where they came from."""
    if len(instances):
        try:
            labels = imaging.decode_instances(instances, shape)
            areas = np.bincount(labels.ravel())[1:]
            return {"object_areas": areas[areas > 0][:MAX_OBJECTS_PER_IMAGE].tolist(), "object_source": "labels"}
        except imaging.SampleError:
            pass
    from skimage import measure

    areas: list[int] = []
    for class_index in np.unique(mask[(mask > 0) & (mask != IGNORE)]):
        components = measure.label(mask == class_index, connectivity=2)
        areas.extend(np.bincount(components.ravel())[1:].tolist())
    return {"object_areas": areas[:MAX_OBJECTS_PER_IMAGE], "object_source": "components"}


def quantiles(values: list[float] | np.ndarray, points: tuple[float, ...] = (0, 50, 100)) -> dict[str, float] | None:
    """Return the percentiles ``points`` of ``values`` keyed ``p0``, ``p50``, ... (None when empty)."""
    array = np.asarray(values, dtype=np.float64)
    if not array.size:
        return None
    return {f"p{point:g}": float(np.percentile(array, point)) for point in points}


class FingerprintTotals:
    """Folds image records into the data set's fingerprint (:meth:`document`)."""

    def __init__(self) -> None:
        self.images = 0
        self.errors: Counter[str] = Counter()
        self.truth_errors: Counter[str] = Counter()
        self.sizes: Counter[tuple[int, int]] = Counter()
        self.channels: Counter[int] = Counter()
        self.bits: Counter[int] = Counter()
        self.grey_colour = 0
        self.pixels = 0
        self.medians: list[float] = []
        self.ranges: list[float] = []
        self.polarity: Counter[str] = Counter()
        self.class_pixels = np.zeros(0, dtype=np.int64)
        self.class_images = np.zeros(0, dtype=np.int64)
        self.ignored = 0
        self.labelled = 0
        self.masks = 0
        self.areas = np.zeros(len(AREA_EDGES) - 1, dtype=np.int64)
        self.area_sample: list[int] = []
        self.object_sources: Counter[str] = Counter()
        self.keys: dict[str, set[str]] = {}

    def add(self, record: dict[str, Any]) -> None:
        """Fold one image's record in."""
        self.images += 1
        self.keys.setdefault(record["key"], set()).add(record["shard"])
        if record["error_kind"]:
            self.errors[record["error_kind"]] += 1
            return
        if record["truth_error_kind"]:
            self.truth_errors[record["truth_error_kind"]] += 1
        self.sizes[(int(record["width"]), int(record["height"]))] += 1
        self.pixels += int(record["width"]) * int(record["height"])
        self.channels[int(record["channels"])] += 1
        self.bits[int(record["bits"])] += 1
        self.grey_colour += int(record["grey"] and record["channels"] > 1)
        self.medians.append(float(record["p50"]))
        self.ranges.append(float(record["p99"] - record["p01"]))
        self.add_truth(record)

    def add_truth(self, record: dict[str, Any]) -> None:
        """Fold in an image's mask measurements, where it had a usable mask."""
        pixels = record.get("class_pixels")
        if pixels is None:
            return
        self.masks += 1
        counts = np.asarray(pixels, dtype=np.int64)
        width = max(len(counts), len(self.class_pixels))
        self.class_pixels = np.pad(self.class_pixels, (0, width - len(self.class_pixels)))
        self.class_images = np.pad(self.class_images, (0, width - len(self.class_images)))
        self.class_pixels[:len(counts)] += counts
        self.class_images[:len(counts)] += counts > 0
        self.ignored += int(record["ignored_pixels"])
        self.labelled += int(counts.sum())
        foreground, background = record.get("fg_mean"), record.get("bg_mean")
        if foreground is not None and background is not None:
            gap = foreground - background
            self.polarity["bright_on_dark" if gap > POLARITY_MARGIN else "dark_on_bright" if gap < -POLARITY_MARGIN
                          else "no_contrast"] += 1
        areas = np.asarray(record.get("object_areas") or [], dtype=np.int64)
        if areas.size:
            self.object_sources[record["object_source"]] += 1
            self.areas += np.histogram(areas, AREA_EDGES)[0]
            self.area_sample.extend(areas[:50].tolist())

    def document(self, names: tuple[str, ...] = ()) -> dict[str, Any]:
        """Return the fingerprint (``fingerprint.json``'s content, less the input and sampling)."""
        ok = self.images - sum(self.errors.values())
        sizes = self.sizes
        widths = [w for (w, _), n in sizes.items() for _ in range(n)]
        heights = [h for (_, h), n in sizes.items() for _ in range(n)]
        spread = float(np.subtract(*np.percentile(self.medians, [95, 5]))) if self.medians else None
        classes = len(self.class_pixels)
        shares = (self.class_pixels / self.labelled).tolist() if self.labelled else []
        areas = np.asarray(self.area_sample, dtype=np.float64)
        median_area = float(np.median(areas)) if areas.size else None
        return {
            "images": self.images, "ok": ok, "errors": dict(self.errors.most_common()),
            "truth_errors": dict(self.truth_errors.most_common()),
            "repeated_keys": sum(len(shards) > 1 for shards in self.keys.values()),
            "sizes": {"width": quantiles(widths), "height": quantiles(heights), "distinct": len(sizes),
                      "most_common": [{"width": w, "height": h, "images": n} for (w, h), n in sizes.most_common(5)],
                      "varies": len(sizes) > 1, "megapixels": self.pixels / 1e6},
            "channels": {str(k): v for k, v in sorted(self.channels.items())}, "grey_stored_as_colour": self.grey_colour,
            "bits": {str(k): v for k, v in sorted(self.bits.items())},
            "intensity": {"median": quantiles(self.medians, (5, 50, 95)), "range": quantiles(self.ranges, (5, 50, 95)),
                          "median_spread": spread, "varies": spread is not None and spread > VARIES},
            "polarity": {**dict(self.polarity), "mixed": min(self.polarity.get("bright_on_dark", 0),
                                                             self.polarity.get("dark_on_bright", 0)) > 0},
            "masks": self.masks,
            "classes": [{"index": index, "name": names[index] if index < len(names) else
                         "background" if index == 0 else f"class_{index}",
                         "pixel_share": shares[index], "images": int(self.class_images[index])}
                        for index in range(classes)],
            "ignored_share": self.ignored / (self.labelled + self.ignored) if self.labelled + self.ignored else 0.0,
            "objects": {"counted": int(self.areas.sum()), "sources": dict(self.object_sources),
                        "area": quantiles(areas, (5, 50, 95)),
                        "median_diameter": 2 * math.sqrt(median_area / math.pi) if median_area else None},
        }
