"""The cost of ``segpipe segment --objects``: segmentation alone against segmentation with objects.

    python jobs/benchmarks/benchmark_objects.py                     # 1,000 images of 256 px, then 2 of 4000 px
    python jobs/benchmarks/benchmark_objects.py --images 64 --large-size 1024 --large-images 1 --repeats 1
    python jobs/benchmarks/benchmark_objects.py --large-size 16000 --large-images 1   # the 16,000-px case
    python jobs/benchmarks/benchmark_objects.py --model TRAINED --large-model TRAINED_NATIVE   # realistic masks

Two parts, in one process so the ratios compare like with like; the runs of each part are
interleaved (alone, then with objects, ``--repeats`` times) and the medians are reported:

1. 1,000-image benchmark: the data and model of ``benchmark.py`` by default (256 x 256 images in
   8 tar shards on a local S3 server, U-Net depth 4 with 16 base filters, batch 32), with
   ground-truth instance labels; segmentation alone, ``--objects --split none`` and
   ``--objects --split watershed``. Prints images/s (end to end and steady) and objects / alone.
2. Large images with windows: ``--large-images`` native-scale images of ``--large-size`` px as a
   local folder (with instance labels), ``--tiling windows``; alone against ``--objects --split
   watershed``. Prints megapixels/s end to end (a steady rate, after the first result, means
   nothing for a few images) and objects / alone, with the peak RSS of the process tree.

The objects' cost grows with the number of objects in the predicted masks: an untrained U-Net's
noisy masks hold hundreds of times the true objects (printed per image), a worst case; give
trained artifacts (``segpipe train`` on sample data) with ``--model`` / ``--large-model`` for
masks like real ones. Each run writes to a fresh output and starts its own local Ray. The CPU
seconds per image of each kind of process (predictor, mask writers, where the objects are
labelled and measured, ...) show where the extra time goes. Figures go to
``<workdir>/benchmark_objects.json``.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout without installing

from jobs.benchmarks.benchmark import run_pipeline
from pipeline.config import SampleDataConfig
from pipeline.io.local_s3 import create_bucket, local_s3_server
from pipeline.model import ModelInfo, ModelSpec, build_unet, save_artifact
from pipeline.sample_data import write_sample_data

log = logging.getLogger("benchmark_objects")
VARIANTS: dict[str, list[str]] = {
    "alone": [],
    "objects none": ["objects.enabled=true", "objects.split=none"],
    "objects watershed": ["objects.enabled=true", "objects.split=watershed"],
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Return the benchmark's arguments."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1000, help="images of part 1 (default 1000)")
    parser.add_argument("--size", type=int, default=256, help="image side and model tile (default 256)")
    parser.add_argument("--base-filters", type=int, default=16)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=32, help="images (or windows) per model call (default 32)")
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--large-size", type=int, default=4000, help="side of part 2's images (default 4000)")
    parser.add_argument("--large-images", type=int, default=2, help="images of part 2 (default 2; 0 skips it)")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved rounds of each part (default 2)")
    parser.add_argument("--seed", type=int, default=0, help="the untrained models' weights (default 0)")
    parser.add_argument("--model", help="a trained artifact for part 1 instead of the untrained U-Net")
    parser.add_argument("--large-model", help="a trained artifact (scale native) for part 2 instead of the untrained U-Net")
    parser.add_argument("--workdir", default="/tmp/segpipe-bench-objects")
    return parser.parse_args(argv)


def save_model(url: str, args: argparse.Namespace, scale: str) -> None:
    """Write an untrained U-Net artifact of seeded weights to ``url``. The model's speed does not depend
    on them, but the objects' cost does: it grows with the number of objects in the (noisy) masks."""
    import keras

    keras.utils.set_random_seed(args.seed)
    spec = ModelSpec(input_size=(args.size, args.size), channels=3, num_classes=3, depth=args.depth,
                     base_filters=args.base_filters)
    save_artifact(build_unet(spec), ModelInfo(spec=spec, class_names=("background", "a", "b"), scale=scale), url)


def measured(input_url: str, model: str, output: str, args: argparse.Namespace, overrides: list[str]) -> dict[str, Any]:
    """Return ``run_pipeline``'s figures for one run, with objects the predicted and true objects per image."""
    import pyarrow.parquet as pq

    from pipeline.io import storage

    figures = run_pipeline(input_url, model, output, args.batch_size, overrides)
    if any(item.startswith("objects.enabled") for item in overrides):
        tables = [pq.read_table(io.BytesIO(storage.read_bytes(url)), columns=["objects_predicted", "objects_true"])
                  for url in storage.list_files(f"{output}/metrics", [".parquet"])]
        for column in ("objects_predicted", "objects_true"):
            counts = [sum(value or []) for table in tables for value in table.column(column).to_pylist()]
            figures[f"{column}_per_image"] = round(sum(counts) / max(1, len(counts)), 1)
    return figures


def rounds(names: list[str], repeats: int, run: Callable[[str, int], dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Return ``run(name, round)``'s figures for every name, interleaved: all names once, ``repeats`` times."""
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for index in range(repeats):
        for name in names:
            results[name].append(run(name, index))
            log.info("%s round %d: %s", name, index + 1, results[name][-1])
    return results


def median(runs: list[dict[str, Any]], key: str) -> float:
    """Return the median of ``key`` over ``runs``."""
    return float(statistics.median(run[key] for run in runs))


def cpu_per_image(runs: list[dict[str, Any]], steady: bool) -> dict[str, float]:
    """Return the median CPU seconds per image of each kind of process over ``runs``: in the steady state,
    or over the whole run (start-up included; for a few large images, where there is no steady state)."""
    def per_image(run: dict[str, Any], role: str) -> float:
        key, count = ("steady_cpu_seconds", "steady_images") if steady and run["steady_images"] else (
            "cpu_seconds", "images")  # a run too short for a steady state counts whole
        return run[key].get(role, 0.0) / max(1, run[count])

    roles = {role for run in runs for role in run["cpu_seconds"]}
    return {role: round(statistics.median(per_image(run, role) for run in runs), 4) for role in sorted(roles)}


def ratio(value: float, base: float) -> str:
    """Return ``value / base`` to three places, or n/a where ``base`` is 0 (no steady state)."""
    return f"{value / base:.3f}" if base else "n/a"


def small_part(args: argparse.Namespace) -> dict[str, Any]:
    """Run part 1 (many small images from S3); return its figures by variant."""
    with local_s3_server() as endpoint:
        bucket = create_bucket(endpoint, "bench")
        shards, model = f"{bucket}/shards", args.model or f"{bucket}/model"
        write_sample_data(SampleDataConfig(output=shards, num_images=args.images, num_shards=args.shards, num_classes=3,
                                           min_size=args.size, max_size=args.size, instances=True))
        if not args.model:
            save_model(model, args, "resize")
        runs = rounds(list(VARIANTS), args.repeats, lambda name, index: measured(
            shards, model, f"{bucket}/out-{name.replace(' ', '-')}-{index}", args, VARIANTS[name]))
    return {name: {"runs": result, "images_per_second": median(result, "images_per_second"),
                   "steady_images_per_second": median(result, "steady_images_per_second"),
                   "wall_seconds": median(result, "wall_seconds"), "steady_cpu_per_image": cpu_per_image(result, True)}
            for name, result in runs.items()}


def large_part(args: argparse.Namespace) -> dict[str, Any]:
    """Run part 2 (a few large native-scale images in windows); return its figures by variant."""
    workdir = Path(args.workdir)
    folder, model = workdir / f"large-{args.large_size}x{args.large_images}", args.large_model or str(workdir / "model")
    if not (folder / "images").exists():
        started = time.perf_counter()
        write_sample_data(SampleDataConfig(output=str(folder), num_images=args.large_images, num_shards=1, num_classes=3,
                                           layout="folder", scale="native", min_size=args.large_size,
                                           max_size=args.large_size, instances=True))
        log.info("%d image(s) of %d px in %.0f s", args.large_images, args.large_size, time.perf_counter() - started)
    if not args.large_model:
        save_model(model, args, "native")
    megapixels = args.large_images * args.large_size**2 / 1e6
    names = ["alone", "objects watershed"]
    settings = ["tiling=windows", "overwrite=true", "max_image_pixels=300000000"]
    runs = rounds(names, args.repeats, lambda name, index: measured(
        str(folder), model, str(workdir / f"out-large-{name.replace(' ', '-')}-{index}"), args,
        [*settings, *VARIANTS[name]]))
    figures: dict[str, Any] = {}
    for name, result in runs.items():
        wall = median(result, "wall_seconds")
        figures[name] = {"runs": result, "wall_seconds": wall, "megapixels_per_second": round(megapixels / wall, 3),
                         "peak_rss_bytes": max(run["peak_rss_bytes"] for run in result),
                         "cpu_per_image": cpu_per_image(result, False)}
    return figures


def print_cpu(figures: dict[str, Any], key: str, label: str) -> None:
    """Print the CPU seconds per image of each kind of process (``key`` of each variant), one line per variant."""
    for name, entry in figures.items():
        parts = ", ".join(f"{role.split(' (')[0]} {seconds:.3f}" for role, seconds in entry[key].items())
        print(f"    CPU s/image {label} ({name}): {parts}")
        if "objects_predicted_per_image" in entry["runs"][0]:
            print(f"      objects per image ({name}): predicted {median(entry['runs'], 'objects_predicted_per_image'):.1f}, "
                  f"true {median(entry['runs'], 'objects_true_per_image'):.1f}")


def report(args: argparse.Namespace, small: dict[str, Any], large: dict[str, Any] | None, seconds: float) -> None:
    """Print both parts' figures and ratios."""
    print(f"\nbenchmark_objects: {os.cpu_count()} CPUs, models {args.model or 'untrained'} / "
          f"{args.large_model or 'untrained'} (untrained: U-Net seed {args.seed}, depth {args.depth}, {args.base_filters} "
          f"base filters), batch {args.batch_size}, medians of {args.repeats} interleaved round(s); wall {seconds:.0f} s")
    print(f"  {args.images} images {args.size}x{args.size} (ground-truth instances):")
    alone = small["alone"]
    for name, entry in small.items():
        ratios = "" if name == "alone" else (
            f"; objects / alone: end to end {ratio(entry['images_per_second'], alone['images_per_second'])}, "
            f"steady {ratio(entry['steady_images_per_second'], alone['steady_images_per_second'])}")
        print(f"    {name:18s} end to end {entry['images_per_second']:6.2f} img/s, steady "
              f"{entry['steady_images_per_second']:6.2f} img/s, wall {entry['wall_seconds']:6.1f} s{ratios}")
    print_cpu(small, "steady_cpu_per_image", "in the steady state")
    if large:
        print(f"  {args.large_images} image(s) of {args.large_size} px, tiling windows:")
        base = large["alone"]
        for name, entry in large.items():
            ratios = "" if name == "alone" else (
                f"; objects / alone {ratio(entry['megapixels_per_second'], base['megapixels_per_second'])}")
            print(f"    {name:18s} end to end {entry['megapixels_per_second']:6.3f} Mpx/s, wall {entry['wall_seconds']:6.1f} s, "
                  f"peak RSS {entry['peak_rss_bytes'] / 1024**3:.2f} GiB{ratios}")
        print_cpu(large, "cpu_per_image", "over the whole run")


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print and save its figures."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    small = small_part(args)
    large = large_part(args) if args.large_images > 0 else None
    seconds = time.perf_counter() - started
    Path(args.workdir, "benchmark_objects.json").write_text(json.dumps(
        {"setup": vars(args), "cpus": os.cpu_count(), "wall_seconds": round(seconds, 1), "small": small,
         "large": large}, indent=2))
    report(args, small, large, seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
