"""A real two-node Ray cluster on this machine (infra/local-cluster.sh): segment and train run on both
nodes, GPU actors land on the node with the (logical) GPU, and a segment job is submitted through
the Jobs API on loopback."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.config import SampleDataConfig
from pipeline.io.local_s3 import free_port
from pipeline.sample_data import write_sample_data

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def cluster_env(ray_port: int, dashboard_port: int, temp: str) -> dict[str, str]:
    """Return the environment for the cluster script, its drivers and job submissions."""
    env = {name: value for name, value in os.environ.items() if name != "RAY_ADDRESS"}
    env.update(RAY_PORT=str(ray_port), DASHBOARD_PORT=str(dashboard_port), RAY_TMP=temp, HEAD_CPUS="2",
               WORKER_CPUS="2", WORKER_GPUS="1", RAY=str(BIN / "ray"), RAY_AUTH_MODE="token", START_TIMEOUT="120",
               PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    # A home with no Ray token yet, as on a new machine: the script makes the token every node,
    # driver and job submission then reads from ~/.ray/auth_token.
    env["HOME"] = os.path.join(temp, "home")
    os.makedirs(env["HOME"], exist_ok=True)
    return env


def start_cluster(script: str, temp: str) -> tuple[dict[str, str], str]:
    """Run ``script start`` with fresh ports; return the environment and, if it failed, what it and the
    nodes' logs said."""
    env = cluster_env(free_port(), free_port(), temp)
    try:
        started = subprocess.run([script, "start"], env=env, capture_output=True, text=True, timeout=300, check=False)
        failure = "" if started.returncode == 0 else f"exit {started.returncode}: {started.stderr}{started.stdout}"
    except subprocess.TimeoutExpired as exc:
        failure = f"no answer in {exc.timeout} s"
    if failure:
        logs = [f"{name}: ...{Path(temp, name).read_text()[-3000:]}" for name in ("head.log", "worker.log")
                if Path(temp, name).is_file()]
        failure = "\n".join([f"local-cluster.sh start: {failure}", *logs])
    return env, failure


@pytest.fixture(scope="module")
def two_nodes() -> Iterator[dict[str, str]]:
    """Start the two-node cluster with infra/local-cluster.sh; yield its environment; stop it by PID.

    A failed start is stopped and tried once more with other ports (the free ports are picked
    before Ray binds them, so another process can take one in between); the first failure is
    reported as a warning.
    """
    temp = tempfile.mkdtemp(prefix="sgray", dir="/tmp")  # short: Ray's socket paths have a length limit
    script = str(ROOT / "infra" / "local-cluster.sh")
    env: dict[str, str] = {}
    try:
        env, failure = start_cluster(script, temp)
        if failure:
            warnings.warn(f"the two-node cluster did not start; trying again: {failure}", stacklevel=1)
            subprocess.run([script, "stop"], env=env, capture_output=True, timeout=120, check=False)
            env, failure = start_cluster(script, temp)
        assert not failure, failure
        token = Path(env["HOME"], ".ray", "auth_token")
        assert token.stat().st_mode & 0o077 == 0, "the token file is readable by others"
        yield {**env, "RAY_ADDRESS": f"127.0.0.1:{env['RAY_PORT']}"}
    finally:
        if env:
            subprocess.run([script, "stop"], env=env, capture_output=True, timeout=120, check=False)
        shutil.rmtree(temp, ignore_errors=True)


STATE_SCRIPT = textwrap.dedent("""
    import json, sys
    from ray.util.state import list_actors, list_nodes, list_tasks
    address = sys.argv[1]
    nodes = {n.node_id: n.resources_total.get("GPU", 0) for n in list_nodes(address=address)}
    tasks = [t.node_id for t in list_tasks(address=address, limit=10000, detail=True) if t.node_id]
    actors = [(a.class_name, a.node_id) for a in list_actors(address=address, limit=10000, detail=True)]
    print(json.dumps({"nodes": nodes, "task_nodes": sorted(set(tasks)), "actors": actors}))
""")


def cluster_state(env: dict[str, str]) -> dict:
    """Return node GPUs, the nodes tasks ran on and actor placements, from Ray's state API."""
    done = subprocess.run([sys.executable, "-c", STATE_SCRIPT, f"http://127.0.0.1:{env['DASHBOARD_PORT']}"],
                          env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def segpipe(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """Run the segpipe CLI as a driver of the cluster in ``env``."""
    return subprocess.run([sys.executable, "-m", "jobs.cli", *args], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=600, check=False)


def test_segment_and_train_run_on_both_nodes_gpu_actors_on_the_gpu_node(two_nodes: dict[str, str],
                                                                        tmp_path: Path, tiny_model: str) -> None:
    data = tmp_path / "data"
    write_sample_data(SampleDataConfig(output=str(data), num_images=12, num_shards=3, min_size=32, max_size=48))

    segment = segpipe(two_nodes, "segment", "--input", str(data), "--model", tiny_model, "--output",
                      str(tmp_path / "run"), "--gpus-per-actor", "1", "--batch-size", "4")
    assert segment.returncode == 0, segment.stderr[-3000:]
    assert "12 images (12 ok, 0 errors)" in segment.stdout
    train = segpipe(two_nodes, "train", "--data", str(data), "--output", str(tmp_path / "model"), "--num-workers", "2",
                    "--cpus-per-worker", "1.5", "--epochs", "1", "--batch-size", "4", "--input-size", "32",
                    "--base-filters", "4", "--depth", "2")
    assert train.returncode == 0, train.stderr[-3000:]

    state = cluster_state(two_nodes)
    assert len(state["nodes"]) == 2
    gpu_node = next(node for node, gpus in state["nodes"].items() if gpus)
    assert set(state["task_nodes"]) | {node for _, node in state["actors"]} == set(state["nodes"]), "work on one node only"
    predictors = [node for name, node in state["actors"] if "SegmentationPredictor" in name]
    assert predictors and set(predictors) == {gpu_node}, "a GPU actor ran off the GPU node"
    train_workers = [node for name, node in state["actors"] if "RayTrainWorker" in name]
    assert set(train_workers) == set(state["nodes"]), "the two train workers did not use both nodes"


def test_a_segment_job_submitted_through_the_jobs_api_succeeds(two_nodes: dict[str, str], tmp_path: Path,
                                                             tiny_model: str) -> None:
    data, output = tmp_path / "data", tmp_path / "run"
    write_sample_data(SampleDataConfig(output=str(data), num_images=6, num_shards=2, min_size=32, max_size=48))
    address = f"http://127.0.0.1:{two_nodes['DASHBOARD_PORT']}"
    submitted = subprocess.run(
        [str(BIN / "ray"), "job", "submit", "--address", address, "--working-dir", str(ROOT), "--",
         "python", "jobs/segment.py", "--input", str(data), "--model", tiny_model, "--output", str(output), "--report"],
        env=two_nodes, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False,
    )
    assert submitted.returncode == 0, submitted.stdout[-3000:] + submitted.stderr[-2000:]
    assert "succeeded" in submitted.stdout.lower()
    assert "6 images (6 ok, 0 errors)" in submitted.stdout
    assert json.loads((output / "run.json").read_text())["status"] == "finished"
    assert (output / "report" / "report.html").exists()
