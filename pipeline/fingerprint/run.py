"""``segpipe inspect DATA``: the data set's fingerprint, measured on Ray Data over its shards.

The shards are read as a segmentation run reads them (every format, object storage, the label
map), each image measured in a CPU task (:func:`pipeline.fingerprint.measure.image_fingerprint`)
and the records folded on the driver. An archive larger than ``max_images`` is sampled: shards
evenly spaced over it until about that many images, and the fingerprint says so.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any

from pipeline.cluster import connect_ray
from pipeline.config import InspectConfig
from pipeline.fingerprint.measure import FingerprintTotals, image_fingerprint
from pipeline.imaging import MAX_CLASSES, LabelMap
from pipeline.io import storage
from pipeline.io.labelmaps import input_label_map
from pipeline.io.readers import read_dataset
from pipeline.io.shards import Shard, discover_shards

log = logging.getLogger(__name__)

GUESSED_SHARD_IMAGES = 100  # a tar or Parquet shard's images are not known before it is read


@dataclasses.dataclass(frozen=True)
class Fingerprint:
    """A data set's fingerprint and where it was written."""

    document: dict[str, Any]
    url: str

    def lines(self) -> list[str]:
        """Return the short table the command prints."""
        doc = self.document
        sizes, intensity, objects = doc["sizes"], doc["intensity"], doc["objects"]
        sampled = doc.get("sampled")
        rows = [
            ("images", f"{doc['images']} ({doc['ok']} readable)" + (
                f"; sampled: {sampled['shards']} of {sampled['of']} shards" if sampled else "")),
            ("sizes", f"{sizes['distinct']} distinct; width {span(sizes['width'])}, height {span(sizes['height'])}"),
            ("channels", ", ".join(f"{k}: {v}" for k, v in doc["channels"].items())
             + (f"; {doc['grey_stored_as_colour']} colour images are grey" if doc["grey_stored_as_colour"] else "")),
            ("bit depth", ", ".join(f"{k}-bit: {v}" for k, v in doc["bits"].items())),
            ("intensity", f"median per image {span(intensity['median'], '.2f')} of full scale"
             + ("; varies across images" if intensity["varies"] else "")),
            ("polarity", ", ".join(f"{k.replace('_', ' ')}: {v}" for k, v in doc["polarity"].items() if k != "mixed")
             + ("; mixed" if doc["polarity"]["mixed"] else "")),
            ("classes", ", ".join(f"{c['name']} {100 * c['pixel_share']:.1f} %" for c in doc["classes"])
             + (f"; ignored {100 * doc['ignored_share']:.1f} %" if doc["ignored_share"] else "")),
            ("objects", f"{objects['counted']} ({', '.join(objects['sources'])}); area {span(objects['area'], '.0f')} px"
             if objects["counted"] else "none measured"),
            ("problems", ", ".join(f"{k} {v}" for k, v in {**doc["errors"], **doc["truth_errors"]}.items())
             + (f"; {doc['repeated_keys']} keys repeated across shards" if doc["repeated_keys"] else "") or "none"),
        ]
        width = max(len(name) for name, _ in rows)
        return [f"{name:<{width}}  {value}" for name, value in rows] + [f"fingerprint written to {self.url}"]


def span(stats: dict[str, float] | None, spec: str = "g") -> str:
    """Return ``low..high (median m)`` of a quantiles entry, or ``n/a``."""
    if not stats:
        return "n/a"
    low, middle, high = stats.values()
    return f"{low:{spec}}..{high:{spec}} (median {middle:{spec}})"


def shard_images(shard: Shard) -> int:
    """Return how many images a shard holds, where the listing says (folder, COCO), else a guess."""
    if shard.members:
        return len(shard.members)
    if shard.payload:
        return len(json.loads(shard.payload).get("images", []))
    return GUESSED_SHARD_IMAGES


def sampled_shards(shards: list[Shard], max_images: int) -> list[Shard]:
    """Return the shards to read: all, or evenly spaced ones holding about ``max_images`` images."""
    sizes = [shard_images(shard) for shard in shards]
    if sum(sizes) <= max_images:
        return shards
    wanted = max(1, round(len(shards) * max_images / sum(sizes)))
    step = len(shards) / wanted
    return [shards[int(index * step)] for index in range(wanted)]


def measure_data(data: str, shards: list[Shard], found: LabelMap | None, where: str, storage_cfg: Any,
                 stage_cpus: float, max_images: int) -> dict[str, Any]:
    """Return the fingerprint document of the data set at ``data`` (its ``shards``, read through the label map
    ``found`` from ``where``, or plain indices), measured on Ray Data; Ray must be connected."""
    label_map = (found or LabelMap()).with_classes(found.num_classes if found and found.num_classes else MAX_CLASSES)
    chosen = sampled_shards(shards, max_images)
    dataset = read_dataset(chosen, storage_cfg, stage_cpus).map(
        lambda row: {"record": json.dumps(image_fingerprint(row, label_map))}, num_cpus=stage_cpus)
    totals = FingerprintTotals()
    for row in dataset.iter_rows():
        totals.add(json.loads(row["record"]))
    return {"input": data, "label_map": where or None,
            "sampled": {"shards": len(chosen), "of": len(shards)} if len(chosen) < len(shards) else None,
            **totals.document(label_map.names)}


def inspect_data(cfg: InspectConfig) -> Fingerprint:
    """Measure the data set at ``cfg.data`` and write its fingerprint to ``cfg.output``; return it."""
    storage.check_apart(cfg.output, {"data": cfg.data})
    checks = cfg.storage.for_checks()
    shards = discover_shards(cfg.data, checks, cfg.folder_shard_size, cfg.coco.images)
    found, where = input_label_map(cfg.data, cfg.labels.given(), checks)
    connect_ray(cfg.address)
    document = measure_data(cfg.data, shards, found, where, cfg.storage, cfg.stage_cpus, cfg.max_images)
    storage.write_bytes(cfg.output, json.dumps(document, indent=2).encode(), cfg.storage)
    fingerprint = Fingerprint(document, cfg.output)
    log.info("fingerprint of %s: %d images; written to %s", cfg.data, document["images"], cfg.output)
    return fingerprint
