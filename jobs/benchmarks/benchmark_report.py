"""Report benchmark: a run of 1,000,000 metric rows, then `segpipe report` on it; wall time and peak memory.

    python jobs/benchmarks/benchmark_report.py                      # 1,000,000 rows in 100 Parquet files
    python jobs/benchmarks/benchmark_report.py --rows 100000        # quicker
    python jobs/benchmarks/benchmark_report.py --rows 100000 --objects-per-image 10   # 1,000,000 object rows

Writes a synthetic run (run.json, metrics/*.parquet with the real schema, _done markers): three
classes, per-class TP/FP/FN drawn per image with Dice and IoU derived from them as the pipeline
does, 1% error rows of several kinds, 5% images without ground truth. The worst-scoring rows are
real images (a small tar shard of sample data with predicted masks), so the overlays are read and
drawn as in a real run. The report then runs in a fresh process; the benchmark prints its wall
time and peak resident memory (target: under 60 s and 1.5 GB) and writes ``<workdir>/benchmark_report.json``.

With ``--objects-per-image K`` the run is one segmented with objects: each metrics row also carries
the instance metrics (per-class object counts around K/2, TP/FP/FN at the ten IoU thresholds
falling with the threshold, DSB score, F1, PQ derived from them as the pipeline does) and each
shard an ``objects/<shard>.parquet`` of its objects (K per image on average), so the report's
objects section reads them all.
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout without installing

from pipeline import schema  # noqa: E402
from pipeline.config import SampleDataConfig  # noqa: E402
from pipeline.imaging import encode_png  # noqa: E402
from pipeline.io.readers import read_samples  # noqa: E402
from pipeline.metrics import dice_from_counts, image_metrics, iou_from_counts  # noqa: E402
from pipeline.sample_data import write_sample_data  # noqa: E402

CLASSES = ("background", "nucleus", "membrane")
ERRORS = (  # (error_kind, message)
    ("corrupt_image", "image cannot be decoded (OSError: broken data stream); the file is corrupt or truncated"),
    ("mask_size_mismatch", "mask size 10x10 differs from image size 64x64; masks must match their images pixel for pixel"),
    ("mask_classes", "mask holds class values [7] but the model has 3 classes (0..2)"),
    ("unsupported_image", "unsupported image mode 'CMYK'; convert it to 8- or 16-bit grayscale or RGB (e.g. PNG)"),
)


def list_column(values: np.ndarray, valid: np.ndarray, kind: pa.DataType) -> pa.Array:
    """Return an ``(n, C)`` array as a list column, null where ``valid`` is false."""
    n, width = values.shape
    offsets = np.arange(n + 1, dtype=np.int32) * width
    array = pa.ListArray.from_arrays(pa.array(offsets), pa.array(values.ravel(), type=kind))
    return pa.ListArray.from_arrays(pa.array(offsets), array.values, mask=pa.array(~valid)) if not valid.all() else array


def synthetic_shard(rng: np.random.Generator, first: int, rows: int, run: Path) -> pa.Table:
    """Return ``rows`` metric rows with keys ``img-<first>..``; Dice/IoU derived from drawn counts."""
    width = len(CLASSES)
    keys = np.array([f"img-{i:08d}" for i in range(first, first + rows)], dtype=object)
    side = rng.integers(256, 1025, rows)
    area = side * side
    failed = rng.random(rows) < 0.01
    truth = (rng.random(rows) >= 0.05) & ~failed
    share = rng.dirichlet((8.0, 2.0, 1.0), rows)
    true_pixels = np.floor(share * area[:, None]).astype(np.int64)
    true_pixels[:, 0] += area - true_pixels.sum(axis=1)
    quality = rng.beta(9, 1.5, (rows, width))
    tp = np.floor(true_pixels * quality).astype(np.int64)
    fn = true_pixels - tp
    fp = np.roll(fn, 1, axis=1)  # every missed pixel was predicted as some other class
    absent = rng.random(rows) < 0.03  # some images have no membrane at all, nor predicted
    tp[absent, 2] = fn[absent, 2] = fp[absent, 2] = 0
    dice, iou = dice_from_counts(tp, fp, fn), iou_from_counts(tp, fp, fn)
    with np.errstate(invalid="ignore"):
        mean_dice, mean_iou = np.nanmean(dice[:, 1:], axis=1), np.nanmean(iou[:, 1:], axis=1)
    predicted = tp + fp
    ok = ~failed
    messages = [f"{k}: {ERRORS[i % len(ERRORS)][1]}" if f else None for i, (k, f) in enumerate(zip(keys, failed))]
    kinds = [ERRORS[i % len(ERRORS)][0] if f else None for i, f in enumerate(failed)]
    columns = {
        "key": pa.array(keys, pa.string()),
        "source": pa.array([str(run / "input" / f"shard-{first // rows:05d}.tar")] * rows, pa.string()),
        "status": pa.array(np.where(failed, "error", "ok"), pa.string()),
        "error": pa.array(messages, pa.string()),
        "error_kind": pa.array(kinds, pa.string()),
        "height": pa.array(np.where(ok, side, 0), pa.int32(), mask=failed),
        "width": pa.array(np.where(ok, side, 0), pa.int32(), mask=failed),
        "mask_uri": pa.array([str(run / "masks" / f"{k}.png") if o else None for k, o in zip(keys, ok)], pa.string()),
        "class_pixels": list_column(predicted, ok, pa.int64()),
        "tp": list_column(tp, truth, pa.int64()), "fp": list_column(fp, truth, pa.int64()),
        "fn": list_column(fn, truth, pa.int64()),
        "dice": list_column(dice, truth, pa.float64()), "iou": list_column(iou, truth, pa.float64()),
        "mean_dice": pa.array(mean_dice, pa.float64(), mask=~truth),
        "mean_iou": pa.array(mean_iou, pa.float64(), mask=~truth),
        "model_id": pa.array(["unet-benchmark"] * rows, pa.string()),
        "run_id": pa.array(["benchmark"] * rows, pa.string()),
        "seconds": pa.array(rng.gamma(4.0, 0.02, rows), pa.float64()),
    }
    for field in schema.METRICS_SCHEMA:  # the object columns: null in a run without objects
        columns.setdefault(field.name, pa.nulls(rows, field.type))
    return pa.table(columns, schema=schema.METRICS_SCHEMA)


def with_objects(rng: np.random.Generator, table: pa.Table, per_image: int, run: Path, shard: str) -> pa.Table:
    """Return the metric rows with instance metrics added, and write ``objects/<shard>.parquet`` for them."""
    from pipeline.instances import THRESHOLDS

    rows, width, steps = table.num_rows, len(CLASSES), len(THRESHOLDS)
    ok = np.asarray(pc.equal(table.column("status"), "ok").to_numpy(zero_copy_only=False), dtype=bool)
    truth = np.asarray(table.column("tp").is_valid().to_numpy(zero_copy_only=False), dtype=bool) & ok
    true = rng.poisson(per_image / (width - 1), (rows, width))
    predicted = np.maximum(0, true + rng.integers(-2, 3, (rows, width)))
    true[:, 0] = predicted[:, 0] = 0
    matched = np.minimum(true, predicted)[:, :, None] * np.linspace(0.95, 0.2, steps)[None, None, :]
    tp = np.floor(matched * rng.uniform(0.6, 1.0, (rows, width, 1))).astype(np.int64)
    fp, fn = predicted[:, :, None] - tp, true[:, :, None] - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        dsb = (tp / (tp + fp + fn)).mean(axis=2)
        f1 = 2 * tp[:, :, 0] / (2 * tp[:, :, 0] + fp[:, :, 0] + fn[:, :, 0])
        rq = tp[:, :, 0] / (tp[:, :, 0] + 0.5 * fp[:, :, 0] + 0.5 * fn[:, :, 0])
    pq_values = np.where(tp[:, :, 0] > 0, rq * rng.uniform(0.7, 0.9, (rows, width)), np.where(np.isnan(rq), np.nan, 0.0))
    dsb[:, 0] = f1[:, 0] = pq_values[:, 0] = np.nan
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mean_dsb, mean_pq = np.nanmean(dsb[:, 1:], axis=1), np.nanmean(pq_values[:, 1:], axis=1)

    def nested(values: np.ndarray) -> pa.Array:
        inner = pa.ListArray.from_arrays(pa.array(np.arange(rows * width + 1, dtype=np.int32) * steps),
                                         pa.array(values.ravel(), pa.int64()))
        return pa.ListArray.from_arrays(pa.array(np.arange(rows + 1, dtype=np.int32) * width), inner,
                                        mask=pa.array(~truth))

    keys = table.column("key").to_numpy(zero_copy_only=False)
    columns = {
        "instances_uri": pa.array([str(run / "instances" / f"{k}.png") if o else None for k, o in zip(keys, ok)],
                                  pa.string()),
        "truth_instances": pa.array(np.where(truth, "labels", None), pa.string()),
        "objects_predicted": list_column(predicted, ok, pa.int64()), "objects_true": list_column(true, truth, pa.int64()),
        "dsb_score": list_column(dsb, truth, pa.float64()), "object_f1": list_column(f1, truth, pa.float64()),
        "pq": list_column(pq_values, truth, pa.float64()),
        "object_tp": nested(tp), "object_fp": nested(fp), "object_fn": nested(fn),
        "mean_dsb_score": pa.array(mean_dsb, pa.float64(), mask=~truth),
        "mean_pq": pa.array(mean_pq, pa.float64(), mask=~truth),
    }
    for name, column in columns.items():
        table = table.set_column(table.schema.get_field_index(name), name, column)
    counts = np.where(ok[:, None], predicted, 0)
    owner = np.repeat(np.arange(rows), counts.sum(axis=1))
    classes = np.concatenate([np.repeat(np.arange(width), row) for row in counts]) if rows else np.zeros(0, np.int64)
    objects = schema.objects_table({
        "key": keys[owner], "class": classes.astype(np.int32),
        "label": np.concatenate([np.arange(1, n + 1) for n in counts.sum(axis=1)]).astype(np.int32),
        "area": np.maximum(1, rng.lognormal(5.0, 0.8, len(owner))).astype(np.int64),
        "mean_score": rng.uniform(0.5, 1.0, len(owner)),
    })
    (run / "objects").mkdir(exist_ok=True)
    pq.write_table(objects, run / "objects" / f"{shard}.parquet")
    return table


def real_worst_rows(run: Path, count: int) -> pa.Table:
    """Return ``count`` rows for real sample images (in ``<run>/input/real.tar``) with very low scores."""
    written = write_sample_data(SampleDataConfig(output=str(run / "input" / "real"), num_images=count, num_shards=1,
                                                 num_classes=len(CLASSES), min_size=96, max_size=160, seed=7))
    source = str(run / "input" / "real.tar")
    shutil.move(written[0], source)
    (run / "masks").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    rows = []
    for key, (_, mask, _) in sorted(read_samples(source, {f"sample-{i:06d}" for i in range(count)}).items()):
        truth = np.asarray(Image.open(io.BytesIO(mask)))
        predicted = np.roll(truth, int(rng.integers(4, 12)), axis=1)  # a shifted prediction: low, non-zero Dice
        mask_uri = str(run / "masks" / f"{key}.png")
        Path(mask_uri).write_bytes(encode_png(predicted.astype(np.uint8)))
        record = {k: np.asarray(v).tolist() for k, v in image_metrics(predicted, truth, len(CLASSES)).items()}
        record["mean_dice"] = 1e-4 * (len(rows) + 1)  # forced below every synthetic row: these are the worst
        rows.append({"key": key, "source": source, "status": "ok", "height": truth.shape[0], "width": truth.shape[1],
                     "mask_uri": mask_uri, "class_pixels": np.bincount(predicted.ravel(), minlength=len(CLASSES)).tolist(),
                     "model_id": "unet-benchmark", "run_id": "benchmark", "seconds": 0.05, **record})
    return schema.metrics_table(rows)


def write_run(run: Path, total: int, files: int, worst: int, objects_per_image: int = 0) -> int:
    """Write the synthetic run under ``run``; return the number of object rows written."""
    shutil.rmtree(run, ignore_errors=True)
    (run / "metrics").mkdir(parents=True)
    (run / "_done").mkdir()
    rng = np.random.default_rng(0)
    object_rows = 0
    per_file = total // files
    for index in range(files):
        table = synthetic_shard(rng, index * per_file, per_file, run)
        if index == 0:
            table = pa.concat_tables([table.slice(worst), real_worst_rows(run, worst)])
        name = f"shard-{index:05d}"
        if objects_per_image:
            table = with_objects(rng, table, objects_per_image, run, name)
            object_rows += pq.read_metadata(run / "objects" / f"{name}.parquet").num_rows
        pq.write_table(table, run / "metrics" / f"{name}.parquet")
        (run / "_done" / f"{name}.json").write_text(json.dumps({"shard": name, "rows": table.num_rows}))
    (run / "run.json").write_text(json.dumps({
        "run_id": "benchmark", "status": "finished", "started": "2026-11-22T22:00:00+00:00",
        "ended": "2026-11-23T05:30:00+00:00", "shards": files,
        "model": {"id": "unet-benchmark", "url": "s3://models/unet-benchmark",
                  "info": {"class_names": list(CLASSES), "unet": {"num_classes": len(CLASSES)}}},
        "summary": {"images_per_second": round(total / 27000, 2), "wall_seconds": 27000.0},
        "config": {"objects": {"enabled": True}} if objects_per_image else {},
    }))
    return object_rows


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; return the exit status."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--files", type=int, default=100)
    parser.add_argument("--worst", type=int, default=12)
    parser.add_argument("--objects-per-image", type=int, default=0, help="a run with objects: objects per image")
    parser.add_argument("--workdir", type=Path, default=Path("bench-output") / "report")
    args = parser.parse_args(argv)
    run = args.workdir.resolve() / "run"
    started = time.perf_counter()
    object_rows = write_run(run, args.rows, args.files, args.worst, args.objects_per_image)
    print(f"wrote {args.rows:,} metric rows and {object_rows:,} object rows in {args.files} Parquet files each under "
          f"{run} in {time.perf_counter() - started:.1f} s")
    code = ("import sys, time; from pipeline.config import ReportConfig; from pipeline.report import build_report; "
            f"t = time.perf_counter(); r = build_report(ReportConfig(run={str(run)!r}, worst={args.worst})); "
            "print(f'{time.perf_counter() - t:.3f}'); print(r.line())")
    started = time.perf_counter()
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False,
                               cwd=Path(__file__).resolve().parents[2])
    wall = time.perf_counter() - started
    if completed.returncode:
        print(completed.stderr[-4000:], file=sys.stderr)
        return 1
    inner, line = completed.stdout.strip().splitlines()[-2:]
    peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    html = run / "report" / "report.html"
    figures = {"rows": args.rows, "object_rows": object_rows, "files": args.files, "report_seconds": round(float(inner), 2),
               "process_seconds": round(wall, 2), "peak_rss_mib": round(peak_mib, 1),
               "html_bytes": html.stat().st_size, "overlays": html.read_text().count("data:image/png") - 3}
    (args.workdir / "benchmark_report.json").write_text(json.dumps(figures, indent=2))
    print(line)
    print(f"report over {args.rows:,} rows ({object_rows:,} object rows): {figures['report_seconds']:.1f} s in build_report "
          f"({figures['process_seconds']:.1f} s with interpreter start and imports), "
          f"peak RSS {peak_mib:.0f} MiB (targets: < 60 s, < 1536 MiB); HTML {figures['html_bytes'] / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
