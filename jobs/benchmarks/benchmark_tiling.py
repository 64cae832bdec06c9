"""Native-resolution throughput: windows (two overlaps, two blends) against the resize and whole-image
inference, and the pipeline against a bare loop over the same windows in one process.

    python jobs/benchmarks/benchmark_tiling.py                         # 24 images of 2000 px, then one of 16000 px
    python jobs/benchmarks/benchmark_tiling.py --sizes 2000 --images 4  # a quick look
    python jobs/benchmarks/benchmark_tiling.py --batch-size 128 --set actors.gpus=1   # on a GPU node
    python jobs/benchmarks/benchmark_tiling.py --sizes 2000 --images 8 --precisions auto,float32

Writes synthetic native-scale images (objects of a fixed pixel size) as a local folder input and
an untrained U-Net artifact (the speed does not depend on the weights), then for each image size:

- bare: a fresh process decodes the images (not timed) and runs the same window loop the actors
  run (:func:`pipeline.segment.tiling.segment_in_windows`: cut, normalise, one traced model call
  per ``batch_size`` windows, Gaussian blend), TensorFlow on all cores;
- pipeline: ``segpipe segment`` with ``--tiling windows`` at overlap 0.25 and 0.5, blend gaussian
  and constant, and ``--tiling resize`` and ``--tiling whole`` (whole only where it fits), on a
  local Ray; ``--set KEY=VALUE`` adds segment config to every run (``actors.gpus=1`` on a GPU node).
  ``--precisions`` (default ``auto``): the windows run (overlap 0.25, gaussian) once per precision
  listed, in one run, with the steady ratio of each to the first; the other variants run under the
  first.

Prints megapixels of input per second (steady state: after the first results), the ratio of the
pipeline to the bare loop, and the peak RSS of the whole process tree; writes them to
``<workdir>/benchmark_tiling.json``. Images of 16000 px run windows (overlap 0.25, gaussian) and
resize only: the whole image does not fit through a U-Net on a 24 GiB machine.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from jobs.benchmarks.benchmark import run_pipeline
from pipeline.model import ModelInfo, ModelSpec, build_unet, save_artifact

log = logging.getLogger("benchmark_tiling")
WINDOW_VARIANTS = [("windows", 0.25, "gaussian"), ("windows", 0.5, "gaussian"), ("windows", 0.25, "constant"),
                   ("windows", 0.5, "constant")]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Return the benchmark's arguments."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="2000,16000", help="image sides, comma-separated (default 2000,16000)")
    parser.add_argument("--images", type=int, default=24, help="images of each size below 8000 px (default 24)")
    parser.add_argument("--tile", type=int, default=256, help="the model's tile (default 256)")
    parser.add_argument("--base-filters", type=int, default=16)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=32, help="windows per model call (default 32)")
    parser.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
                        help="segment config for every pipeline run, e.g. actors.gpus=1 on a GPU node (repeatable)")
    parser.add_argument("--precisions", default="auto",
                        help="segment precisions of the windows run, comma-separated; the first for every other run")
    parser.add_argument("--workdir", default="bench-output/tiling")
    parser.add_argument("--bare", metavar="JSON", help=argparse.SUPPRESS)  # internal: one bare measurement
    return parser.parse_args(argv)


def write_images(folder: Path, side: int, count: int) -> float:
    """Write ``count`` native-scale samples of ``side`` px as ``folder/images/*.png``; return their megapixels."""
    from pipeline.imaging import encode_png
    from pipeline.synthetic import synthetic_sample

    (folder / "images").mkdir(parents=True, exist_ok=True)
    for index in range(count):
        path = folder / "images" / f"image-{index:03d}.png"
        if not path.exists():
            image, _ = synthetic_sample(np.random.default_rng([side, index]), side, side, 3, object_size=16)
            path.write_bytes(encode_png(image, compress_level=1))
            del image
    return count * side * side / 1e6


def measure_bare(request: dict[str, Any]) -> dict[str, Any]:
    """Return the bare window loop's figures for ``request`` (model, folder, overlap, blend, batch); own process."""
    from pipeline.imaging import match_channels, normalise, read_native
    from pipeline.model import configure_tensorflow, load_artifact
    from pipeline.segment.tiling import segment_in_windows

    configure_tensorflow(os.cpu_count() or 1)
    import tensorflow as tf

    loaded = load_artifact(request["model"])
    info, spec = loaded.info, loaded.info.spec
    forward = tf.function(lambda x: loaded.model(x, training=False),
                          input_signature=[tf.TensorSpec((None, *spec.input_size, spec.channels), tf.float32)])
    forward(tf.zeros((1, *spec.input_size, spec.channels)))
    seconds = pixels = windows = 0
    for path in sorted(Path(request["folder"], "images").glob("*.png")):
        image, _ = read_native(path.read_bytes(), info.normalization, None)  # decoding is not timed
        clock = time.perf_counter()
        _, counts = segment_in_windows(
            [image], lambda batch: forward(batch).numpy(),
            lambda index, window: normalise(match_channels(window, spec.channels), info.normalization),
            spec.input_size, spec.output_channels, request["batch_size"], request["overlap"], request["blend"])
        seconds += time.perf_counter() - clock
        pixels += image.shape[0] * image.shape[1]
        windows += counts["windows"]
    return {"megapixels_per_second": round(pixels / 1e6 / seconds, 3), "windows_per_second": round(windows / seconds, 2),
            "seconds": round(seconds, 1), "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def bare_subprocess(request: dict[str, Any]) -> dict[str, Any]:
    """Return :func:`measure_bare`'s figures from a fresh Python process."""
    result = subprocess.run([sys.executable, __file__, "--bare", json.dumps(request)], capture_output=True, text=True,
                            check=False)
    if result.returncode != 0:
        raise RuntimeError(f"bare measurement failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def pipeline_figures(folder: Path, model: str, output: Path, batch_size: int, tiling: str, overlap: float, blend: str,
                     megapixels: float, count: int, settings: list[str]) -> dict[str, Any]:
    """Return one pipeline run's figures, with megapixels per second (steady and end to end)."""
    overrides = [f"tiling={tiling}", f"overlap={overlap}", f"blend={blend}", "overwrite=true",
                 "max_image_pixels=300000000", *settings]
    figures = run_pipeline(str(folder), model, str(output), batch_size, overrides)
    per_image = megapixels / count
    figures.update(tiling=tiling, overlap=overlap, blend=blend,
                   steady_megapixels_per_second=round(figures["steady_images_per_second"] * per_image, 3),
                   megapixels_per_second=round(megapixels / figures["wall_seconds"], 3))
    return figures


def one_size(args: argparse.Namespace, side: int, model: str) -> dict[str, Any]:
    """Return the figures of every variant for images of ``side`` px."""
    count = 1 if side >= 8000 else args.images
    folder = Path(args.workdir) / f"input-{side}"
    started = time.perf_counter()
    megapixels = write_images(folder, side, count)
    log.info("%d image(s) of %d px ready in %.0f s", count, side, time.perf_counter() - started)
    large = side >= 8000
    variants = WINDOW_VARIANTS[:1] if large else WINDOW_VARIANTS
    first, *others = args.precisions.split(",")
    plan = [(t, o, b, first) for t, o, b in [*variants, ("resize", 0.25, "gaussian"),
                                             *([] if large else [("whole", 0.25, "gaussian")])]]
    plan[1:1] = [(*WINDOW_VARIANTS[0], precision) for precision in others]  # beside the first windows run
    runs = []
    for t, o, b, precision in plan:
        runs.append(pipeline_figures(folder, model, Path(args.workdir) / f"out-{side}-{t}-{o}-{b}-{precision}",
                                     args.batch_size, t, o, b, megapixels, count, [f"precision={precision}", *args.settings]))
        runs[-1]["precision"] = precision
    bare = None if large else bare_subprocess({"model": model, "folder": str(folder), "overlap": 0.25,
                                                "blend": "gaussian", "batch_size": args.batch_size})
    return {"side": side, "images": count, "megapixels": megapixels, "bare_windows": bare, "pipeline": runs}


def print_size(result: dict[str, Any]) -> None:
    """Print one size's figures."""
    gib = 1024**3
    print(f"\n{result['images']} image(s) of {result['side']} x {result['side']} px ({result['megapixels']:.0f} Mpx):")
    bare = result["bare_windows"]
    if bare:
        print(f"  bare window loop (overlap 0.25, gaussian): {bare['megapixels_per_second']:.3f} Mpx/s, "
              f"{bare['windows_per_second']:.1f} windows/s, peak RSS {bare['peak_rss_bytes'] / gib:.2f} GiB")
    first = result["pipeline"][0]
    for run in result["pipeline"]:
        name = run["tiling"] + (f" overlap {run['overlap']} {run['blend']}" if run["tiling"] == "windows" else "")
        name += f" {run.get('precision', '')}"
        ratio = ""
        if run["tiling"] == "windows" and run["overlap"] == 0.25 and run["blend"] == "gaussian":
            if bare:
                ratio = f", steady / bare float32 {run['steady_megapixels_per_second'] / bare['megapixels_per_second']:.3f}"
            if run is not first:
                ratio += f", steady / {first['precision']} {run['steady_megapixels_per_second'] / first['steady_megapixels_per_second']:.3f}"
        print(f"  pipeline {name:32s} steady {run['steady_megapixels_per_second']:7.3f} Mpx/s, end to end "
              f"{run['megapixels_per_second']:7.3f} Mpx/s, wall {run['wall_seconds']:6.1f} s, peak RSS "
              f"{run['peak_rss_bytes'] / gib:5.2f} GiB, errors {run['errors']}{ratio}")


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print and save its figures."""
    args = parse_args(argv)
    if args.bare:
        print(json.dumps(measure_bare(json.loads(args.bare))))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    model = str(workdir / "model")
    spec = ModelSpec(input_size=(args.tile, args.tile), channels=3, num_classes=3, depth=args.depth,
                    base_filters=args.base_filters)
    save_artifact(build_unet(spec), ModelInfo(spec=spec, class_names=("background", "a", "b"), scale="native"), model)
    results = []
    for side in (int(value) for value in args.sizes.split(",")):
        results.append(one_size(args, side, model))
        print_size(results[-1])
        (workdir / "benchmark_tiling.json").write_text(json.dumps({"setup": vars(args), "cpus": os.cpu_count(),
                                                                   "sizes": results}, indent=2))
    print(f"\nU-Net tile {args.tile}, depth {args.depth}, {args.base_filters} base filters, batch {args.batch_size}, "
          f"{os.cpu_count()} CPUs; figures in {workdir / 'benchmark_tiling.json'}")
    for result in results:
        print_size(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
