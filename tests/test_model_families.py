"""The model families: each network builds, saves and reloads safely; pretrained encoder weights; the
K-means baseline; imported Keras models; and the refusals of each, before any work."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.config import (
    ConfigError,
    ImportConfig,
    ModelConfig,
    SampleDataConfig,
    SegmentConfig,
    TrainConfig,
    load_config,
)
from pipeline.imaging import encode_png
from pipeline.model import (
    ModelArtifactError,
    ModelInfo,
    ModelSpec,
    build_model,
    load_artifact,
    read_info,
    save_artifact,
)
from pipeline.model.architectures import base_filters, check_model_config
from pipeline.model.encoders import EncoderWeightsError, apply_encoder_weights, encoder_model, encoder_weights_bytes
from pipeline.sample_data import write_sample_data
from pipeline.segment.tiling import Tiling

TINY = {  # each family at a size the tests train in seconds
    "unet-vgg16": {"base_filters": 4},
    "fcn8": {"base_filters": 4, "fc_filters": 16},
    "segnet": {"base_filters": 4},
    "deeplabv3plus": {"width": 0.35, "aspp_filters": 16},
}


def tiny_spec(architecture: str, channels: int = 3, size: int = 32) -> ModelSpec:
    return ModelSpec(architecture=architecture, input_size=(size, size), channels=channels, num_classes=3,
                     **TINY[architecture])


@pytest.mark.parametrize("architecture", sorted(TINY))
def test_each_network_saves_reloads_safely_and_takes_other_sizes(architecture: str, tmp_path: Path) -> None:
    spec = tiny_spec(architecture, channels=1)
    model = build_model(spec)
    save_artifact(model, ModelInfo(spec=spec, class_names=("bg", "a", "b")), str(tmp_path))
    loaded = load_artifact(str(tmp_path))  # safe_mode=True
    assert json.loads((tmp_path / "model.json").read_text())["architecture"] == architecture
    assert loaded.info.spec == spec and loaded.model_id.startswith(f"{architecture}-")
    pixels = np.random.default_rng(0).random((2, 32, 32, 1), dtype=np.float32)
    assert np.allclose(loaded.model(pixels).numpy(), model(pixels).numpy(), atol=1e-6)
    free = build_model(spec, free_size=True)
    free.set_weights(model.get_weights())
    assert np.allclose(free(pixels).numpy(), model(pixels).numpy(), atol=1e-5)
    other = free(np.zeros((1, 64, 96, 1), np.float32)).numpy()
    assert other.shape == (1, 64, 96, 3) and np.allclose(other.sum(-1), 1.0, atol=1e-5)


def test_the_vgg16_encoder_is_keras_vgg16_at_64_filters() -> None:
    import keras

    ours = encoder_model(ModelSpec(architecture="unet-vgg16", input_size=(32, 32), base_filters=64))
    theirs = keras.applications.VGG16(include_top=False, weights=None, input_shape=(None, None, 3))
    shapes = [[(layer.name, tuple(w.shape)) for w in layer.weights] for model in (ours, theirs)
              for layer in model.layers if layer.weights]
    assert shapes[:13] == shapes[13:] and len(shapes) == 26


def test_max_unpooling_puts_each_value_where_its_window_had_the_maximum() -> None:
    from pipeline.model.layers import MaxUnpooling2D

    features = np.zeros((1, 4, 4, 1), np.float32)
    features[0, 0, 1, 0], features[0, 2, 0, 0], features[0, 3, 3, 0] = 5, 1, 2  # the window at (0, 1) is all zero
    values = np.array([10, 20, 30, 40], np.float32).reshape(1, 2, 2, 1)
    placed = MaxUnpooling2D()([values, features]).numpy()[0, :, :, 0]
    assert placed.tolist() == [[0, 10, 20, 0], [0, 0, 0, 0], [30, 0, 0, 0], [0, 0, 0, 40]]  # ties: the first


def test_fcn8_upsampling_starts_bilinear() -> None:
    from pipeline.model.networks import bilinear_kernel

    kernel = bilinear_kernel(4, 1)[:, :, 0, 0]
    assert np.allclose(kernel, np.outer([0.25, 0.75, 0.75, 0.25], [0.25, 0.75, 0.75, 0.25]))
    model = build_model(tiny_spec("fcn8"))
    assert np.array_equal(model.get_layer("upscore8").get_weights()[0], bilinear_kernel(16, 3))


def write_encoder_weights(spec: ModelSpec, path: Path) -> list[np.ndarray]:
    encoder = encoder_model(spec)
    rng = np.random.default_rng(3)
    encoder.set_weights([(0.1 * rng.normal(size=w.shape)).astype(np.float32) for w in encoder.get_weights()])
    encoder.save_weights(str(path))
    return encoder.get_weights()


@pytest.mark.parametrize("architecture", ["segnet", "deeplabv3plus"])
def test_a_weights_file_loads_into_the_encoder(architecture: str, tmp_path: Path) -> None:
    spec = tiny_spec(architecture)
    write_encoder_weights(spec, tmp_path / "encoder.weights.h5")
    data, name = encoder_weights_bytes(spec, str(tmp_path / "encoder.weights.h5"), lambda url: Path(url).read_bytes())
    model = build_model(spec)
    assert apply_encoder_weights(model, spec, data, name) > 10
    encoder = encoder_model(spec)
    encoder.load_weights(str(tmp_path / "encoder.weights.h5"))
    used = {layer.name for layer in model.layers}
    for layer in encoder.layers:
        if layer.weights and layer.name in used:
            for ours, theirs in zip(model.get_layer(layer.name).get_weights(), layer.get_weights()):
                assert np.array_equal(ours, theirs), layer.name


def test_a_weights_file_of_another_encoder_or_shape_is_refused(tmp_path: Path) -> None:
    write_encoder_weights(tiny_spec("deeplabv3plus"), tmp_path / "mobilenet.weights.h5")
    write_encoder_weights(ModelSpec(architecture="segnet", input_size=(32, 32), base_filters=8), tmp_path / "wide.weights.h5")
    (tmp_path / "weights.bin").write_bytes(b"x")
    read = lambda url: Path(url).read_bytes()
    for file, reason in (("mobilenet.weights.h5", "does not fit the encoder of unet-vgg16"),
                         ("wide.weights.h5", "base_filters=4"), ("weights.bin", "ends in .weights.h5"),
                         ("missing.weights.h5", "no such file")):
        with pytest.raises(EncoderWeightsError, match=reason):
            encoder_weights_bytes(tiny_spec("unet-vgg16"), str(tmp_path / file), read)


def test_model_config_refusals() -> None:
    with pytest.raises(ConfigError, match="input_size=48 is not divisible by what unet-vgg16 takes = 32"):
        check_model_config(ModelConfig(architecture="unet-vgg16", input_size=48))
    with pytest.raises(ConfigError, match="input_size=40 is not divisible by what deeplabv3plus takes = 16"):
        check_model_config(ModelConfig(architecture="deeplabv3plus", input_size=40))
    with pytest.raises(ConfigError, match="leave model.base_filters at 64"):
        check_model_config(ModelConfig(architecture="fcn8", input_size=64, base_filters=8, encoder_weights="imagenet"))
    with pytest.raises(ConfigError, match="takes RGB input"):
        check_model_config(ModelConfig(architecture="segnet", input_size=64, channels=1, encoder_weights="imagenet"))
    with pytest.raises(ConfigError, match="width=0.4"):
        check_model_config(ModelConfig(architecture="deeplabv3plus", input_size=64, width=0.4, encoder_weights="imagenet"))
    with pytest.raises(ConfigError, match="has no pretrainable encoder"):
        check_model_config(ModelConfig(architecture="unet", encoder_weights="s3://w/encoder.weights.h5"))
    with pytest.raises(ConfigError, match="model.features"):
        check_model_config(ModelConfig(architecture="kmeans", features="colour,edges"))
    old = load_config(TrainConfig, None, ["data=d", "output=o", "unet.depth=2", "unet.input_size=32"])
    assert (old.model.architecture, old.model.depth, base_filters(old.model.architecture, old.model.base_filters)) == ("unet", 2, 16)  # the group's old name


def labelled_samples(root: Path, **overrides: object) -> dict[str, str]:
    common = {"num_classes": 3, "min_size": 32, "max_size": 48, **overrides}
    write_sample_data(SampleDataConfig(output=str(root / "train"), num_images=16, num_shards=2, seed=1, **common))
    write_sample_data(SampleDataConfig(output=str(root / "val"), num_images=6, num_shards=1, seed=2, **common))
    return {"train": str(root / "train"), "val": str(root / "val")}


@pytest.mark.usefixtures("ray_cluster")
def test_imagenet_without_a_network_stops_before_training(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from keras.src.utils import file_utils

    from pipeline.train.run import run_training

    def no_network(*args: object, **kwargs: object) -> None:
        raise Exception("URL fetch failure on https://storage.googleapis.com/...: None -- [Errno -3] name resolution")

    monkeypatch.setattr(file_utils, "get_file", no_network)
    data = labelled_samples(tmp_path, min_size=64, max_size=64)
    cfg = load_config(TrainConfig, options={"data": data["train"], "output": str(tmp_path / "m"), "model": ModelConfig(
        architecture="unet-vgg16", input_size=64, encoder_weights="imagenet")})
    with pytest.raises(ConfigError, match="vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5.*set model.encoder_weights"):
        run_training(cfg)
    assert not list((tmp_path / "m").glob("checkpoints/*"))


@pytest.mark.slow
@pytest.mark.usefixtures("ray_cluster")
@pytest.mark.parametrize("architecture", sorted(TINY))
def test_each_network_trains_saves_and_segments_in_windows(architecture: str, tmp_path: Path) -> None:
    from pipeline.segment.run import run_segmentation
    from pipeline.train.run import model_spec, run_training

    data = labelled_samples(tmp_path)
    model_cfg = ModelConfig(architecture=architecture, input_size=32, channels=3, num_classes=3, **TINY[architecture])
    options: dict[str, object] = {"data": data["train"], "val_data": data["val"], "output": str(tmp_path / "m"),
                                  "epochs": 1, "num_workers": 1, "cpus_per_worker": 1.0, "optim.batch_size": 4}
    frozen: list[np.ndarray] = []
    if architecture == "unet-vgg16":  # weights from a file, the encoder frozen throughout: they must come out unchanged
        frozen = write_encoder_weights(model_spec(model_cfg), tmp_path / "encoder.weights.h5")
        model_cfg = ModelConfig(architecture=architecture, input_size=32, channels=3, num_classes=3,
                                encoder_weights=str(tmp_path / "encoder.weights.h5"), encoder_trainable_after=3,
                                **TINY[architecture])
    if architecture == "deeplabv3plus":  # two workers, which must agree to stop at the time budget
        options.update({"num_workers": 2, "cpus_per_worker": 0.5, "epochs": 3, "max_minutes": 0.001})
    summary = run_training(load_config(TrainConfig, options={**options, "model": model_cfg}))
    assert summary.epochs == 1 and "val_mean_dice" in summary.best_metrics
    artifact = load_artifact(str(tmp_path / "m"))
    assert artifact.info.spec.architecture == architecture and artifact.info.training["trained"]
    if frozen:
        assert artifact.info.preprocessing == "caffe" and summary.history[0]["encoder_frozen"]
        encoder = encoder_model(artifact.info.spec)
        for layer in encoder.layers:
            for ours, theirs in zip(artifact.model.get_layer(layer.name).get_weights(), layer.get_weights()):
                assert ours.shape == theirs.shape
        copied = [w for layer in encoder.layers if layer.weights
                  for w in artifact.model.get_layer(layer.name).get_weights()]
        assert all(np.array_equal(a, b) for a, b in zip(copied, frozen, strict=True))
    run = run_segmentation(SegmentConfig(input=data["val"], model=str(tmp_path / "m"), output=str(tmp_path / "seg"),
                                         tiling="windows", window=64))
    assert run.images == 6 and run.errors == 0
    rows = pq.read_table(tmp_path / "seg" / "metrics").to_pylist()
    assert len(rows) == 6 and all(row["status"] == "ok" for row in rows)
    for row in rows:  # Dice defined by its own counts, not just present
        assert len(row["dice"]) == 3 and sum(row["class_pixels"]) == row["height"] * row["width"]
        for tp, fp, fn, dice in zip(row["tp"], row["fp"], row["fn"], row["dice"], strict=True):
            expected = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else math.nan
            assert dice == pytest.approx(expected, nan_ok=True) and (math.isnan(dice) or 0 <= dice <= 1)
        assert row["tp"][0] + row["fn"][0] > 0 and not math.isnan(row["dice"][0])  # every truth has background


def two_colour_folder(root: Path, count: int, seed: int) -> str:
    """Write images/ and masks/ of pictures half dark red (class 0) and half light blue (class 1), split at random."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for index in range(count):
        split = int(rng.integers(8, 40))
        mask = np.zeros((48, 48), np.uint8)
        mask[:, split:] = 1
        image = np.where(mask[..., None] == 1, [90, 160, 230], [150, 30, 20]).astype(np.uint8)
        image = np.clip(image + rng.integers(-12, 13, image.shape), 0, 255).astype(np.uint8)
        (root / "images" / f"img{index:02d}.png").write_bytes(encode_png(image))
        (root / "masks" / f"img{index:02d}.png").write_bytes(encode_png(mask))
    return str(root)


@pytest.mark.usefixtures("ray_cluster")
def test_kmeans_learns_the_colours_classes_and_segments_on_the_actor_pool(tmp_path: Path) -> None:
    from pipeline.segment.run import run_segmentation
    from pipeline.train.run import run_training

    train, val = two_colour_folder(tmp_path / "train", 8, 1), two_colour_folder(tmp_path / "val", 4, 2)
    cfg = load_config(TrainConfig, options={"data": train, "val_data": val, "output": str(tmp_path / "km"),
                                            "model": ModelConfig(architecture="kmeans", num_classes=2, clusters=4)})
    summary = run_training(cfg)
    assert summary.best_metrics["val_pixel_error"] == 0.0 and summary.best_metrics["val_mean_dice"] == 1.0
    assert not (tmp_path / "km" / "model.keras").exists()
    info = read_info(str(tmp_path / "km"))
    centres = np.array(info.kmeans["centres"]) * info.kmeans["feature_std"] + info.kmeans["feature_mean"]
    blue = centres[:, 2] > centres[:, 0]  # standardised back: each centre's colour decides its class
    assert np.array_equal(np.array(info.kmeans["classes"]) == 1, blue)
    run = run_segmentation(SegmentConfig(input=val, model=str(tmp_path / "km"), output=str(tmp_path / "seg")))
    assert run.images == 4 and run.errors == 0
    rows = pq.read_table(tmp_path / "seg" / "metrics").to_pylist()
    assert [row["mean_dice"] for row in rows] == [1.0] * 4
    assert json.loads((tmp_path / "seg" / "run.json").read_text())["tiling"]["mode"] == "whole"


def foreign_model(path: Path, logits: bool = False, classes: int = 3, free: bool = True) -> object:
    """Save a Keras model built without segpipe: any size, RGB in, ``classes`` channels out."""
    import keras

    keras.utils.set_random_seed(0)  # untrained weights whose scores are not all near-ties, whatever ran before
    inputs = keras.Input((None, None, 3) if free else (32, 32, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inputs)
    x = keras.layers.Conv2D(classes, 1, activation=None if logits else "softmax")(x)
    model = keras.Model(inputs, x, name="theirs")
    model.save(str(path))
    return model


@pytest.mark.usefixtures("ray_cluster")
def test_an_imported_model_segments_end_to_end(tmp_path: Path) -> None:
    from jobs.cli import main
    from pipeline.segment.run import run_segmentation

    model = foreign_model(tmp_path / "theirs.keras", free=False)
    assert main(["model", "import", "--keras", str(tmp_path / "theirs.keras"), "--output", str(tmp_path / "art"),
                 "--classes", "background,disc,stripes"]) == 0
    info = read_info(str(tmp_path / "art"))
    assert (info.spec.architecture, info.spec.input_size, info.scale) == ("imported", (32, 32), "resize")
    assert (tmp_path / "art" / "model.keras").read_bytes() == (tmp_path / "theirs.keras").read_bytes()
    data = tmp_path / "data"
    write_sample_data(SampleDataConfig(output=str(data), num_images=3, num_shards=1, min_size=32, max_size=32))
    run = run_segmentation(SegmentConfig(input=str(data), model=str(tmp_path / "art"), output=str(tmp_path / "seg")))
    assert run.images == 3 and run.errors == 0
    from pipeline.imaging import decode_image, decode_mask
    from pipeline.io.readers import read_shard
    from pipeline.io.shards import discover_shards

    row = next(iter(read_shard(discover_shards(str(data))[0], None)))
    scores = model(decode_image(row["image"])[np.newaxis].astype(np.float32) / 255).numpy()[0]
    written = decode_mask((tmp_path / "seg" / "masks" / row["shard"] / f"{row['key']}.png").read_bytes(), 3, (32, 32))
    top = np.sort(scores, axis=-1)
    clear = top[..., -1] - top[..., -2] > 2 / 255  # the predictor quantises scores to 1/255: near-ties may flip
    assert clear.sum() > 100 and (written == scores.argmax(-1))[clear].all()


def test_an_imported_model_with_logits_gets_softmax_in_the_predictor(tmp_path: Path) -> None:
    from pipeline.model.importing import import_model
    from pipeline.segment.predictor import SegmentationPredictor

    model = foreign_model(tmp_path / "logits.keras", logits=True)
    info = import_model(ImportConfig(keras=str(tmp_path / "logits.keras"), output=str(tmp_path / "art"),
                                     classes="a,b,c", activation="logits", tile=64))
    assert info.spec.from_logits and info.spec.free_input and info.scale == "native"
    pixels = np.random.default_rng(1).random((2, 64, 64, 3), dtype=np.float32)
    scores = SegmentationPredictor(str(tmp_path / "art"), tiling=Tiling(mode="windows", window=(64, 64))).scores(pixels)
    logits = model(pixels).numpy()
    expected = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    assert np.allclose(scores, expected, atol=1e-5) and np.allclose(scores.sum(-1), 1.0, atol=1e-5)


def test_imports_that_cannot_run_are_refused(tmp_path: Path) -> None:
    import keras

    from pipeline.model.importing import import_model

    foreign_model(tmp_path / "three.keras")
    with pytest.raises(ModelArtifactError, match=r"gives \(None, None, 3\), but 2 classes"):
        import_model(ImportConfig(keras=str(tmp_path / "three.keras"), output=str(tmp_path / "a"), classes="bg,fg"))

    @keras.saving.register_keras_serializable(package="elsewhere")
    class Doubling(keras.layers.Layer):
        def call(self, x: object) -> object:
            return x * 2

    inputs = keras.Input((None, None, 3))
    keras.Model(inputs, keras.layers.Conv2D(2, 1, activation="softmax")(Doubling()(inputs))).save(
        str(tmp_path / "custom.keras"))
    del keras.saving.get_custom_objects()["elsewhere>Doubling"]  # as in a process that never defined it
    with pytest.raises(ModelArtifactError, match="custom layer, function or lambda"):
        import_model(ImportConfig(keras=str(tmp_path / "custom.keras"), output=str(tmp_path / "b"), classes="bg,fg"))
    inputs = keras.Input((None, None, 3))
    keras.Model(inputs, keras.layers.Conv2D(2, 1, activation="softmax")(keras.layers.Lambda(lambda t: t * 2)(inputs))
                ).save(str(tmp_path / "lambda.keras"))
    with pytest.raises(ModelArtifactError, match="custom layer, function or lambda"):
        import_model(ImportConfig(keras=str(tmp_path / "lambda.keras"), output=str(tmp_path / "c"), classes="bg,fg"))
    gray = keras.Input((None, None, 2))
    keras.Model(gray, keras.layers.Conv2D(2, 1)(gray)).save(str(tmp_path / "two.keras"))
    with pytest.raises(ModelArtifactError, match="1 or 3 channels"):
        import_model(ImportConfig(keras=str(tmp_path / "two.keras"), output=str(tmp_path / "d"), classes="bg,fg"))
    assert not any((tmp_path / name).exists() for name in "abcd")


def test_format_1_artifacts_still_load(tmp_path: Path) -> None:
    spec = ModelSpec(input_size=(16, 16), channels=1, num_classes=2, depth=1, base_filters=2)
    save_artifact(build_model(spec), ModelInfo(spec=spec, class_names=("bg", "fg")), str(tmp_path))
    described = json.loads((tmp_path / "model.json").read_text())
    described.update({"format_version": 1, "parameters": {k: described["parameters"][k] for k in (
        "depth", "base_filters", "batch_norm", "dropout", "output_activation")}})
    del described["preprocessing"]
    (tmp_path / "model.json").write_text(json.dumps(described))
    loaded = load_artifact(str(tmp_path))
    assert loaded.info.spec == spec and loaded.info.preprocessing == "none"
