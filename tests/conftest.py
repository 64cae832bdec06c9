"""Shared test infrastructure: a real S3 server on loopback, one local Ray, a tiny model artifact.

The S3 server is moto's ``moto_server`` (a separate process speaking the S3 HTTP API) on a free
loopback port; the standard AWS environment variables point at it with fake credentials, set
before Ray starts so every Ray worker inherits them.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.model import ModelInfo, UNetSpec, build_unet, save_artifact

TINY_CLASSES = ("background", "disc", "stripes")
TINY_UNET = UNetSpec(input_size=(32, 32), channels=3, num_classes=3, depth=2, base_filters=4)
FAKE_KEY = "AKIATESTFAKEKEY00000"
FAKE_SECRET = "fake-secret-value-for-tests-0000000000"


def free_port() -> int:
    """Return a TCP port that is free on loopback right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def moto_server_command() -> list[str]:
    """Return the command that starts moto's S3 server from this interpreter's environment."""
    script = Path(sys.executable).with_name("moto_server")
    if script.exists():
        return [str(script)]
    found = shutil.which("moto_server")
    if not found:
        pytest.fail("moto_server is not installed; install the test extras: pip install -e '.[test]'")
    return [found]


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """Start ``moto_server`` on a free loopback port, point the AWS environment at it, yield its URL."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(
        [*moto_server_command(), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1)
            break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                pytest.fail(f"moto_server did not start on {endpoint}")
            time.sleep(0.2)
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION")}
    os.environ.update(
        AWS_ACCESS_KEY_ID=FAKE_KEY, AWS_SECRET_ACCESS_KEY=FAKE_SECRET, AWS_ENDPOINT_URL=endpoint, AWS_DEFAULT_REGION="us-east-1"
    )
    try:
        yield endpoint
    finally:
        process.terminate()
        process.wait(timeout=10)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture()
def s3_bucket(s3_endpoint: str) -> str:
    """Create a fresh bucket on the test S3 server and return its ``s3://`` URL."""
    import s3fs

    name = f"test-{uuid.uuid4().hex[:12]}"
    s3fs.S3FileSystem(endpoint_url=s3_endpoint).mkdir(name)
    return f"s3://{name}"


@pytest.fixture(scope="session")
def ray_cluster(s3_endpoint: str) -> Iterator[None]:
    """Start one local Ray (2 CPUs) for the session, after the AWS environment is set."""
    import ray

    ray.init(address="local", num_cpus=2, object_store_memory=600 * 1024**2, include_dashboard=False,
             logging_level="WARNING")
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Return the path of a tiny untrained 3-class model artifact (32×32 tiles, 4 base filters)."""
    import keras

    keras.utils.set_random_seed(1)
    path = str(tmp_path_factory.mktemp("model"))
    save_artifact(build_unet(TINY_UNET), ModelInfo(unet=TINY_UNET, class_names=TINY_CLASSES), path)
    return path
