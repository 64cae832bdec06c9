"""A real S3-compatible server on loopback (moto's ``moto_server``) for tests, benchmarks and trials.

``local_s3_server()`` starts the server as a separate process on a free 127.0.0.1 port, points
the standard AWS environment variables at it with fake credentials (so s3fs, pyarrow and Ray
workers started afterwards all use it), and stops it by PID on exit. Needs ``moto[server]``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

FAKE_ACCESS_KEY = "AKIATESTFAKEKEY00000"
FAKE_SECRET_KEY = "fake-secret-value-for-tests-0000000000"
AWS_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION")


def free_port() -> int:
    """Return a TCP port that is free on loopback right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def moto_server_executable() -> str:
    """Return the path of ``moto_server`` beside this interpreter, or on PATH."""
    beside = Path(sys.executable).with_name("moto_server")
    found = str(beside) if beside.exists() else shutil.which("moto_server")
    if not found:
        raise RuntimeError("moto_server is not installed; install the test extras: pip install -e '.[test]'")
    return found


def wait_until_serving(endpoint: str, process: subprocess.Popen, timeout: float = 30.0) -> None:
    """Return once ``endpoint`` answers HTTP; raise RuntimeError if the process dies or time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1)
            return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"moto_server did not start on {endpoint}") from None
            time.sleep(0.2)


@contextlib.contextmanager
def local_s3_server() -> Iterator[str]:
    """Run ``moto_server`` on loopback with the AWS environment pointed at it; yield its endpoint URL."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(
        [moto_server_executable(), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    saved = {name: os.environ.get(name) for name in AWS_VARIABLES}
    try:
        wait_until_serving(endpoint, process)
        os.environ.update(
            AWS_ACCESS_KEY_ID=FAKE_ACCESS_KEY, AWS_SECRET_ACCESS_KEY=FAKE_SECRET_KEY,
            AWS_ENDPOINT_URL=endpoint, AWS_DEFAULT_REGION="us-east-1",
        )
        yield endpoint
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def create_bucket(endpoint: str, name: str) -> str:
    """Create bucket ``name`` on the server at ``endpoint``; return its ``s3://`` URL."""
    import s3fs

    s3fs.S3FileSystem(endpoint_url=endpoint).mkdir(name)
    return f"s3://{name}"
