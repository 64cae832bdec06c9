"""What the segment driver holds for an archive of many shards: its peak memory at 100,000 shards.

    python jobs/benchmarks/driver_memory.py                  # 100,000 shards of one tiny image
    python jobs/benchmarks/driver_memory.py --shards 10000

The images, the model and the actors are not what is measured here, so none runs: this process
does what the driver of ``segpipe segment`` does for every shard, with the same code, and prints
its peak resident memory (VmHWM) after each step: list the input and note each shard's identity
(``discover_shards``), read the output's commit markers (``prepare_output`` on a resumed output),
build the Ray Data source of one block per shard (``shard_dataset``, on a local Ray), commit one
metric row per shard (``ShardWriter``: metrics Parquet, marker, key hashes) and find the keys
repeated across shards. Written to a local folder; ``--keep`` keeps it.
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import sys
import tarfile
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout without installing

from pipeline.config import SegmentConfig, StorageConfig  # noqa: E402
from pipeline.imaging import encode_png  # noqa: E402
from pipeline.io.shards import discover_shards, shard_dataset  # noqa: E402
from pipeline.segment.resume import read_markers  # noqa: E402
from pipeline.segment.write import ShardWriter  # noqa: E402


def peak_mib() -> float:
    """Return this process's peak resident memory (VmHWM) in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def write_shards(folder: Path, count: int) -> None:
    """Write ``count`` tar shards of one 8x8 PNG each (keys unique but for one repeated pair)."""
    import numpy as np

    png = encode_png(np.zeros((8, 8), np.uint8))
    folder.mkdir(parents=True)
    for index in range(count):
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as archive:
            info = tarfile.TarInfo(f"img-{index if index else 1:07d}.png")  # shards 0 and 1 share a key
            info.size = len(png)
            archive.addfile(info, io.BytesIO(png))
        (folder / f"shard-{index:07d}.tar").write_bytes(buffer.getvalue())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=int, default=100_000)
    parser.add_argument("--keep", action="store_true", help="keep the written input and output")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="driver-memory-"))
    steps: dict[str, dict[str, float]] = {}

    def note(step: str, started: float) -> None:
        steps[step] = {"seconds": round(time.perf_counter() - started, 1), "peak_mib": round(peak_mib())}
        print(json.dumps({"step": step, **steps[step]}), flush=True)

    try:
        started = time.perf_counter()
        write_shards(work / "in", args.shards)
        note("baseline (after writing the input)", started)
        started = time.perf_counter()
        shards = discover_shards(str(work / "in"))
        note("discover_shards", started)
        started = time.perf_counter()
        writer = ShardWriter(str(work / "out"), StorageConfig(), shards, {}, "run", "model")
        for shard in shards:
            key = f"img-{int(shard.name.rsplit('-', 1)[1]) or 1:07d}"
            writer.commit(shard.name, [{"key": key, "source": shard.url, "status": "ok", "height": 8, "width": 8,
                                          "model_id": "model", "run_id": "run", "seconds": 0.0}])
        note("commit one row per shard", started)
        started = time.perf_counter()
        writer.finish()
        note("finish: keys repeated across shards", started)
        assert writer.repeated["count"] == 1, writer.repeated
        started = time.perf_counter()
        markers = read_markers(SegmentConfig(input=str(work / "in"), model="unused", output=str(work / "out")))
        assert len(markers) == args.shards
        note("read_markers (a resumed output)", started)
        import ray

        ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
        try:
            started = time.perf_counter()
            dataset = shard_dataset(shards)
            note("shard_dataset (one block per shard)", started)
            del dataset
        finally:
            ray.shutdown()
        print(json.dumps({"shards": args.shards, "peak_mib": round(peak_mib()), "steps": steps}))
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
