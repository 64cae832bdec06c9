"""The dataset-level report: numbers against a hand computation, bad runs, baseline, HTML in a real browser."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from jobs import cli
from pipeline import report, schema
from pipeline.config import ReportConfig, SampleDataConfig
from pipeline.metrics import dice_from_counts, foreground_mean, iou_from_counts
from pipeline.report import aggregate

CLASSES = ["background", "cell"]


def row(key: str, tp: list[int] | None = None, fp: list[int] | None = None, fn: list[int] | None = None,
        size: tuple[int, int] = (2, 2), pixels: list[int] | None = None, error: str | None = None,
        kind: str = "corrupt_image", ignored: int = 0) -> dict[str, Any]:
    """Return a metrics row; Dice/IoU are derived from the counts as the pipeline does."""
    base = {"key": key, "source": "s3://in/shard.tar", "model_id": "unet-test", "run_id": "run-a", "seconds": 0.1}
    if error:
        return {**base, "status": "error", "error": error, "error_kind": kind}
    record: dict[str, Any] = {**base, "status": "ok", "height": size[0], "width": size[1], "mask_uri": f"s3://out/masks/{key}.png"}
    if tp is not None:
        dice, iou = dice_from_counts(tp, fp, fn), iou_from_counts(tp, fp, fn)
        record.update(tp=tp, fp=fp, fn=fn, dice=dice.tolist(), iou=iou.tolist(), ignored_pixels=ignored,
                      mean_dice=foreground_mean(dice), mean_iou=foreground_mean(iou),
                      class_pixels=[tp[0] + fp[0], tp[1] + fp[1]])
    else:
        record["class_pixels"] = pixels
    return record


def write_run(folder: Path, shards: dict[str, list[dict[str, Any]]], status: str = "finished",
              commit: bool = True, run_id: str = "run-a") -> str:
    """Write a run's outputs (run.json, metrics/<shard>.parquet, _done markers) as `segpipe segment` does."""
    for name, rows in shards.items():
        (folder / "metrics").mkdir(parents=True, exist_ok=True)
        pq.write_table(schema.metrics_table(rows), folder / "metrics" / f"{name}.parquet")
        if commit:
            (folder / "_done").mkdir(exist_ok=True)
            (folder / "_done" / f"{name}.json").write_text(json.dumps({"shard": name, "rows": len(rows)}))
    run_json = {"run_id": run_id, "status": status, "started": "2026-11-22T22:00:00Z", "ended": "2026-11-23T04:00:00Z",
                "shards": len(shards), "model": {"id": "unet-test", "url": "s3://models/unet",
                                                  "info": {"class_names": CLASSES, "num_classes": 2}},
                "summary": {"images_per_second": 12.5, "wall_seconds": 21600.0}, "config": {"batch_size": 16}}
    (folder / "run.json").write_text(json.dumps(run_json))
    return str(folder)


HAND_ROWS = {
    "s0": [
        row("a", tp=[6, 2], fp=[1, 1], fn=[1, 1], size=(2, 6), ignored=2),  # cell Dice 4/6, IoU 2/4; 2 px unlabelled
        row("b", tp=[4, 0], fp=[0, 0], fn=[0, 0]),                  # no cell anywhere: cell Dice NaN
        row("c", tp=[0, 3], fp=[1, 0], fn=[0, 1]),                  # cell Dice 6/7, background Dice 0
    ],
    "s1": [
        row("d", pixels=[3, 1]),                                    # no ground truth
        row("e", error="e: image cannot be decoded (OSError: broken); the file is corrupt or truncated"),
        {**row("f", pixels=[4, 0]), "truth_error_kind": "mask_size_mismatch",  # segmented, its truth unusable
         "truth_error": "f: the ground-truth mask cannot be used: mask size 10x10 differs from image size 2x2"},
    ],
}


def test_summary_matches_a_hand_computation(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run", HAND_ROWS)
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    record["summary"]["repeated_keys"] = {"count": 1, "examples": [{"key": "a", "shards": ["s0", "s9"]}]}
    record.update(changed_shards=["s1"], removed_shards=["s9"])
    (tmp_path / "run" / "run.json").write_text(json.dumps(record))
    result = report.build_report(ReportConfig(run=run, worst=2))
    summary = json.loads(Path(result.summary_url).read_text())

    assert summary["counts"] == {
        "images": 6, "ok": 5, "errors": 1, "errors_by_kind": {"corrupt_image": 1}, "truth_errors": 1,
        "truth_errors_by_kind": {"mask_size_mismatch": 1}, "with_ground_truth": 3, "without_ground_truth": 2,
        "ignored_pixels": 2, "ignored_fraction": 2 / 20,
        "distinct_keys": 6, "shards": 2, "committed_shards": 2, "metrics_files": 2}
    assert [(e["key"], e["kind"]) for e in summary["truth_errors"]] == [("f", "mask_size_mismatch")]
    assert summary["run"]["changed_shards"] == ["s1"] and summary["run"]["repeated_keys"]["count"] == 1
    cell = summary["classes"][1]
    assert cell["name"] == "cell"
    assert cell["dice"]["macro"] == pytest.approx((4 / 6 + 6 / 7) / 2, abs=1e-6)
    assert cell["dice"]["nan_images"] == 1 and cell["dice"]["images"] == 3
    assert cell["dice"]["median"] == pytest.approx(np.percentile([4 / 6, 6 / 7], 50), abs=1e-6)
    assert cell["dice"]["p05"] == pytest.approx(np.percentile([4 / 6, 6 / 7], 5), abs=1e-6)
    assert cell["dice"]["micro"] == pytest.approx(2 * 5 / (2 * 5 + 1 + 2), abs=1e-6)   # TP 5, FP 1, FN 2
    assert cell["iou"]["micro"] == pytest.approx(5 / 8, abs=1e-6)
    low, high = cell["dice"]["ci95"]
    assert 4 / 6 - 1e-6 <= low <= cell["dice"]["macro"] <= high <= 6 / 7 + 1e-6
    background = summary["classes"][0]
    assert background["dice"]["macro"] == pytest.approx((12 / 14 + 1 + 0) / 3, abs=1e-6)
    assert background["dice"]["micro"] == pytest.approx(20 / (20 + 2 + 1), abs=1e-6)  # TP 10, FP 2, FN 1
    assert summary["foreground"]["dice"]["macro"] == pytest.approx(cell["dice"]["macro"], abs=1e-6)
    assert summary["foreground"]["dice"]["micro"] == pytest.approx(cell["dice"]["micro"], abs=1e-6)
    # the 2 unlabelled pixels of "a" count nowhere: accuracy and true shares are over the 18 labelled ones
    assert summary["pixel_accuracy"] == pytest.approx((6 + 2 + 4 + 0 + 0 + 3) / (10 + 4 + 4), abs=1e-6)
    assert cell["true_fraction"] == pytest.approx((2 + 1 + 0 + 3 + 1) / 18, abs=1e-6)
    assert cell["predicted_fraction"] == pytest.approx((3 + 0 + 3 + 1 + 0) / (10 + 4 + 4 + 4 + 4), abs=1e-6)
    assert [w["key"] for w in summary["worst"]] == ["a", "c"]
    assert sum(cell["dice"]["histogram"]["counts"]) == 2
    assert summary["run"]["images_per_second"] == 12.5 and summary["run"]["model_id"] == "unet-test"
    jsonschema.validate(summary, report.SUMMARY_SCHEMA)
    html = Path(result.html_url).read_text()
    assert "mask_size_mismatch" in html and "overlay unavailable" in html  # the sources here do not exist
    assert "1 image(s) were segmented, but their ground truth could not be used" in html
    assert "1 key(s) are held by more than one shard" in html and "no longer in the input" in html


def test_summary_schema_catches_a_missing_key(tmp_path: Path) -> None:
    summary = report.build_report(ReportConfig(run=write_run(tmp_path / "run", HAND_ROWS))).summary
    broken = {k: v for k, v in summary.items() if k != "counts"}
    with pytest.raises(jsonschema.ValidationError, match="counts"):
        jsonschema.validate(broken, report.SUMMARY_SCHEMA)


def test_a_run_without_ground_truth_still_reports(tmp_path: Path) -> None:
    rows = {"s0": [row("x", pixels=[3, 1]), row("y", pixels=[4, 0]),
                   row("z", error="z: unsupported image mode 'CMYK'; convert it", kind="unsupported_image")]}
    result = report.build_report(ReportConfig(run=write_run(tmp_path / "run", rows)))
    summary = result.summary
    assert summary["ground_truth"] is False and summary["foreground"] is None and summary["pixel_accuracy"] is None
    assert summary["counts"]["without_ground_truth"] == 2 and summary["counts"]["errors_by_kind"] == {"unsupported_image": 1}
    assert summary["classes"][1]["predicted_fraction"] == pytest.approx(1 / 8)
    assert summary["classes"][1]["images_present"] == 1
    jsonschema.validate(summary, report.SUMMARY_SCHEMA)
    assert "no ground truth" in Path(result.html_url).read_text()


def test_bad_runs_give_one_clear_message(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(report.ReportError, match="not a segmentation run"):
        report.build_report(ReportConfig(run=str(empty)))

    half = write_run(tmp_path / "half", HAND_ROWS, status="running")
    (tmp_path / "half" / "_done" / "s1.json").unlink()
    with pytest.raises(report.ReportError, match=r"incomplete .*1 of 2 shards committed.*--partial"):
        report.build_report(ReportConfig(run=half))
    partial = report.build_report(ReportConfig(run=half, partial=True)).summary
    assert partial["run"]["partial"] is True and partial["counts"]["images"] == 3

    other = tmp_path / "other"
    write_run(other, HAND_ROWS)
    pq.write_table(pa.table({"key": ["q"], "dice": ["high"]}), other / "metrics" / "s1.parquet")
    with pytest.raises(report.ReportError, match=r"s1.parquet has a different schema .*'dice' is string"):
        report.build_report(ReportConfig(run=str(other)))

    torn = tmp_path / "torn"
    write_run(torn, HAND_ROWS)
    data = (torn / "metrics" / "s0.parquet").read_bytes()
    (torn / "metrics" / "s0.parquet").write_bytes(data[: len(data) // 2])
    with pytest.raises(report.ReportError, match=r"s0.parquet cannot be read .*half-written"):
        report.build_report(ReportConfig(run=str(torn)))


def test_cli_reports_bad_runs_without_a_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["report", str(tmp_path / "missing")]) != 0
    err = capsys.readouterr().err
    assert "not a segmentation run" in err and "Traceback" not in err


def test_baseline_shows_deltas_and_the_images_that_got_worse(tmp_path: Path) -> None:
    before = write_run(tmp_path / "before", {"s0": [row("a", tp=[6, 2], fp=[1, 1], fn=[1, 1], size=(2, 5)),
                                                    row("c", tp=[0, 3], fp=[1, 0], fn=[0, 1])]}, run_id="run-0")
    after = write_run(tmp_path / "after", {"s0": [row("a", tp=[8, 0], fp=[0, 2], fn=[2, 0], size=(2, 5)),
                                                  row("c", tp=[1, 3], fp=[0, 0], fn=[0, 0])]})
    result = report.build_report(ReportConfig(run=after, baseline=before))
    comparison = result.summary["baseline"]
    cell = comparison["classes"][1]
    assert cell["dice_macro"]["baseline"] == pytest.approx((4 / 6 + 6 / 7) / 2, abs=1e-6)
    assert cell["dice_macro"]["run"] == pytest.approx((0 + 1) / 2, abs=1e-6)
    assert cell["dice_macro"]["delta"] == pytest.approx(0.5 - (4 / 6 + 6 / 7) / 2, abs=1e-6)
    assert [w["key"] for w in comparison["most_worse"]] == ["a"]
    assert comparison["most_worse"][0]["delta"] == pytest.approx(-4 / 6, abs=1e-6)
    assert comparison["images_matched"] == 2
    jsonschema.validate(result.summary, report.SUMMARY_SCHEMA)
    assert "Against baseline" in Path(result.html_url).read_text()


def test_large_sets_bootstrap_through_a_histogram_close_to_the_exact_interval() -> None:
    rng = np.random.default_rng(5)
    values = rng.beta(8, 2, size=aggregate.EXACT_BOOTSTRAP_LIMIT * 3)
    low, high = aggregate.bootstrap_ci(values, 1000, np.random.default_rng(0))
    half_width = 1.96 * values.std() / math.sqrt(values.size)  # the normal interval of the mean
    assert low == pytest.approx(values.mean() - half_width, abs=half_width * 0.15)
    assert high == pytest.approx(values.mean() + half_width, abs=half_width * 0.15)


def test_errors_are_counted_by_their_kind_column_not_their_wording(tmp_path: Path) -> None:
    rows = {"s0": [row("x", pixels=[3, 1]),
                   row("y", error="y: the same words", kind="duplicate_key"),
                   row("z", error="z: the same words", kind="image_too_large"),
                   row("w", error="w: mask size 1x1 differs from image size 2x2", kind="duplicate_key")]}
    summary = report.build_report(ReportConfig(run=write_run(tmp_path / "run", rows))).summary
    assert summary["counts"]["errors_by_kind"] == {"duplicate_key": 2, "image_too_large": 1}
    assert [(e["key"], e["kind"]) for e in summary["errors"]] == [("y", "duplicate_key"), ("z", "image_too_large"),
                                                                  ("w", "duplicate_key")]


# --------------------------------------------------------------------------- a real run, rendered in a browser


def chromium() -> str | None:
    """Return the Chromium executable, if installed."""
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.slow
@pytest.mark.usefixtures("ray_cluster")
def test_segment_with_report_renders_in_a_real_browser(tmp_path: Path, tiny_model: str) -> None:
    from pipeline.sample_data import write_sample_data

    browser = chromium()
    if browser is None:
        if os.environ.get("SEGPIPE_REQUIRE_CHROMIUM"):
            pytest.fail("chromium is not installed but SEGPIPE_REQUIRE_CHROMIUM is set (CI installs Debian's chromium)")
        pytest.skip("chromium is not installed (apt-get install chromium); CI installs it")
    data = tmp_path / "data"
    write_sample_data(SampleDataConfig(output=str(data), num_images=12, num_shards=2, min_size=48, max_size=64,
                                       instances=True))
    output = tmp_path / "out"
    assert cli.main(["segment", "--input", str(data), "--model", tiny_model, "--output", str(output),
                     "--batch-size", "4", "--report", "--objects"]) == 0
    html_path = output / "report" / "report.html"
    summary = json.loads((output / "report" / "summary.json").read_text())

    assert summary["counts"]["images"] == 12 and summary["counts"]["ok"] == 12
    assert len(summary["worst"]) == 12  # the default; only 12 images here
    assert summary["objects"]["truth_instances"] == {"labels": 12} and len(summary["objects"]["worst"]) == 12
    html = html_path.read_text()
    # twelve overlays and three plots of pixels, then the same of objects
    assert html.count("data:image/png;base64,") >= 2 * (12 + 3)
    assert "overlay unavailable" not in html and "<h2>Objects</h2>" in html

    screenshot = tmp_path / "report.png"
    completed = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1280,4000",
         f"--screenshot={screenshot}", f"file://{html_path}"],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert screenshot.exists(), completed.stderr[-2000:]
    pixels = np.asarray(Image.open(screenshot).convert("RGB")).reshape(-1, 3).astype(int)

    def painted(colour: str) -> int:
        rgb = np.array([int(colour[i:i + 2], 16) for i in (1, 3, 5)])
        return int((np.abs(pixels - rgb).sum(axis=1) < 30).sum())

    # the embedded figures were decoded and drawn: each plot colour covers thousands of pixels
    # (a bar of a blank or broken image covers none; even the narrowest histogram here covers ~7,000)
    assert painted(report_colours()[0]) > 1500, "macro bars not rendered"
    assert painted(report_colours()[1]) > 1500, "micro bars not rendered"
    assert painted(report_colours()[2]) > 1500, "histograms not rendered"
    assert len(np.unique(pixels[:: 7], axis=0)) > 200  # overlays (photographic content), not a blank page


def report_colours() -> tuple[str, str, str]:
    """Return the plot colours the screenshot test looks for."""
    from pipeline.report.render import BAR_COLOURS, HIST_COLOUR

    return BAR_COLOURS[0], BAR_COLOURS[1], HIST_COLOUR
