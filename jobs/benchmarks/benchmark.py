"""Throughput benchmark: bare ``model.predict`` against the full pipeline, same images, one run.

    python jobs/benchmarks/benchmark.py                      # 1,000 images, 256x256 U-Net with 16 base filters, batch 32
    python jobs/benchmarks/benchmark.py --images 600 --variant precision=float32   # precision auto against float32

Starts a local S3 server (moto_server on loopback), writes synthetic tar shards to it, and builds
the model artifact. Then, on the same machine and images:

(a) bare: one process decodes every image up front (not timed), then times ``model.predict`` over
    the arrays, and the same traced call the actors use; TensorFlow gets all the machine's cores;
(b) pipeline: ``segpipe segment`` from the S3 server to S3 outputs on a local Ray.

Bare runs before and after the pipeline (the machine's speed drifts); their mean is the baseline.
``--variant batch_size=32`` adds pipeline runs with other settings between them, for comparisons
within one run. Prints images/s, the steady-state ratio pipeline/bare, start-up seconds, peak
memory (RSS of the process tree) and the CPU seconds per image each kind of process spent (the
predictor actor, the stage workers, the driver, Ray's own processes, the S3 server), for the whole
run and for the steady state, and writes the figures to ``<workdir>/benchmark.json``.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import resource
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import SampleDataConfig, SegmentConfig, load_config
from pipeline.io import storage
from pipeline.io.local_s3 import create_bucket, local_s3_server
from pipeline.model import ModelInfo, ModelSpec, build_unet, save_artifact

log = logging.getLogger("benchmark")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Return the benchmark's arguments."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--size", type=int, default=256, help="image side and model tile (default 256)")
    parser.add_argument("--base-filters", type=int, default=16)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=32, help="images per model call, bare and pipeline (default 32)")
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--workdir", default="bench-output")
    parser.add_argument("--variant", dest="variants", action="append", default=[], metavar="KEY=VALUE[,KEY=VALUE]",
                        help="also run the pipeline with these segment config overrides, e.g. batch_size=32 "
                        "(repeatable; each variant is one more pipeline run between the two bare runs)")
    parser.add_argument("--bare", metavar="JSON", help=argparse.SUPPRESS)  # internal: run one bare measurement
    return parser.parse_args(argv)


def tree_rss_bytes(process: Any) -> int:
    """Return the summed RSS of ``process`` and all its descendants (Ray's raylet, workers, actors)."""
    import psutil

    total = 0
    for proc in [process, *process.children(recursive=True)]:
        try:
            total += proc.memory_info().rss
        except psutil.Error:
            continue
    return total


def process_role(cmdline: str, own_pid: int, pid: int) -> str:
    """Return which part of the run a process of the tree is, from its command line (Ray sets titles)."""
    if pid == own_pid:
        return "driver (Ray Data executor, shard commits)"
    if "SegmentationPredictor" in cmdline:
        return "predictor actor(s)"
    if "MaskWriter" in cmdline:
        return "mask writer actor(s)"
    if "moto_server" in cmdline or "moto.server" in cmdline:
        return "S3 server (moto, loopback)"
    if "ray::" in cmdline or "default_worker.py" in cmdline:
        return "read/prepare tasks (Ray workers)"
    return "Ray system (raylet, GCS, dashboard, ...)"


class TreeMonitor:
    """Samples the process tree every ``interval`` seconds in a thread.

    ``peak`` holds the maximum summed RSS; :meth:`cpu_by_role` the CPU seconds (user + system)
    each kind of process spent, over the whole run or from a moment on (the steady state), so the
    pipeline's CPU can be set against the bare model's.
    """

    def __init__(self, interval: float = 0.5) -> None:
        import psutil

        self.process = psutil.Process()
        self.interval = interval
        self.peak = 0
        self.started = 0.0
        self.samples: list[tuple[float, dict[int, float]]] = []  # (seconds since start, CPU seconds by pid)
        self.roles: dict[int, str] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.sample, daemon=True)

    def sample(self) -> None:
        import psutil

        while True:
            total, used = 0, {}
            for proc in [self.process, *self.process.children(recursive=True)]:
                try:
                    with proc.oneshot():
                        total += proc.memory_info().rss
                        times = proc.cpu_times()
                        used[proc.pid] = times.user + times.system
                        if not self.roles.get(proc.pid, "").startswith(("predictor", "mask writer")):
                            self.roles[proc.pid] = process_role(" ".join(proc.cmdline()), self.process.pid, proc.pid)
                except psutil.Error:
                    continue
            self.samples.append((time.perf_counter() - self.started, used))
            self.peak = max(self.peak, total)
            if self.stop.wait(self.interval):
                return

    def cpu_by_role(self, since: float = 0.0) -> dict[str, float]:
        """Return CPU seconds per role from ``since`` seconds after the start to the end, largest first.

        A process counts from its value at the first sample at or after ``since`` if it existed
        then, else from zero (it was born later). The final interval may be missed.
        """
        if not self.samples:
            return {}
        base = next((used for moment, used in self.samples if moment >= since), self.samples[-1][1])
        first_seen = {pid: moment for moment, used in reversed(self.samples) for pid in used}
        last: dict[int, float] = {}
        for _, used in self.samples:
            last.update(used)
        totals: dict[str, float] = {}
        for pid, value in last.items():
            start = base.get(pid, 0.0) if first_seen[pid] <= since or pid in base else 0.0
            role = self.roles.get(pid, "other")
            totals[role] = totals.get(role, 0.0) + value - start
        return {role: round(seconds, 1) for role, seconds in sorted(totals.items(), key=lambda kv: -kv[1])}

    def __enter__(self) -> TreeMonitor:
        self.started = time.perf_counter()
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


def decoded_inputs(shards_url: str, info: ModelInfo) -> np.ndarray:
    """Return every image of the tar shards as the model's float32 input tiles (N, h, w, c)."""
    from pipeline.imaging import decode_image, model_input

    tiles = []
    for url in storage.list_files(shards_url, [".tar"]):
        with tarfile.open(fileobj=io.BytesIO(storage.read_bytes(url))) as archive:
            for member in archive:
                if member.isfile() and not member.name.endswith(".mask.png"):
                    image = decode_image(archive.extractfile(member).read())
                    tiles.append(model_input(image, info.spec.input_size, info.spec.channels, info.normalization))
    return np.stack(tiles)


def measure_bare(request: dict[str, Any]) -> dict[str, Any]:
    """Return bare-predict figures for ``request`` (model and shards URLs, batch size); run in its own process."""
    from pipeline.model import configure_tensorflow, load_artifact

    started = time.perf_counter()
    configure_tensorflow(os.cpu_count() or 1)
    import tensorflow as tf

    loaded = load_artifact(request["model"])
    batch = request["batch_size"]
    tiles = decoded_inputs(request["shards"], loaded.info)
    loaded.model.predict(tiles[:batch], batch_size=batch, verbose=0)  # warm-up: graph build
    startup = time.perf_counter() - started
    clock, cpu = time.perf_counter(), time.process_time()
    loaded.model.predict(tiles, batch_size=batch, verbose=0)
    predict_rate = len(tiles) / (time.perf_counter() - clock)
    predict_cpu = (time.process_time() - cpu) / len(tiles)
    forward = tf.function(lambda x: loaded.model(x, training=False))
    forward(tiles[:batch])
    clock = time.perf_counter()
    for start in range(0, len(tiles), batch):
        forward(tiles[start:start + batch]).numpy()
    traced_rate = len(tiles) / (time.perf_counter() - clock)
    import keras

    from pipeline.model import build_model

    keras.mixed_precision.set_global_policy("mixed_bfloat16")  # the same weights, bfloat16 arithmetic
    try:
        half = build_model(loaded.info.spec)
        half.set_weights(loaded.model.get_weights())
    finally:
        keras.mixed_precision.set_global_policy("float32")
    forward_half = tf.function(lambda x: tf.cast(half(x, training=False), tf.float32))
    forward_half(tiles[:batch])
    clock = time.perf_counter()
    for start in range(0, len(tiles), batch):
        forward_half(tiles[start:start + batch]).numpy()
    traced_half_rate = len(tiles) / (time.perf_counter() - clock)
    return {
        "images": len(tiles),
        "predict_images_per_second": round(predict_rate, 2),
        "traced_images_per_second": round(traced_rate, 2),
        "traced_bfloat16_images_per_second": round(traced_half_rate, 2),
        "predict_cpu_seconds_per_image": round(predict_cpu, 4),
        "startup_seconds": round(startup, 2),
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }


def run_bare_subprocess(request: dict[str, Any]) -> dict[str, Any]:
    """Return :func:`measure_bare`'s figures, measured in a fresh Python process."""
    result = subprocess.run(
        [sys.executable, __file__, "--bare", json.dumps(request)], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"bare measurement failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def prepare(bucket: str, args: argparse.Namespace) -> tuple[str, str]:
    """Write the synthetic shards and the model artifact to ``bucket``; return their URLs."""
    from pipeline.sample_data import write_sample_data

    shards, model = f"{bucket}/shards", f"{bucket}/model"
    write_sample_data(SampleDataConfig(output=shards, num_images=args.images, num_shards=args.shards,
                                       num_classes=3, min_size=args.size, max_size=args.size))
    spec = ModelSpec(input_size=(args.size, args.size), channels=3, num_classes=3, depth=args.depth,
                    base_filters=args.base_filters)
    unet = build_unet(spec)
    save_artifact(unet, ModelInfo(spec=spec, class_names=("background", "a", "b")), model)
    log.info("model: %d parameters", unet.count_params())
    return shards, model


def run_pipeline(shards: str, model: str, output: str, batch_size: int, overrides: list[str]) -> dict[str, Any]:
    """Return the pipeline's figures for one segmentation run from ``shards`` to ``output``."""
    from pipeline.segment.run import run_segmentation

    cfg = load_config(SegmentConfig, overrides=overrides,
                      options={"input": shards, "model": model, "output": output, "batch_size": batch_size})
    with TreeMonitor() as monitor:
        summary = run_segmentation(cfg)
    import ray

    ray.shutdown()  # each pipeline run starts its own local Ray: no warm workers carried from one to the next
    return {
        "overrides": overrides,
        "images": summary.images,
        "errors": summary.errors,
        "images_per_second": summary.images_per_second,
        "steady_images_per_second": summary.steady_images_per_second,
        "startup_seconds": summary.startup_seconds,
        "wall_seconds": summary.wall_seconds,
        "peak_rss_bytes": monitor.peak,
        "cpu_seconds": monitor.cpu_by_role(),
        "steady_cpu_seconds": monitor.cpu_by_role(since=summary.startup_seconds),
        "steady_images": round(summary.steady_images_per_second * (summary.wall_seconds - summary.startup_seconds)),
    }


def print_pipeline(pipeline: dict[str, Any], predict: float, bare_cpu: float) -> None:
    """Print one pipeline run's figures: rates, ratios, memory and CPU seconds per image by process kind."""
    gib = 1024**3
    name = ",".join(pipeline["overrides"]) or "defaults"
    print(f"  pipeline ({name}): steady {pipeline['steady_images_per_second']:.2f} img/s, end to end "
          f"{pipeline['images_per_second']:.2f} img/s, start-up {pipeline['startup_seconds']:.1f} s, "
          f"wall {pipeline['wall_seconds']:.1f} s, peak RSS (driver + Ray) {pipeline['peak_rss_bytes'] / gib:.2f} GiB")
    whole, steady = pipeline["cpu_seconds"], pipeline["steady_cpu_seconds"]
    images, steady_images = max(1, pipeline["images"]), max(1, pipeline["steady_images"])
    print(f"    CPU seconds per image: bare model.predict {bare_cpu:.3f}; this pipeline, whole run "
          f"{sum(whole.values()) / images:.3f}, steady state ({pipeline['steady_images']} images after start-up) "
          f"{sum(steady.values()) / steady_images:.3f}:")
    for role in whole:
        print(f"      {role:45s} whole run {whole[role]:7.1f} s  steady {steady.get(role, 0.0) / steady_images:.4f} s/image")
    print(f"    ratio steady pipeline / bare model.predict: {pipeline['steady_images_per_second'] / predict:.3f}; "
          f"end to end (with start-up): {pipeline['images_per_second'] / predict:.3f}")


def report(bare: list[dict[str, Any]], pipelines: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    """Return the combined figures (with ratios) and print them; the first pipeline run uses the defaults."""
    predict = float(np.mean([b["predict_images_per_second"] for b in bare]))
    traced = float(np.mean([b["traced_images_per_second"] for b in bare]))
    bare_cpu = float(np.mean([b["predict_cpu_seconds_per_image"] for b in bare]))
    main_run = pipelines[0]
    figures = {
        "setup": {k: getattr(args, k) for k in ("images", "size", "base_filters", "depth", "batch_size", "shards")},
        "cpus": os.cpu_count(),
        "bare_runs": bare,
        "pipeline": main_run,
        "variants": pipelines[1:],
        "ratio_steady_vs_predict": round(main_run["steady_images_per_second"] / predict, 3),
        "ratio_steady_vs_traced": round(main_run["steady_images_per_second"] / traced, 3),
        "ratio_end_to_end_vs_predict": round(main_run["images_per_second"] / predict, 3),
    }
    gib = 1024**3
    print(f"\nbenchmark: {args.images} images {args.size}x{args.size}, U-Net depth {args.depth}, "
          f"{args.base_filters} base filters, batch {args.batch_size}, {os.cpu_count()} CPUs")
    for index, run in enumerate(bare, 1):
        print(f"  bare run {index}: model.predict {run['predict_images_per_second']:.2f} img/s, traced call "
              f"{run['traced_images_per_second']:.2f} img/s (bfloat16 {run['traced_bfloat16_images_per_second']:.2f}), "
              f"CPU {run['predict_cpu_seconds_per_image']:.3f} s/image, "
              f"start-up {run['startup_seconds']:.1f} s, peak RSS {run['peak_rss_bytes'] / gib:.2f} GiB")
    for pipeline in pipelines:
        print_pipeline(pipeline, predict, bare_cpu)
    print(f"  ratio steady pipeline (defaults) / bare model.predict: {figures['ratio_steady_vs_predict']:.3f}")
    print(f"  ratio steady pipeline (defaults) / bare traced call:   {figures['ratio_steady_vs_traced']:.3f}")
    print(f"  ratio end to end (with start-up) / bare model.predict: {figures['ratio_end_to_end_vs_predict']:.3f}")
    half = float(np.mean([b["traced_bfloat16_images_per_second"] for b in bare]))
    figures["bare_traced_bfloat16_vs_float32"] = round(half / traced, 3)
    print(f"  bare traced call, bfloat16 / float32:                  {figures['bare_traced_bfloat16_vs_float32']:.3f}")
    for pipeline in pipelines[1:]:
        print(f"  steady ({','.join(pipeline['overrides'])}) / steady (defaults): "
              f"{pipeline['steady_images_per_second'] / main_run['steady_images_per_second']:.3f}")
    return figures


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; return the exit status."""
    args = parse_args(argv)
    if args.bare:
        print(json.dumps(measure_bare(json.loads(args.bare))))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    with local_s3_server() as endpoint:
        bucket = create_bucket(endpoint, "bench")
        shards, model = prepare(bucket, args)
        request = {"model": model, "shards": shards, "batch_size": args.batch_size}
        bare = [run_bare_subprocess(request)]
        log.info("bare run 1: %s", bare[0])
        pipelines = []
        for index, variant in enumerate([[], *([item for item in v.split(",") if item] for v in args.variants)]):
            pipelines.append(run_pipeline(shards, model, f"{bucket}/run{index}", args.batch_size, variant))
            log.info("pipeline: %s", pipelines[-1])
        bare.append(run_bare_subprocess(request))
        figures = report(bare, pipelines, args)
    Path(args.workdir, "benchmark.json").write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
