"""Credentials never reach logs, run.json, Parquet or the report; outputs stay under the output prefix."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import s3fs

from pipeline.config import ReportConfig, SampleDataConfig, SegmentConfig, StorageConfig
from pipeline.report.build import build_report
from pipeline.sample_data import write_sample_data
from pipeline.segment.run import run_segmentation
from tests.segment.test_run import copy_tree

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_cluster")]

SECRET = "SEGPIPE-RECOGNISABLE-FAKE-SECRET-7f3a9c"
KEY = "AKIASEGPIPEFAKE12345"


def test_a_recognisable_secret_appears_in_no_output_and_no_log(s3_bucket: str, s3_endpoint: str, tiny_model: str,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    import ray

    data, model, output = f"{s3_bucket}/in", f"{s3_bucket}/model", f"{s3_bucket}/out"
    write_sample_data(SampleDataConfig(output=data, num_images=6, num_shards=2, min_size=32, max_size=48))
    copy_tree(tiny_model, model)
    credentials = StorageConfig(endpoint_url=s3_endpoint, key=KEY, secret=SECRET)  # moto accepts any key
    caplog.set_level(logging.DEBUG)

    summary = run_segmentation(SegmentConfig(input=data, model=model, output=output, storage=credentials, batch_size=4))
    build_report(ReportConfig(run=output, storage=credentials, worst=3))

    assert summary.images == 6 and summary.errors == 0
    fs = s3fs.S3FileSystem()
    written = fs.find(output)
    assert any(p.endswith("run.json") for p in written) and any(p.endswith("report.html") for p in written)
    assert any(p.endswith(".parquet") for p in written)
    for path in written:  # run.json, metrics Parquet, markers, masks, summary.json, report.html
        blob = fs.cat_file(path)
        assert SECRET.encode() not in blob and KEY.encode() not in blob, path
    assert SECRET not in caplog.text and KEY not in caplog.text
    assert SECRET not in repr(credentials) and SECRET not in str(SegmentConfig(input=data, model=model, output=output,
                                                                                storage=credentials))
    logs = Path(ray._private.worker.global_worker.node.get_logs_dir_path())
    for log_file in logs.rglob("*"):
        if log_file.is_file():
            assert SECRET.encode() not in log_file.read_bytes(), log_file


def test_transient_s3_failures_are_retried_and_nothing_is_lost(s3_bucket: str, s3_endpoint: str, tiny_model: str) -> None:
    from tests.flaky_proxy import flaky_proxy

    data, model, output = f"{s3_bucket}/in", f"{s3_bucket}/model", f"{s3_bucket}/out"
    write_sample_data(SampleDataConfig(output=data, num_images=12, num_shards=3, min_size=32, max_size=48))
    copy_tree(tiny_model, model)
    with flaky_proxy(s3_endpoint, fail_every=4) as proxy:  # one request in four answers 503 SlowDown
        summary = run_segmentation(SegmentConfig(input=data, model=model, output=output, batch_size=4,
                                                 storage=StorageConfig(endpoint_url=proxy.url)))
        failed, total = proxy.failed, proxy.requests
    assert failed >= 10 and total > 4 * failed - 4  # the proxy really failed a quarter of the requests
    assert summary.images == 12 and summary.errors == 0
    fs = s3fs.S3FileSystem()
    assert len(fs.find(f"{output}/masks")) == 12 and len(fs.find(f"{output}/_done")) == 3
