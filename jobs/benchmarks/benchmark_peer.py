"""segpipe against the plain sequential script a user would write without Ray, end to end, in one run.

    python jobs/benchmarks/benchmark_peer.py                      # 200, 600 and 2,000 images: about 25 minutes
    python jobs/benchmarks/benchmark_peer.py --sizes 200          # quicker

Starts a local S3 server (moto_server on loopback) and writes, per size, that many synthetic
256 x 256 images in 6 tar shards to it, and one untrained 256 x 256 U-Net (depth 4, 16 base
filters). Then for each size, in this order on the same machine: the plain script
(``plain_script.py``: s3fs, Pillow, a traced model call, PNG and Parquet to S3) and ``segpipe
segment`` with no tuning flag, each as its own process from the S3 shards to S3 outputs, timed
from the process's start to its exit. Prints for each size both end-to-end rates and their ratio,
segpipe's start-up breakdown (from its run.json: CLI import, config and plan, ray.init, actor
start, TensorFlow import, model load, first trace, first read, first result) and the seconds from
its summary line to the process's exit; writes ``<workdir>/benchmark_peer.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout without installing

from pipeline.config import SampleDataConfig  # noqa: E402
from pipeline.io import storage  # noqa: E402
from pipeline.io.local_s3 import create_bucket, local_s3_server  # noqa: E402
from pipeline.model import ModelInfo, ModelSpec, build_unet, save_artifact  # noqa: E402
from pipeline.sample_data import write_sample_data  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def ray_processes_since(started: float) -> list[str]:
    """Return the Ray processes (raylet, GCS, workers, agents) started after ``started`` that are still alive."""
    import psutil

    found = []
    for process in psutil.process_iter(["create_time", "cmdline"]):
        line = " ".join(process.info["cmdline"] or [])
        if (process.info["create_time"] or 0) >= started and ("ray" in line.lower()) and "benchmark_peer" not in line:
            found.append(line[:120])
    return found


def timed_process(command: list[str], env: dict[str, str]) -> tuple[float, float | None, str]:
    """Run ``command``; return its wall seconds (start to exit), the seconds from its summary line
    (a line starting with a number of images) to its exit, and its output."""
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    summary_at, lines = None, []
    for line in process.stdout:  # type: ignore[union-attr]
        lines.append(line)
        if " images (" in line and " from " in line and "outputs in" in line:
            summary_at = time.perf_counter()
    process.wait()
    ended = time.perf_counter()
    if process.returncode:
        raise RuntimeError(f"{command[:4]} failed ({process.returncode}):\n{''.join(lines[-40:])}")
    return ended - started, (ended - summary_at) if summary_at else None, "".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; return the exit status."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[200, 600, 2000])
    parser.add_argument("--shards", type=int, default=6)
    parser.add_argument("--workdir", type=Path, default=Path("bench-output") / "peer")
    args = parser.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    spec = ModelSpec(input_size=(256, 256), channels=3, num_classes=3, depth=4, base_filters=16)
    model = str((args.workdir / "model").resolve())
    save_artifact(build_unet(spec), ModelInfo(spec=spec, class_names=("background", "disc", "stripes")), model)
    results: list[dict[str, Any]] = []
    with local_s3_server() as endpoint:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        env.pop("RAY_ADDRESS", None)
        bucket = create_bucket(endpoint, "peer")
        for size in args.sizes:
            data = f"{bucket}/shards-{size}"
            write_sample_data(SampleDataConfig(output=data, num_images=size, num_shards=args.shards,
                                               min_size=256, max_size=256, seed=size))
            plain_wall, _, plain_out = timed_process(
                [sys.executable, "jobs/benchmarks/plain_script.py", "--input", data, "--model", model,
                 "--output", f"{bucket}/plain-{size}"], env)
            plain = json.loads(plain_out.strip().splitlines()[-1])
            output = f"{bucket}/segpipe-{size}"
            launched = time.time() - 1.0
            segpipe_wall, after_summary, _ = timed_process(
                [sys.executable, "-m", "jobs.cli", "segment", "--input", data, "--model", model, "--output", output], env)
            time.sleep(1.0)
            left = ray_processes_since(launched)
            run = json.loads(storage.read_bytes(storage.join_url(output, "run.json")))
            summary = run["summary"]
            row = {"images": size, "plain_wall_seconds": round(plain_wall, 2),
                   "plain_images_per_second": round(size / plain_wall, 3),
                   "plain_startup_seconds": plain["startup_seconds"],
                   "plain_steady_images_per_second": plain["steady_images_per_second"],
                   "segpipe_wall_seconds": round(segpipe_wall, 2),
                   "segpipe_images_per_second": round(size / segpipe_wall, 3),
                   "segpipe_steady_images_per_second": summary["steady_images_per_second"],
                   "ratio_end_to_end": round(plain_wall / segpipe_wall, 3),
                   "exit_after_summary_seconds": round(after_summary, 2) if after_summary is not None else None,
                   "segpipe_startup": summary.get("startup", {}), "batch_size": run["config"]["batch_size"],
                   "ray_processes_left": left}
            results.append(row)
            print(f"{size} images: plain script {row['plain_images_per_second']:.2f} img/s ({plain_wall:.1f} s, "
                  f"start-up {plain['startup_seconds']:.1f} s, steady {plain['steady_images_per_second']:.2f}); segpipe "
                  f"{row['segpipe_images_per_second']:.2f} img/s ({segpipe_wall:.1f} s, steady "
                  f"{summary['steady_images_per_second']:.2f}); segpipe / script end to end "
                  f"{plain_wall / segpipe_wall:.2f}; exit {row['exit_after_summary_seconds']} s after the summary line, "
                  f"{len(left)} Ray processes left 1 s later")
            print("  segpipe start-up: " + ", ".join(f"{k} {v:.1f} s" for k, v in row["segpipe_startup"].items()))
            sys.stdout.flush()
    (args.workdir / "benchmark_peer.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
