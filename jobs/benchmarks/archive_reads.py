"""Object-storage bytes a segmentation run reads, and its time to first result, as the archive grows.

    python jobs/benchmarks/archive_reads.py                         # 40 large shards; 40 and 4,000 tiny ones
    python jobs/benchmarks/archive_reads.py --checkout ../other     # the same, run by another checkout too

Starts ``moto_server`` on loopback behind a counting TCP proxy and writes synthetic tar shards
through it. Each archive is then segmented by ``segpipe segment`` in its own process (endpoint: the
proxy; a tiny untrained model and the output on local disk, so what crosses the proxy is the
run's reading of its input). Printed per archive and checkout: the archive's bytes, the bytes the
store sent during the run (HTTP headers included) and their ratio to the archive, the GET requests,
the wall time and the time from the process's start to its first result (run.json's start-up
breakdown). ``--checkout`` runs the same archives with another checkout's ``jobs.cli`` as well
(an A/B in one run: the same store, data and machine).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout without installing

from pipeline.config import SampleDataConfig, StorageConfig  # noqa: E402
from pipeline.io.local_s3 import create_bucket, local_s3_server  # noqa: E402
from pipeline.model import ModelInfo, ModelSpec, build_unet, save_artifact  # noqa: E402
from pipeline.sample_data import write_sample_data  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


class CountingProxy:
    """A TCP proxy on loopback that counts the bytes the server sends and the GET requests it is sent."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.lock = threading.Lock()
        self.served = 0
        self.gets = 0
        threading.Thread(target=self.accept, daemon=True).start()

    def reset(self) -> None:
        with self.lock:
            self.served = self.gets = 0

    def accept(self) -> None:
        while True:
            client, _ = self.listener.accept()
            server = socket.create_connection(self.upstream)
            threading.Thread(target=self.pump, args=(client, server, False), daemon=True).start()
            threading.Thread(target=self.pump, args=(server, client, True), daemon=True).start()

    def pump(self, source: socket.socket, target: socket.socket, from_server: bool) -> None:
        try:
            while True:
                data = source.recv(1 << 16)
                if not data:
                    break
                with self.lock:
                    if from_server:
                        self.served += len(data)
                    else:
                        self.gets += data.count(b"GET /")
                target.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, target):
                try:
                    end.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


def tiny_model(path: Path) -> str:
    spec = ModelSpec(input_size=(32, 32), channels=3, num_classes=3, base_filters=4, depth=2)
    save_artifact(build_unet(spec), ModelInfo(spec=spec, class_names=["background", "disc", "square"]), str(path))
    return str(path)


def segment(checkout: Path, bucket: str, name: str, model: str, output: Path, endpoint: str,
            proxy: CountingProxy) -> dict[str, float]:
    """Run ``segpipe segment`` from ``checkout`` over ``bucket/name``; return what the proxy and run.json saw."""
    shutil.rmtree(output, ignore_errors=True)
    env = {**os.environ, "AWS_ENDPOINT_URL": endpoint, "PYTHONPATH": str(checkout)}
    env.pop("RAY_ADDRESS", None)
    proxy.reset()
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "jobs.cli", "segment", "--input", f"{bucket}/{name}", "--model", model,
                    "--output", str(output), "--endpoint-url", endpoint, "stage_cpus=0.25"],
                   cwd=checkout, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    with proxy.lock:
        served, gets = proxy.served, proxy.gets
    record = json.loads((output / "run.json").read_text())
    startup = (record.get("summary") or {}).get("startup") or {}
    return {"served": served, "gets": gets, "wall_s": round(wall, 1), "first_result_s": startup.get("first_result"),
            "images": (record.get("summary") or {}).get("images"), "startup": startup}


def archive_bytes(endpoint: str, bucket: str, name: str) -> int:
    import s3fs

    fs = s3fs.S3FileSystem(endpoint_url=endpoint)
    return sum(info["size"] for info in fs.find(f"{bucket}/{name}", detail=True).values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkout", action="append", type=Path, default=[],
                        help="another checkout whose segpipe runs the same archives (repeatable)")
    parser.add_argument("--large-shards", type=int, default=40,
                        help="shards of the bytes archive, four 384-768 px images each (default 40; 0: none)")
    parser.add_argument("--tiny-shards", type=int, nargs="*", default=[40, 4000],
                        help="shard counts of the first-result archives, one 32-40 px image each (default 40 4000)")
    args = parser.parse_args()
    checkouts = [ROOT, *[c.resolve() for c in args.checkout]]
    work = Path(tempfile.mkdtemp(prefix="archive-reads-"))
    try:
        with local_s3_server() as upstream:
            host, port = upstream.rsplit("//", 1)[1].split(":")
            proxy = CountingProxy((host, int(port)))
            endpoint = f"http://127.0.0.1:{proxy.port}"
            bucket = create_bucket(endpoint, "archive")
            through = StorageConfig(endpoint_url=endpoint)
            archives = {"large": SampleDataConfig(output=f"{bucket}/large", num_images=args.large_shards * 4,
                                                  num_shards=args.large_shards, min_size=384, max_size=768, seed=1,
                                                  storage=through)} if args.large_shards else {}
            for count in args.tiny_shards:
                archives[f"tiny-{count}"] = SampleDataConfig(output=f"{bucket}/tiny-{count}", num_images=count,
                                                             num_shards=count, min_size=32, max_size=40, seed=2,
                                                             storage=through)
            for cfg in archives.values():
                write_sample_data(cfg)
            model = tiny_model(work / "model")
            results = []
            for name, cfg in archives.items():
                size = archive_bytes(endpoint, bucket, name)
                for checkout in checkouts:
                    seen = segment(checkout, bucket, name, model, work / "out", endpoint, proxy)
                    results.append({"archive": name, "shards": cfg.num_shards, "archive_mib": round(size / 2**20, 1),
                                    "checkout": str(checkout), **seen, "read_mib": round(seen["served"] / 2**20, 1),
                                    "read_ratio": round(seen["served"] / size, 3)})
                    print(json.dumps(results[-1]), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
