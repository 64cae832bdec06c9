"""The training plan: each choice from hand-made fingerprints and hardware; given keys kept; the
validation split; and, on Ray, a plain run that follows its plan into model.json and segmentation,
and a time budget that ends within a step."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.config import LoaderConfig, ModelConfig, OptimConfig, SegmentConfig, TrainConfig, load_config
from pipeline.fingerprint import FingerprintTotals
from pipeline.imaging import encode_png
from pipeline.train.data import held_out, training_batch
from pipeline.train.plan import Hardware, plan_training

CPU = Hardware(gpus=0, nodes=1)


def record(key: str, size: tuple[int, int] = (256, 256), channels: int = 1, grey: bool = True, median: float = 0.1,
           classes: tuple[int, ...] = (900, 100), polarity: float = 0.5, areas: tuple[int, ...] = (300, 300),
           ignored: int = 0, source: str = "labels") -> dict:
    """Return one image's fingerprint record, as pipeline.fingerprint.measure.image_fingerprint gives it."""
    return {"key": key, "shard": "s", "error_kind": "", "truth_error_kind": "", "width": size[0], "height": size[1],
            "channels": channels, "bits": 8, "grey": grey, "p01": 0.0, "p50": median, "p99": 1.0,
            "class_pixels": list(classes), "ignored_pixels": ignored, "fg_mean": 0.5 + polarity / 2,
            "bg_mean": 0.5 - polarity / 2, "object_areas": list(areas), "object_source": source}


def fingerprint(records: list[dict]) -> dict:
    totals = FingerprintTotals()
    for item in records:
        totals.add(item)
    return totals.document()


def plan(fp: dict | None, hardware: Hardware = CPU, **given: object) -> tuple[TrainConfig, dict[str, object]]:
    cfg, made = plan_training(load_config(TrainConfig, options={"data": "d", "output": "o", **given}), fp, hardware)
    return cfg, {choice.key: choice for choice in made.choices}


def test_grey_stored_as_colour_one_size_one_polarity_and_a_rare_class() -> None:
    # 12 images of 256 px, RGB files holding grey, nuclei of 300 px (about 20 across) on 10 % of the pixels
    cfg, made = plan(fingerprint([record(f"k{i}", channels=3, grey=True) for i in range(12)]))
    assert made["model.channels"].value == 1 and "12 of 12 images are grey" in made["model.channels"].reason
    assert cfg.loader.normalization == "scale"
    assert cfg.model.input_size == 128 and "6 objects of 20 px" in made["model.input_size"].reason
    assert cfg.model.depth == 4 and cfg.model.base_filters == 16
    assert cfg.scale == "native" and "exceed the 128-px tile" in made["scale"].reason
    assert cfg.optim.batch_size == 8 and cfg.optim.loss == "ce+dice" and "class_1 holds 10.0 %" in made["optim.loss"].reason
    assert cfg.augment.invert is False and cfg.model.num_classes == 2 and cfg.num_workers == 1 and not cfg.use_gpu
    assert cfg.val_fraction == 0.2 and cfg.optim.lr_schedule == "cosine"
    # no --epochs or --max-minutes: a budget from the data's size (12 x 256^2 px, 80 % trained on: 0.63 MP)
    assert cfg.max_minutes == 5.0 and "a minute per 2.5 megapixels of training images (1)" in made["max_minutes"].reason
    assert cfg.loader.steps_per_epoch == 25  # a pass is 5 steps; an epoch is at least 25 ...
    assert cfg.loader.passes_per_epoch == 6 and "read 6 times over" in made["loader.steps_per_epoch"].reason  # ... in one read
    assert not any(choice.given for choice in made.values())


def test_instance_labels_plan_border_targets_as_wide_as_the_objects_ask() -> None:
    cfg, made = plan(fingerprint([record(f"k{i}") for i in range(12)]))  # instance labels, objects of 20 px
    assert cfg.model.target == "borders" and "12 images with instance labels" in made["model.target"].reason
    assert cfg.model.border_width == 3 and "(20 px)" in made["model.border_width"].reason
    cfg, made = plan(fingerprint([record(f"k{i}", areas=(5000,)) for i in range(12)]))  # 80 px across: 4 at most
    assert cfg.model.border_width == 4
    cfg, made = plan(fingerprint([record(f"k{i}", source="components") for i in range(12)]))  # masks alone
    assert cfg.model.target == "classes" and made["model.target"].reason == "no instance labels"
    assert cfg.model.border_width == 0
    cfg, made = plan(fingerprint([record(f"k{i}") for i in range(12)]), model={"output_activation": "sigmoid"})
    assert cfg.model.target == "classes" and "sigmoid" in made["model.target"].reason
    cfg, made = plan(fingerprint([record(f"k{i}") for i in range(12)]), model={"target": "classes"})
    assert cfg.model.target == "classes" and made["model.target"].given


def test_colour_mixed_polarity_sizes_and_intensities_with_balanced_classes() -> None:
    records = [record(f"a{i}", size=(64, 64), channels=3, grey=False, median=0.05, classes=(50, 50), polarity=0.4,
                      areas=(100,)) for i in range(4)]
    records += [record(f"b{i}", size=(48, 40), channels=3, grey=False, median=0.8, classes=(60, 40), polarity=-0.4,
                       areas=(100,)) for i in range(4)]
    cfg, made = plan(fingerprint(records))
    assert cfg.model.channels == 3 and cfg.loader.normalization == "minmax"
    assert "per-image median intensity spans 0.05..0.80" in made["loader.normalization"].reason
    assert cfg.augment.invert is True and "4 images bright-on-dark, 4 dark-on-bright" in made["augment.invert"].reason
    assert cfg.scale == "native" and "2 image sizes" in made["scale"].reason
    assert cfg.model.input_size == 32 and "median image's side" in made["model.input_size"].reason
    assert cfg.model.depth == 3  # objects 11 px across would take 4 levels; a 32-px tile allows 3 at most
    assert cfg.optim.loss == "ce"
    # 64 tiles of 32 px fit a CPU step, but a pass holds about 23 windows: 4 steps of 4 at least
    assert cfg.optim.batch_size == 4 and "makes 4 steps at least" in made["optim.batch_size"].reason
    assert cfg.val_fraction == 0.0 and "too few" in made["val_fraction"].reason


def test_one_size_within_the_tile_is_resized_and_an_ignore_share_is_no_class() -> None:
    records = [record(f"k{i}", size=(64, 64), classes=(3000, 1000), areas=(1000,), ignored=96) for i in range(10)]
    cfg, made = plan(fingerprint(records))
    assert cfg.model.input_size == 64 and cfg.scale == "resize" and cfg.model.num_classes == 2
    assert cfg.optim.loss == "ce" and cfg.val_fraction == 0.2


def test_given_keys_are_kept_and_listed_as_given() -> None:
    fp = fingerprint([record(f"k{i}", channels=3, grey=True) for i in range(12)])
    cfg, made = plan(fp, model=ModelConfig(channels=3, input_size=64, num_classes=3), scale="resize", epochs=4,
                     normalization="minmax", val_fraction=0.0, loss="dice", invert=True, steps_per_epoch=0)
    assert (cfg.model.channels, cfg.scale, cfg.model.input_size, cfg.loader.normalization) == (3, "resize", 64, "minmax")
    assert (cfg.epochs, cfg.max_minutes, cfg.val_fraction, cfg.optim.loss, cfg.augment.invert) == (4, 0.0, 0.0, "dice", True)
    assert cfg.model.num_classes == 3 and cfg.loader.steps_per_epoch == 0
    for key in ("model.channels", "scale", "model.input_size", "loader.normalization", "val_fraction", "optim.loss",
                "augment.invert", "model.num_classes", "loader.steps_per_epoch"):
        assert made[key].given, key
    assert "max_minutes" not in made  # --epochs alone: no budget is planned
    assert not made["model.depth"].given and cfg.model.depth == 4  # objects of 20 px in a 64-px tile
    _, budgeted = plan(fp, max_minutes=7.5)
    assert budgeted["max_minutes"].given and budgeted["max_minutes"].value == 7.5


def test_gpus_and_nodes_set_workers_filters_and_batch() -> None:
    fp = fingerprint([record(f"k{i}", size=(1024, 1024), areas=(2000,)) for i in range(20)])
    cfg, made = plan(fp, Hardware(gpus=4, nodes=2))
    assert cfg.use_gpu and cfg.num_workers == 4 and cfg.model.base_filters == 32 and cfg.model.input_size == 256
    assert cfg.optim.batch_size == 32 and cfg.optim.batch_size % cfg.num_workers == 0
    cpu, _ = plan(fp, Hardware(gpus=0, nodes=3))
    assert not cpu.use_gpu and cpu.num_workers == 3 and cpu.optim.batch_size % 3 == 0 and cpu.model.input_size == 128
    short, made = plan(fp, Hardware(gpus=1, nodes=2), num_workers=2)  # more workers given than GPUs: CPU workers
    assert not short.use_gpu and "num_workers=2 given" in made["use_gpu"].reason
    none, made = plan(None, Hardware(gpus=0, nodes=1), epochs=2)  # nothing measured: safe defaults, said so
    assert none.model.num_classes == 3 and "no masks measured" in made["model.num_classes"].reason


def test_bfloat16_training_where_the_cpus_have_it_for_the_unet_with_xla_off() -> None:
    fp = fingerprint([record(f"k{i}") for i in range(12)])
    cfg, made = plan(fp, Hardware(gpus=0, nodes=2, bfloat16="avx512_bf16"))
    assert (cfg.optim.precision, cfg.optim.xla) == ("mixed_bfloat16", False)
    assert "AVX512_BF16" in made["optim.precision"].reason and "gains nothing" in made["optim.xla"].reason
    plain, made = plan(fp)  # no bfloat16 arithmetic: float32 with XLA, as before
    assert (plain.optim.precision, plain.optim.xla) == ("float32", True) and "no bfloat16" in made["optim.precision"].reason
    gpu, _ = plan(fp, Hardware(gpus=1, nodes=1, bfloat16="amx_bf16"))
    assert (gpu.optim.precision, gpu.optim.xla) == ("float32", True)
    other, made = plan(fp, Hardware(gpus=0, nodes=1, bfloat16="amx_bf16"), **{"model.architecture": "fcn8"})
    assert other.optim.precision == "float32" and "U-Net only" in made["optim.precision"].reason
    given, made = plan(fp, CPU, **{"optim.precision": "mixed_bfloat16"})  # asked for: XLA follows it
    assert made["optim.precision"].given and given.optim.xla is False
    kept, made = plan(fp, Hardware(gpus=0, nodes=1, bfloat16="amx_bf16"), **{"optim.xla": True})
    assert made["optim.xla"].given and (kept.optim.precision, kept.optim.xla) == ("mixed_bfloat16", True)


def test_the_validation_split_is_stable_and_near_its_share() -> None:
    keys = [f"image_{index:04d}" for index in range(2000)]
    chosen = [key for key in keys if held_out(key, 0.2)]
    assert chosen == [key for key in keys if held_out(key, 0.2)]  # the same every call, run and process
    assert 0.17 < len(chosen) / len(keys) < 0.23
    assert set(key for key in keys if held_out(key, 0.1)) <= set(chosen)  # a smaller share is inside a larger
    batch = {"key": np.array(keys[:20], dtype=object), "image": np.array([b""] * 20, dtype=object),
             "mask": np.array([b""] * 20, dtype=object), "error": np.array([""] * 20, dtype=object)}
    from pipeline.model import ModelSpec

    spec = ModelSpec(input_size=(32, 32), channels=1, num_classes=2, depth=2, base_filters=4)
    train = training_batch(batch, spec, {"mode": "scale"}, None, split=(0.2, False))
    val = training_batch(batch, spec, {"mode": "scale"}, None, split=(0.2, True))
    assert len(train["weights"]) + len(val["weights"]) == 20
    assert len(val["weights"]) == sum(held_out(key, 0.2) for key in keys[:20])


def two_brightness_folder(folder: Path, count: int, seed: int) -> None:
    """Write ``count`` grey 48-px images, a bright disc on grey, half of them at a quarter of the
    brightness, with their masks: intensities that vary across images."""
    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    rows, cols = np.mgrid[:48, :48]
    for index in range(count):
        centre = rng.integers(14, 34, 2)
        mask = ((rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 < 64).astype(np.uint8)
        image = (120 + 120 * mask + rng.integers(0, 15, (48, 48))).astype(np.uint8)
        if index % 2:
            image = (image // 4).astype(np.uint8)
        (folder / "images" / f"img_{index:03d}.png").write_bytes(encode_png(image))
        (folder / "masks" / f"img_{index:03d}.png").write_bytes(encode_png(mask * 255))


@pytest.mark.slow
@pytest.mark.usefixtures("ray_cluster")
def test_a_plain_run_follows_its_plan_into_the_artifact_and_segmentation(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from jobs.cli import main
    from pipeline.segment.run import run_segmentation
    from pipeline.train.run import run_training

    data = tmp_path / "data"
    two_brightness_folder(data, 20, 0)
    assert main(["train", "--data", str(data), "--output", str(tmp_path / "planned"), "--plan-only"]) == 0
    printed = capsys.readouterr().out
    assert "loader.normalization     minmax" in printed and "val_fraction             0.2" in printed
    assert not (tmp_path / "planned").exists()  # the plan only: nothing written
    # the plan's choices, with a small model and a fixed number of epochs given
    model = tmp_path / "model"
    options = {"data": str(data), "output": str(model), "epochs": 2, "cpus_per_worker": 1.0,
               "model": ModelConfig(input_size=32, depth=2, base_filters=4), "loader": LoaderConfig(steps_per_epoch=3)}
    summary = run_training(load_config(TrainConfig, options=options))
    info = json.loads((model / "model.json").read_text())
    plan = {choice["key"]: choice for choice in info["plan"]}
    assert plan["loader.normalization"]["value"] == "minmax" and not plan["loader.normalization"]["given"]
    assert plan["model.input_size"]["given"] and plan["model.channels"]["value"] == 1
    assert info["normalization"] == {"mode": "minmax"} and info["channels"] == 1 and info["num_classes"] == 2
    assert (model / "fingerprint.json").exists()
    from pipeline.model.precision import cpu_bfloat16_flag  # the cluster is this machine: its CPU decides

    assert plan["optim.precision"]["value"] == ("mixed_bfloat16" if cpu_bfloat16_flag() else "float32")
    assert plan["optim.xla"]["value"] is not bool(cpu_bfloat16_flag())
    held = sum(held_out(f"img_{index:03d}", 0.2) for index in range(20))
    assert [epoch["steps"] for epoch in summary.history] == [3, 3]
    assert held and all(epoch["val_images"] >= held for epoch in summary.history)  # the held-out images' windows
    resumed = run_training(load_config(TrainConfig, options={**options, "epochs": 3})).history
    assert len(resumed) == 3 and resumed[2]["val_images"] == summary.history[0]["val_images"]  # the same split
    # segmentation follows the plan's normalisation: a copy at a quarter of the brightness (exactly: the
    # one image is four times the other) gives the same mask, where dividing by 255 would not
    pair = tmp_path / "pair"
    (pair / "images").mkdir(parents=True)
    source = (data / "images" / "img_000.png").read_bytes()
    from pipeline.imaging import decode_image

    dim = decode_image(source)[:, :, 0] // 4
    (pair / "images" / "full.png").write_bytes(encode_png(dim * 4))
    (pair / "images" / "dim.png").write_bytes(encode_png(dim))
    run = run_segmentation(SegmentConfig(input=str(pair), output=str(tmp_path / "run"), model=str(model)))
    assert run.images == 2 and run.errors == 0
    masks = {path.stem: decode_image(path.read_bytes())[:, :, 0] for path in (tmp_path / "run").rglob("*.png")}
    assert set(masks) == {"full", "dim"} and masks["full"].any()
    assert (masks["full"] == masks["dim"]).all()  # each image's own range: the same input to the model


@pytest.mark.slow
@pytest.mark.usefixtures("ray_cluster")
def test_a_time_budget_ends_within_one_step_and_a_resume_continues_its_clock(tmp_path: Path) -> None:
    from pipeline.train.run import run_training
    from pipeline.train.schedule import Schedule

    data = tmp_path / "data"
    two_brightness_folder(data, 12, 1)
    options = {"data": str(data), "output": str(tmp_path / "model"), "max_minutes": 0.2, "cpus_per_worker": 1.0,
               "model": ModelConfig(input_size=32, depth=2, base_filters=4), "val_fraction": 0.0,
               "loader": LoaderConfig(steps_per_epoch=100_000), "optim": OptimConfig(batch_size=4)}
    history = run_training(load_config(TrainConfig, options=options)).history
    last = history[-1]
    assert len(history) == 1 and last["budget_spent"] and last["steps"] > 3  # passes on in one stream
    assert last["previous_step_clock"] < 12.0 <= last["trained_seconds"]  # stopped after the first step begun past 12 s
    # the rate of the last step was set from the clock of the one before: the cosine runs on the budget's clock
    assert last["learning_rate"] == pytest.approx(Schedule(1e-3, "cosine", 0, 12.0).rate(0, last["previous_step_clock"]),
                                                  rel=1e-4, abs=1e-9)
    # a longer budget on the same output continues the clock where it stopped
    longer = run_training(load_config(TrainConfig, options={**options, "max_minutes": 0.4})).history
    assert len(longer) == 2 and longer[1]["previous_step_clock"] < 24.0 <= longer[1]["trained_seconds"]
    assert longer[1]["trained_seconds"] - longer[1]["elapsed_seconds"] >= 12.0 - 1.0
