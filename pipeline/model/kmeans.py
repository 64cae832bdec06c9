"""The classical baseline: K-means on per-pixel features, each cluster mapped to a class.

Features per pixel (each standardised by the training sample's mean and spread):

- ``colour``: the model input's channels (normalised as the artifact says);
- ``position``: row and column as fractions of the image's height and width;
- ``texture``: the local mean and standard deviation of the channels' mean over 7x7 pixels.

Fitting (:func:`fit_kmeans`) clusters a sample of training pixels with SciPy's ``kmeans2``
(k-means++ start) and maps each cluster to the class most of its pixels carry in the training
masks (background for a cluster no pixel fell into). Segmenting assigns every pixel to its
nearest centre (:class:`KMeansSegmenter`); the scores are that cluster's class, one-hot.
"""

from __future__ import annotations

from typing import Any

import numpy as np

FEATURES = ("colour", "position", "texture")
TEXTURE_SIZE = 7


def pixel_features(image: np.ndarray, features: tuple[str, ...]) -> np.ndarray:
    """Return ``(h * w, F)`` float32 features of a normalised image ``(h, w, C)``, row-major pixels."""
    from scipy import ndimage

    height, width, channels = image.shape
    columns = []
    if "colour" in features:
        columns.append(image.reshape(-1, channels))
    if "position" in features:
        rows, cols = np.mgrid[0:height, 0:width].astype(np.float32)
        columns.append(np.stack([rows.ravel() / max(1, height - 1), cols.ravel() / max(1, width - 1)], axis=1))
    if "texture" in features:
        gray = image.mean(axis=-1, dtype=np.float32)
        mean = ndimage.uniform_filter(gray, TEXTURE_SIZE, mode="reflect")
        spread = np.sqrt(np.maximum(ndimage.uniform_filter(gray * gray, TEXTURE_SIZE, mode="reflect") - mean * mean, 0))
        columns.append(np.stack([mean.ravel(), spread.ravel()], axis=1))
    return np.concatenate(columns, axis=1).astype(np.float32)


def sample_pixels(image: np.ndarray, mask: np.ndarray, features: tuple[str, ...], count: int,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(features, labels)`` of up to ``count`` labelled pixels of a training pair drawn at random
    (pixels the mask leaves unlabelled, 255, are never drawn)."""
    values = pixel_features(image, features)
    labels = mask.reshape(-1)
    labelled = np.flatnonzero(labels != 255)
    chosen = rng.choice(labelled, size=min(count, len(labelled)), replace=False)
    return values[chosen], labels[chosen]


def fit_kmeans(values: np.ndarray, labels: np.ndarray, clusters: int, num_classes: int, features: tuple[str, ...],
               seed: int = 0) -> dict[str, Any]:
    """Return the fitted baseline as model.json's ``kmeans`` section (plain lists).

    ``values`` ``(N, F)`` are pixel features, ``labels`` ``(N,)`` their classes. The mapping gives
    each cluster the class most of its pixels carry; a cluster no pixel fell into gets class 0.
    """
    from scipy.cluster.vq import kmeans2

    mean = values.mean(axis=0)
    spread = values.std(axis=0)
    spread[spread == 0] = 1.0
    standardised = ((values - mean) / spread).astype(np.float64)
    centres, codes = kmeans2(standardised, clusters, minit="++", seed=seed, iter=30)
    votes = np.zeros((clusters, num_classes), dtype=np.int64)
    np.add.at(votes, (codes, labels.astype(np.int64)), 1)
    classes = np.where(votes.sum(axis=1) > 0, votes.argmax(axis=1), 0)
    return {"features": list(features), "feature_mean": mean.tolist(), "feature_std": spread.tolist(),
            "centres": centres.tolist(), "classes": classes.tolist(), "pixels_fitted": len(labels)}


class KMeansSegmenter:
    """A fitted baseline: ``scores(pixels)`` maps normalised images ``(n, h, w, C)`` to one-hot class
    scores ``(n, h, w, K)`` (float32), each pixel taking its nearest centre's class."""

    def __init__(self, fitted: dict[str, Any], num_classes: int) -> None:
        self.features = tuple(fitted["features"])
        self.mean = np.asarray(fitted["feature_mean"], dtype=np.float32)
        self.spread = np.asarray(fitted["feature_std"], dtype=np.float32)
        self.centres = np.asarray(fitted["centres"], dtype=np.float32)
        self.classes = np.asarray(fitted["classes"], dtype=np.int64)
        self.num_classes = num_classes

    @classmethod
    def from_info(cls, info: Any) -> KMeansSegmenter:
        """Return the segmenter a ModelInfo's ``kmeans`` section describes."""
        return cls(info.kmeans, info.spec.num_classes)

    def classes_of(self, image: np.ndarray) -> np.ndarray:
        """Return the ``(h, w)`` class of every pixel of a normalised image ``(h, w, C)``."""
        from scipy.cluster.vq import vq

        values = (pixel_features(image, self.features) - self.mean) / self.spread
        codes, _ = vq(values, self.centres, check_finite=False)
        return self.classes[codes].reshape(image.shape[:2])

    def scores(self, pixels: np.ndarray) -> np.ndarray:
        """Return one-hot scores ``(n, h, w, num_classes)`` of a batch of normalised images."""
        eye = np.eye(self.num_classes, dtype=np.float32)
        return np.stack([eye[self.classes_of(np.asarray(image, dtype=np.float32))] for image in pixels])
