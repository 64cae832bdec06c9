"""The report's objects section against numbers worked out by hand, and the objects table of a run."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import jsonschema
import pyarrow.parquet as pq
import pytest

from pipeline import report, schema
from pipeline.config import ReportConfig
from tests.report.test_report import row, write_run


def with_objects(record: dict[str, Any], true: int, predicted: int, tp: list[int], dsb: float, f1: float,
                 pq_value: float, method: str = "borders") -> dict[str, Any]:
    """Return a metrics row of a two-class run with objects: counts and scores of class 1."""
    nan = math.nan
    return {**record, "truth_instances": "labels", "objects_true": [0, true], "objects_predicted": [0, predicted],
            "object_tp": [[0] * 10, tp], "object_fp": [[0] * 10, [predicted - t for t in tp]],
            "object_fn": [[0] * 10, [true - t for t in tp]], "dsb_score": [nan, dsb], "object_f1": [nan, f1],
            "pq": [nan, pq_value], "mean_dsb_score": dsb, "mean_pq": pq_value,
            "instances_uri": f"s3://out/instances/{record['key']}.png", "objects_method": method}


def test_objects_summary_matches_a_hand_computation(tmp_path: Path) -> None:
    nan = math.nan
    rows = [
        # a: two true, two predicted; both match up to t = 0.70, one up to 0.85, none above (IoU 0.8 and 0.9)
        #    DSB (5 x 1 + 3 x 1/3 + 2 x 0) / 10 = 0.6; F1 1; PQ (0.8 + 0.9) / 2 x 1 = 0.85
        with_objects(row("a", tp=[6, 2], fp=[1, 1], fn=[1, 1], size=(2, 5)), 2, 2,
                     [2, 2, 2, 2, 2, 1, 1, 1, 0, 0], 0.6, 1.0, 0.85),
        # b: one true, three predicted, one match up to 0.70 (IoU 0.72): DSB 5 x 1/3 / 10 = 1/6, F1 2/4,
        #    PQ 0.72 x 1 / (1 + 2/2) = 0.36
        with_objects(row("b", tp=[4, 1], fp=[0, 2], fn=[0, 0]), 1, 3, [1] * 5 + [0] * 5, 1 / 6, 0.5, 0.36),
        # c: no object either side: every score NaN
        with_objects(row("c", tp=[4, 0], fp=[0, 0], fn=[0, 0]), 0, 0, [0] * 10, nan, nan, nan, "watershed"),
    ]
    folder = tmp_path / "run"
    write_run(folder, {"s0": rows})
    run = json.loads((folder / "run.json").read_text())
    run["config"]["objects"] = {"enabled": True, "split": "none", "min_size": 0, "connectivity": 8}
    (folder / "run.json").write_text(json.dumps(run))
    (folder / "objects").mkdir()
    pq.write_table(schema.objects_table({"key": ["a", "a", "b", "b", "b"], "class": [1] * 5, "label": [1, 2, 1, 2, 3],
                                         "area": [10, 20, 5, 6, 7]}), folder / "objects" / "s0.parquet")

    summary = report.build_report(ReportConfig(run=str(folder), worst=2)).summary

    objects = summary["objects"]
    assert objects["images"] == 3 and objects["with_ground_truth"] == 3 and objects["truth_instances"] == {"labels": 3}
    assert objects["methods"] == {"borders": 2, "watershed": 1}
    (cell,) = objects["classes"]
    assert (cell["objects_true"], cell["objects_predicted"]) == (3, 5)
    assert cell["dsb_score"]["macro"] == pytest.approx((0.6 + 1 / 6) / 2) and cell["dsb_score"]["nan_images"] == 1
    # pooled: at t <= 0.70 TP 3, FP 2, FN 0 -> 3/5; 0.75..0.85 TP 1, FP 4, FN 2 -> 1/7; above, 0
    assert cell["by_threshold"]["pooled"] == pytest.approx([0.6] * 5 + [1 / 7] * 3 + [0.0] * 2)
    assert cell["dsb_score"]["micro"] == pytest.approx((5 * 0.6 + 3 / 7) / 10)
    assert cell["f1"]["macro"] == pytest.approx(0.75) and cell["f1"]["micro"] == pytest.approx(6 / 8)
    # pooled PQ: matched IoU summed (0.8 + 0.9 + 0.72) over TP + FP/2 + FN/2 = 3 + 1 + 0
    assert cell["pq"]["micro"] == pytest.approx(2.42 / 4) and cell["pq"]["macro"] == pytest.approx((0.85 + 0.36) / 2)
    assert cell["count_error"] == {"mean": pytest.approx(2 / 3), "mean_absolute": pytest.approx(2 / 3), "exact_images": 2}
    area = cell["area"]
    assert (area["objects"], area["mean"], area["min"], area["max"]) == (5, 9.6, 5.0, 20.0)
    assert 6.0 / 1.2 <= area["median"] <= 7.0 * 1.2 and sum(area["histogram"]["counts"]) == 5
    assert [w["key"] for w in objects["worst"]] == ["b", "a"]  # lowest mean DSB score first; c (NaN) never
    assert objects["scatter"] == {"images": 3, "predicted": [[0, 2], [0, 3], [0, 0]], "true": [[0, 2], [0, 1], [0, 0]]}
    assert "IoU > t" in objects["definitions"]["match"]
    jsonschema.validate(summary, report.SUMMARY_SCHEMA)
    html = (folder / "report" / "report.html").read_text()
    assert "<h2>Objects</h2>" in html and "mean DSB score" in html
    assert "told apart by: borders (2 images), watershed (1 image)" in html


def test_a_run_without_objects_has_no_objects_section(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    write_run(folder, {"s0": [row("a", tp=[6, 2], fp=[1, 1], fn=[1, 1])]})
    summary = report.build_report(ReportConfig(run=str(folder))).summary
    assert "objects" not in summary
    assert "<h2>Objects</h2>" not in (folder / "report" / "report.html").read_text()
