"""Exactly-once output across re-runs: what an output already holds, and whether a run may continue it.

A shard's outputs are complete when its commit marker ``_done/<shard>.json`` exists: the driver
writes the marker only after the shard's masks and ``metrics/<shard>.parquet`` are written. A
re-run of the same command on the same output therefore skips committed shards and redoes the
rest; a shard that was half-written (masks or Parquet without a marker) is redone and its files
are overwritten under the same deterministic names, so no row is duplicated.

A marker records the shard's identity (:attr:`Shard.identity`: size and ETag or modification
time). A shard replaced under the same name since it was committed is redone: its marker is
removed first, then its outputs, so a crash in between leaves it simply uncommitted. A shard
committed earlier but no longer in the input is reported (its rows stay in the output).

An output is continued only by the same run: same input URL, same model (sha256 of the
artifact), same folder shard size (it decides shard names), same tta, precision, tiling and objects. Anything else is refused before work
starts unless ``overwrite`` is set, which first removes the previous outputs.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import logging
from typing import Any

from pipeline.config import ConfigError, SegmentConfig
from pipeline.errors import cut_list
from pipeline.io import layout, storage
from pipeline.io.shards import Shard

log = logging.getLogger(__name__)

@dataclasses.dataclass(frozen=True)
class PriorOutput:
    """What an output URL already holds for this run: the previous run's id, the markers of the shards
    it may keep, and the shards it committed that changed since (now redone) or left the input."""

    run_id: str | None
    committed: dict[str, dict[str, Any]]
    changed: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    precision: str | None = None  # the arithmetic the previous run used


MARKER_THREADS = 32  # markers are read this many at a time: on an object store each is one GET


def read_markers(cfg: SegmentConfig) -> dict[str, dict[str, Any]]:
    """Return ``{shard name: marker}`` for every commit marker under the output."""
    def read(url: str) -> dict[str, Any] | None:
        try:
            return json.loads(storage.read_bytes(url, cfg.storage))
        except (OSError, ValueError) as exc:  # a torn marker is no commit: the shard is redone
            log.warning("commit marker %s is unreadable (%s); its shard will be redone", url, exc)
            return None

    urls = layout.marker_urls(cfg.output, cfg.storage)
    with concurrent.futures.ThreadPoolExecutor(MARKER_THREADS) as pool:
        found = list(pool.map(read, urls))
    return {layout.shard_of(url): marker for url, marker in zip(urls, found) if marker is not None}


def identity(cfg: SegmentConfig, model_sha256: str, tiling: dict[str, Any],
             labels: dict[str, Any] | None = None) -> dict[str, Any]:
    """Return what must match for a run to continue an output (``tiling``: :meth:`Tiling.to_json`;
    ``labels``: the label map the ground truth is read through, as model.json records it)."""
    return {"input": cfg.input.rstrip("/"), "model_sha256": model_sha256, "folder_shard_size": cfg.folder_shard_size,
            "tta": cfg.tta, "precision": cfg.precision, "tiling": tiling_identity(tiling),
            "objects": objects_identity(dataclasses.asdict(cfg.objects)), "labels": labels or {}}


def objects_identity(objects: dict[str, Any] | None) -> dict[str, Any]:
    """Return the objects settings that shape the outputs (nothing without objects)."""
    objects = objects or {}
    return {k: v for k, v in objects.items() if k != "enabled"} if objects.get("enabled") else {}


def tiling_identity(tiling: dict[str, Any] | None) -> dict[str, Any]:
    """Return the part of a tiling record that shapes the masks (not how it was asked for)."""
    return {k: v for k, v in (tiling or {"mode": "resize"}).items() if k != "requested"}


def prior_identity(run_json: dict[str, Any]) -> dict[str, Any]:
    """Return :func:`identity` as recorded in a previous run.json (one without tiling resized)."""
    config = run_json.get("config") or {}
    model = run_json.get("model") or {}
    tiling = run_json.get("tiling") or {"mode": "resize", "window": (model.get("info") or {}).get("input_size")}
    return {"input": str(config.get("input", "")).rstrip("/"), "model_sha256": model.get("sha256"),
            "folder_shard_size": config.get("folder_shard_size"), "tta": bool(config.get("tta", False)),
            "precision": (run_json.get("precision") or {}).get("used") or config.get("precision", "float32"),
            "tiling": tiling_identity(tiling), "objects": objects_identity(config.get("objects")),
            "labels": (model.get("info") or {}).get("labels") or {}}


def clear_output(cfg: SegmentConfig) -> None:
    """Remove a previous run's outputs (masks, metrics, markers, report, run.json) under the output URL."""
    remove(cfg, [layout.folder_url(cfg.output, part) for part in layout.PARTS])
    log.info("overwrite: removed the previous outputs under %s", cfg.output)


def prepare_output(cfg: SegmentConfig, model_sha256: str, overwrite: bool, tiling: dict[str, Any],
                   shards: list[Shard], labels: dict[str, Any] | None = None) -> PriorOutput:
    """Return what the output already holds for this run's ``shards``; raise ConfigError if it belongs to another run.

    With ``overwrite`` the previous outputs are removed first and nothing is resumed. Shards whose
    identity changed since their commit lose their outputs here and are redone.
    """
    run_url = layout.run_record_url(cfg.output)
    try:
        run_json = json.loads(storage.read_bytes(run_url, cfg.storage))
    except FileNotFoundError:
        run_json = None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{run_url} exists but cannot be read ({exc}); pass --overwrite to start the output afresh") from exc
    markers = read_markers(cfg)
    if run_json is None and not markers:
        return PriorOutput(None, {})
    if overwrite:
        clear_output(cfg)
        return PriorOutput(None, {})
    if run_json is None:
        raise ConfigError(f"output {cfg.output} holds commit markers but no run.json; it was not written by "
                          "'segpipe segment' or is damaged: choose another output or pass --overwrite")
    if markers and run_json.get("layout") != layout.VERSION:
        raise ConfigError(f"output {cfg.output} holds run {run_json.get('run_id')}, written by an earlier segpipe "
                          "with another output layout (masks/<key>.png, commit markers without shard identity); it "
                          "cannot be continued: pass --overwrite to redo it here, or choose another output")
    wanted, found = identity(cfg, model_sha256, tiling, labels), prior_identity(run_json)
    if cfg.precision == "auto":
        wanted["precision"] = found["precision"]  # auto continues in the arithmetic the run began in
    different = [f"{key}: {found[key]!r} there, {wanted[key]!r} now" for key in wanted if found[key] != wanted[key]]
    if different:
        raise ConfigError(
            f"output {cfg.output} holds run {run_json.get('run_id')} with another {', '.join(different)}; "
            "re-running continues an output only with the same input, model, shard size, tta, precision, tiling and "
            "objects: choose "
            "another "
            "output, or pass --overwrite to replace it"
        )
    if cfg.run_id and run_json.get("run_id") and cfg.run_id != run_json["run_id"]:
        raise ConfigError(f"output {cfg.output} holds run {run_json['run_id']}, not run_id={cfg.run_id}; "
                          "leave run_id unset to continue it, or pass --overwrite")
    current = {shard.name: shard for shard in shards}
    removed = tuple(sorted(set(markers) - set(current)))
    changed = tuple(sorted(name for name, marker in markers.items()
                           if name in current and marker.get("identity") != current[name].identity))
    if removed:
        log.warning("%d shard(s) committed under %s are no longer in the input (%s); their rows stay in the "
                    "output and its report: pass --overwrite to start the output afresh", len(removed), cfg.output,
                    cut_list(removed, 5))
    if changed:
        log.warning("%d shard(s) changed since they were committed (%s): their outputs are removed and the "
                    "shards segmented again", len(changed), cut_list(changed, 5))
        for name in changed:
            clear_shard(cfg, name)
    kept = {name: marker for name, marker in markers.items() if name in current and name not in changed}
    if kept:
        log.info("output %s: continuing run %s, %d shard(s) already committed", cfg.output, run_json.get("run_id"), len(kept))
    return PriorOutput(run_json.get("run_id"), kept, changed, removed, found["precision"])


def clear_shard(cfg: SegmentConfig, name: str) -> None:
    """Remove one shard's outputs, its commit marker first (:func:`pipeline.io.layout.shard_parts`)."""
    remove(cfg, layout.shard_parts(cfg.output, name))


def remove(cfg: SegmentConfig, urls: list[str]) -> None:
    """Remove the files and folders at ``urls`` under the output, in order (those that exist)."""
    fs, _ = storage.filesystem_for(cfg.output, cfg.storage)
    for url in urls:
        _, path = storage.filesystem_for(url, cfg.storage)
        if fs.exists(path):
            fs.rm(path, recursive=True)
    fs.invalidate_cache()
