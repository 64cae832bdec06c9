"""Dataset-level reports of a segmentation run: read its committed metrics (:mod:`.reading`),
aggregate them (:mod:`.aggregate`), build ``summary.json`` (:mod:`.build`) and render
``report.html`` (:mod:`.render`)."""

from pipeline.report.build import SUMMARY_SCHEMA, ReportResult, build_report
from pipeline.report.reading import ReportError

__all__ = ["SUMMARY_SCHEMA", "ReportError", "ReportResult", "build_report"]
