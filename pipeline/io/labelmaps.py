"""The label map of an input: how its masks store their classes (:class:`pipeline.imaging.LabelMap`).

It is given by the run's ``labels.*`` keys, else by a ``labels.yaml`` at the root of the input
(beside a single shard file), else by a COCO annotations file's categories; with none of these
the masks hold plain class indices.
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping
from typing import Any

from pipeline.config import ConfigError, StorageConfig
from pipeline.imaging import LabelMap
from pipeline.io import storage

LABELS_FILE = "labels.yaml"


def input_root(url: str, storage_config: StorageConfig | None) -> str:
    """Return the folder an input's ``labels.yaml`` sits in: the input itself, or a single shard file's folder."""
    fs, path = storage.filesystem_for(url, storage_config)
    if fs.isfile(path):
        return url.rstrip("/").rsplit("/", 1)[0] if "/" in url.rstrip("/") else "."
    return url


def input_label_map(url: str, configured: Mapping[str, Any] | None, storage_config: StorageConfig | None) -> tuple[LabelMap | None, str]:
    """Return ``(label map, where it was found)`` for the input at ``url``, or ``(None, "")`` for plain
    class indices; ConfigError (naming the file or key and the fix) for one that cannot be read.

    ``configured``: the run's ``labels.*`` keys that are set; they win over the input's own files.
    """
    if configured:
        try:
            return LabelMap.from_mapping(configured, "labels"), "the labels.* keys"
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
    if url.lower().endswith(".json"):
        from pipeline.io.formats.coco import coco_label_map

        return coco_label_map(url, storage_config), f"the categories of {url}"
    candidate = storage.join_url(input_root(url, storage_config), LABELS_FILE)
    if not storage.exists(candidate, storage_config):
        return None, ""
    return label_map_file(candidate, storage_config), candidate


def label_map_file(url: str, storage_config: StorageConfig | None) -> LabelMap:
    """Return the label map a ``labels.yaml`` holds; ConfigError naming the file for one that cannot be used."""
    import yaml

    try:
        data = yaml.safe_load(storage.read_bytes(url, storage_config).decode("utf-8")) or {}
    except (UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{url} is not valid YAML ({type(exc).__name__}: {exc}); fix it or remove it") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{url} must hold a mapping (classes, values, colors, ignore), not {type(data).__name__}")
    try:
        return LabelMap.from_mapping(data, posixpath.basename(url))
    except ValueError as exc:
        raise ConfigError(f"{url}: {exc}") from exc


def fitted_label_map(found: LabelMap | None, where: str, num_classes: int) -> LabelMap:
    """Return the label map for a model of ``num_classes`` (plain indices when none was found); ConfigError
    naming where the map came from when its classes do not fit the model's."""
    if found is None:
        return LabelMap(num_classes=num_classes)
    try:
        return found.with_classes(num_classes)
    except ValueError as exc:
        raise ConfigError(f"{exc} (label map from {where})") from exc
