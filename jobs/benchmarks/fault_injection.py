"""Fault injection: kill the segment driver (and the local Ray it started) at random points, re-run, count losses.

    python jobs/benchmarks/fault_injection.py                   # 6 kills over 120 images in 24 shards
    python jobs/benchmarks/fault_injection.py --kills 10 --seed 3

Each attempt runs ``segpipe segment`` in its own process group on the same output and is killed
with SIGKILL once 1-3 more shards have committed plus a random 0-1.5 s (so kills land before, during
and after commits); then one last attempt runs to the end. The metrics of the
committed shards are read back: every input key must appear exactly once, and every ok row's mask
must exist and decode at the image's size. Prints the kills, the shards committed at each, and
what was lost or repeated (both must be zero); writes ``<workdir>/fault_injection.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout without installing

import pyarrow.dataset as pads  # noqa: E402
from PIL import Image  # noqa: E402

from pipeline.config import SampleDataConfig  # noqa: E402
from pipeline.model import ModelInfo, ModelSpec, build_unet, save_artifact  # noqa: E402
from pipeline.sample_data import write_sample_data  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def committed(output: Path) -> int:
    """Return the number of commit markers under ``output``."""
    return len(list((output / "_done").glob("*.json")))


def check(output: Path, keys: set[str]) -> dict[str, int]:
    """Return lost, repeated and bad-mask counts over the committed shards."""
    done = {p.stem for p in (output / "_done").glob("*.json")}
    files = [str(p) for p in sorted((output / "metrics").glob("*.parquet")) if p.stem in done]
    rows = pads.dataset(files, format="parquet").to_table().to_pylist() if files else []
    seen = [row["key"] for row in rows]
    bad_masks = 0
    for row in rows:
        if row["status"] == "ok":
            try:
                bad_masks += Image.open(row["mask_uri"]).size != (row["width"], row["height"])
            except OSError:
                bad_masks += 1
    return {"rows": len(rows), "lost": len(keys - set(seen)), "repeated": len(seen) - len(set(seen)),
            "unexpected": len(set(seen) - keys), "bad_masks": bad_masks,
            "errors": sum(row["status"] != "ok" for row in rows)}


def main(argv: list[str] | None = None) -> int:
    """Run the fault injection; return 0 when nothing was lost or repeated."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=6)
    parser.add_argument("--images", type=int, default=120)
    parser.add_argument("--shards", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=Path("bench-output") / "faults")
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    shutil.rmtree(args.workdir, ignore_errors=True)
    data, model, output = args.workdir / "data", args.workdir / "model", args.workdir / "run"
    write_sample_data(SampleDataConfig(output=str(data), num_images=args.images, num_shards=args.shards,
                                       min_size=48, max_size=96, seed=args.seed))
    spec = ModelSpec(input_size=(64, 64), channels=3, num_classes=3, depth=3, base_filters=8)
    save_artifact(build_unet(spec), ModelInfo(spec=spec, class_names=("background", "disc", "stripes")), str(model))
    keys = {f"sample-{i:06d}" for i in range(args.images)}
    command = [sys.executable, "-m", "jobs.cli", "segment", "--input", str(data), "--model", str(model),
               "--output", str(output), "--batch-size", "4"]
    env = {name: value for name, value in os.environ.items() if name != "RAY_ADDRESS"}
    attempts = []
    for _ in range(args.kills):
        before = committed(output)
        target = before + rng.randint(1, 3)  # kill after a few more shards, then a random fraction of a second
        extra = rng.uniform(0.0, 1.5)
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                   start_new_session=True)
        deadline = time.monotonic() + 600
        while process.poll() is None and committed(output) < target and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(extra)
        if process.poll() is None:
            at = committed(output)
            os.killpg(process.pid, signal.SIGKILL)  # the driver and its local Ray, at once
            process.wait()
            attempts.append({"killed": True, "committed_before": before, "committed_at_kill": at,
                             "extra_delay": round(extra, 2)})
        else:
            attempts.append({"killed": False, "committed_before": before, "exit": process.returncode})
        print(f"attempt {len(attempts)}: {attempts[-1]}", flush=True)
    started = time.perf_counter()
    final = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    result = check(output, keys)
    figures = {"kills": sum(a["killed"] for a in attempts), "attempts": attempts, "final_exit": final.returncode,
               "final_seconds": round(time.perf_counter() - started, 1), "shards": args.shards, "images": args.images,
               **result}
    (args.workdir / "fault_injection.json").write_text(json.dumps(figures, indent=2))
    print(final.stdout.strip().splitlines()[-1] if final.stdout.strip() else final.stderr[-2000:])
    print(f"{figures['kills']} driver kills (SIGKILL to the driver and its local Ray) at random points, then one "
          f"run to the end: {result['rows']} rows for {args.images} inputs; lost {result['lost']}, repeated "
          f"{result['repeated']}, masks missing or wrong {result['bad_masks']}")
    ok = final.returncode == 0 and not (result["lost"] or result["repeated"] or result["unexpected"] or result["bad_masks"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
