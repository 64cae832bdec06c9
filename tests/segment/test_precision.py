"""The forward pass in bfloat16: what ``precision: auto`` chooses, how a trained model's masks agree
with float32's, and what a run records and resumes with."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from pipeline import metrics
from pipeline.config import ConfigError, SampleDataConfig, SegmentConfig
from pipeline.model import ModelInfo, ModelSpec, build_unet, save_artifact
from pipeline.model.precision import auto_precision, cpu_bfloat16_flag
from pipeline.sample_data import write_sample_data
from pipeline.segment.predictor import SegmentationPredictor
from pipeline.segment.run import run_segmentation

DISCS = ModelSpec(input_size=(32, 32), channels=3, num_classes=2, depth=2, base_filters=8)


def discs(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Return ``count`` noisy 32-px images, each with a bright disc, and their masks."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:32, :32]
    images = rng.normal(0.3, 0.1, (count, 32, 32, 3)).astype(np.float32)
    masks = np.zeros((count, 32, 32), dtype=np.uint8)
    for index in range(count):
        cy, cx, r = rng.uniform(8, 24), rng.uniform(8, 24), rng.uniform(4, 9)
        masks[index] = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        images[index][masks[index] == 1] += 0.4
    return np.clip(images, 0, 1), masks


@pytest.fixture(scope="module")
def trained_discs(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A small U-Net trained in-process to find discs (a few seconds), as an artifact."""
    import keras

    keras.utils.set_random_seed(3)
    model = build_unet(DISCS)
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy")
    images, masks = discs(256, seed=1)
    model.fit(images, masks, batch_size=16, epochs=8, verbose=0)
    path = str(tmp_path_factory.mktemp("discs"))
    save_artifact(model, ModelInfo(spec=DISCS, class_names=("background", "disc"), training={"trained": True}), path)
    return path


def test_a_trained_models_bfloat16_masks_agree_with_float32s(trained_discs: str) -> None:
    images, truth = discs(64, seed=2)  # not trained on

    def masks(precision: str) -> np.ndarray:
        batch = {"pixels": images.copy(), "error": np.array([""] * len(images), dtype=object),
                 "seconds": np.zeros(len(images))}
        return SegmentationPredictor(trained_discs, precision=precision)(batch)["scores"].argmax(axis=-1)

    full, half = masks("float32"), masks("mixed_bfloat16")

    def dice(predicted: np.ndarray) -> float:
        return float(np.nanmean([metrics.image_metrics(p, t, 2)["dice"][1] for p, t in zip(predicted, truth)]))

    assert dice(full) > 0.85  # the model learnt the discs: the comparison is between two good answers
    assert (full == half).mean() > 0.995, (full == half).mean()
    assert abs(dice(half) - dice(full)) < 0.005
    batch = {"pixels": images[:4].copy(), "error": np.array([""] * 4, dtype=object), "seconds": np.zeros(4)}
    scores = [SegmentationPredictor(trained_discs, precision=p)(dict(batch))["scores"].astype(int)
              for p in ("float32", "mixed_bfloat16")]
    assert (scores[0] != scores[1]).any()  # the masks may agree everywhere, the scores not: bfloat16 really ran


def test_auto_takes_bfloat16_where_the_hardware_runs_it_and_the_architecture_agrees(tmp_path: Path) -> None:
    assert auto_precision("unet", 0, "avx512_bf16", None) == ("mixed_bfloat16", "the CPU has AVX512_BF16")
    assert auto_precision("unet", 0, "", None)[0] == "float32"
    assert auto_precision("unet", 1, "", 8.0)[0] == "mixed_bfloat16"
    assert auto_precision("unet", 1, "avx512_bf16", 7.5)[0] == "mixed_float16"  # tensor cores, no bfloat16
    assert auto_precision("unet", 1, "", None)[0] == "float32"
    assert auto_precision("imported", 1, "amx_bf16", 9.0)[0] == "float32"
    assert auto_precision("kmeans", 0, "amx_bf16", None)[0] == "float32"
    assert auto_precision("some-future-net", 0, "amx_bf16", None)[0] == "float32"  # not measured
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse avx512f avx512_bf16 avx512_vnni\n")
    assert cpu_bfloat16_flag(str(cpuinfo)) == "avx512_bf16"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse avx2\n")
    assert cpu_bfloat16_flag(str(cpuinfo)) == ""
    assert cpu_bfloat16_flag(str(tmp_path / "missing")) == ""


@pytest.mark.slow
def test_a_run_records_its_precision_and_auto_resumes_in_the_one_it_began_in(
        tmp_path: Path, trained_discs: str, ray_cluster: None) -> None:
    data = tmp_path / "data"
    write_sample_data(SampleDataConfig(output=str(data), num_images=8, num_shards=2, num_classes=2, min_size=32,
                                       max_size=40))
    auto_run = run_segmentation(SegmentConfig(input=str(data), model=trained_discs, output=str(tmp_path / "auto")))
    record = json.loads((Path(auto_run.output) / "run.json").read_text())["precision"]
    expected = auto_precision("unet", 0, cpu_bfloat16_flag(), None)
    assert record == {"asked": "auto", "used": expected[0], "why": f"auto: {expected[1]}"}

    output = tmp_path / "float32"
    run_segmentation(SegmentConfig(input=str(data), model=trained_discs, output=str(output), precision="float32"))
    (output / "_done" / "shard-00001.json").unlink()  # as if it had stopped before its last commit
    resumed = run_segmentation(SegmentConfig(input=str(data), model=trained_discs, output=str(output)))  # auto
    assert resumed.resumed_shards == 1 and resumed.images == 8
    record = json.loads((output / "run.json").read_text())["precision"]
    assert record["used"] == "float32" and record["asked"] == "auto"
    if expected[0] != "float32":  # asking for another precision explicitly is still refused
        with pytest.raises(ConfigError, match="precision"):
            run_segmentation(SegmentConfig(input=str(data), model=trained_discs, output=str(output),
                                           precision=expected[0]))


@pytest.mark.slow
def test_the_probe_of_each_node_reads_the_cpus_bfloat16_flag(ray_cluster: None, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline import cluster
    from pipeline.train.plan import Hardware

    assert cluster.on_every_cpu_node(cpu_bfloat16_flag) == [cpu_bfloat16_flag()]  # this machine: read here
    monkeypatch.setattr(cluster, "this_node_only", lambda: False)  # as on a cluster: a probe task on each node
    remote = cluster.on_every_cpu_node(lambda: (cpu_bfloat16_flag(), os.getpid()))
    assert len(remote) == 1 and remote[0][0] == cpu_bfloat16_flag() and remote[0][1] != os.getpid()
    assert Hardware.of_cluster().bfloat16 == cpu_bfloat16_flag()
