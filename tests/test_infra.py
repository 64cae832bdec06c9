"""infra/: every manifest parses, names entrypoints and configs that exist, asks for GPUs, keeps secrets out."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.config import ReportConfig, SegmentConfig, TrainConfig, load_config

ROOT = Path(__file__).resolve().parent.parent
KUBERAY = sorted((ROOT / "infra" / "kuberay").glob("*.yaml"))
CONFIG_CLASSES = {"segment": SegmentConfig, "train": TrainConfig, "report": ReportConfig}


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def ray_jobs() -> list[tuple[str, dict[str, Any]]]:
    """Return ``(file name, RayJob spec)`` for every RayJob and every RayCronJob's job template."""
    specs = []
    for path in KUBERAY:
        for doc in documents(path):
            if doc["kind"] == "RayJob":
                specs.append((path.name, doc["spec"]))
            elif doc["kind"] == "RayCronJob":
                specs.append((path.name, doc["spec"]["jobTemplate"]))
    return specs


def cluster_specs() -> list[tuple[str, dict[str, Any]]]:
    specs = [(name, spec["rayClusterSpec"]) for name, spec in ray_jobs()]
    specs += [(p.name, d["spec"]) for p in KUBERAY for d in documents(p) if d["kind"] == "RayCluster"]
    return specs


def test_the_manifests_are_there_and_parse() -> None:
    kinds = sorted(doc["kind"] for path in KUBERAY for doc in documents(path))
    assert kinds == ["RayCluster", "RayCronJob", "RayJob", "RayJob", "RayJob", "Secret", "Secret"]
    assert all(doc["apiVersion"] == "ray.io/v1" for p in KUBERAY for doc in documents(p) if doc["kind"].startswith("Ray"))
    cron = next(doc for p in KUBERAY for doc in documents(p) if doc["kind"] == "RayCronJob")
    assert len(cron["spec"]["schedule"].split()) == 5
    assert "alpha" in (ROOT / "infra" / "kuberay" / "raycronjob-nightly.yaml").read_text().lower()
    launcher = documents(ROOT / "infra" / "ray-cluster-aws.yaml")[0]
    assert launcher["provider"]["type"] == "aws"
    assert launcher["available_node_types"]["gpu_worker"]["max_workers"] > launcher["available_node_types"]["gpu_worker"]["min_workers"]


@pytest.mark.parametrize(("name", "spec"), ray_jobs(), ids=[name for name, _ in ray_jobs()])
def test_each_entrypoint_names_a_job_and_a_config_that_exist_and_load(name: str, spec: dict[str, Any]) -> None:
    words = shlex.split(spec["entrypoint"].replace("$(date -u +%Y-%m-%d)", "DATE"))
    scripts = [w for w in words if re.fullmatch(r"jobs/\w+\.py", w)]
    configs = [words[i + 1] for i, w in enumerate(words) if w == "--config"]
    assert len(scripts) == 1 and len(configs) == 1, spec["entrypoint"]
    assert (ROOT / scripts[0]).is_file() and (ROOT / configs[0]).is_file()
    job = Path(scripts[0]).stem
    overrides = [w for w in words if "=" in w and not w.startswith("-")]
    assert load_config(CONFIG_CLASSES[job], ROOT / configs[0], overrides)  # the config and overrides are valid


@pytest.mark.parametrize(("name", "spec"), cluster_specs(), ids=[name for name, _ in cluster_specs()])
def test_clusters_use_token_auth_gpu_workers_and_secret_credentials(name: str, spec: dict[str, Any]) -> None:
    assert spec["authOptions"] == {"mode": "token", "secretName": "segpipe-ray-token"}
    containers = [spec["headGroupSpec"]["template"]["spec"]["containers"][0]]
    for group in spec["workerGroupSpecs"]:
        container = group["template"]["spec"]["containers"][0]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
        containers.append(container)
    for container in containers:
        assert {"secretRef": {"name": "segpipe-object-storage"}} in container["envFrom"]
        assert not any("AWS_SECRET" in str(env) for env in container.get("env", []))


def test_no_credentials_in_infra_files() -> None:
    for path in (ROOT / "infra").rglob("*"):
        if path.is_file():
            text = path.read_text()
            assert not re.search(r"AKIA[0-9A-Z]{16}", text), path  # an AWS access key id
            for match in re.finditer(r"(AWS_SECRET_ACCESS_KEY|auth_token):\s*(\S+)", text):
                assert match.group(2) == "REPLACE_ME", (path, match.group(0))


def test_dockerfile_matches_the_pinned_ray_and_installs_cuda_tensorflow() -> None:
    text = (ROOT / "infra" / "Dockerfile").read_text()
    pinned = re.search(r"^ray==(\S+)$", (ROOT / "constraints.txt").read_text(), re.MULTILINE).group(1)
    assert f"ARG RAY_VERSION={pinned}" in text and "FROM rayproject/ray:${RAY_VERSION}" in text
    assert "tensorflow[and-cuda]" in text and "RAY_AUTH_MODE=token" in text


def test_local_scripts_bind_to_loopback_only() -> None:
    cluster = (ROOT / "infra" / "local-cluster.sh").read_text()
    assert "--dashboard-host=127.0.0.1" in cluster and "0.0.0.0" not in cluster
    assert "-H 127.0.0.1" in (ROOT / "infra" / "local-s3-server.sh").read_text()
    launcher = (ROOT / "infra" / "ray-cluster-aws.yaml").read_text()
    assert "--dashboard-host=127.0.0.1" in launcher
