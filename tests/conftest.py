"""Shared test infrastructure: a real S3 server on loopback, one local Ray, a tiny model artifact.

The S3 server is moto's ``moto_server`` (a separate process speaking the S3 HTTP API) on a free
loopback port; the standard AWS environment variables point at it with fake credentials, set
before Ray starts so every Ray worker inherits them.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from pipeline.io.local_s3 import FAKE_ACCESS_KEY, FAKE_SECRET_KEY, create_bucket, local_s3_server
from pipeline.model import ModelInfo, ModelSpec, build_unet, save_artifact

TINY_CLASSES = ("background", "disc", "stripes")
TINY_UNET = ModelSpec(input_size=(32, 32), channels=3, num_classes=3, depth=2, base_filters=4)
FAKE_KEY = FAKE_ACCESS_KEY
FAKE_SECRET = FAKE_SECRET_KEY


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """Start ``moto_server`` on a free loopback port, point the AWS environment at it, yield its URL."""
    with local_s3_server() as endpoint:
        yield endpoint


@pytest.fixture()
def s3_bucket(s3_endpoint: str) -> str:
    """Create a fresh bucket on the test S3 server and return its ``s3://`` URL."""
    return create_bucket(s3_endpoint, f"test-{uuid.uuid4().hex[:12]}")


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
    save_artifact(build_unet(TINY_UNET), ModelInfo(spec=TINY_UNET, class_names=TINY_CLASSES), path)
    return path
