"""The prediction actor's model call, with and without test-time augmentation (run in-process)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from pipeline.config import ConfigError, SampleDataConfig, SegmentConfig
from pipeline.model import ModelInfo, ModelSpec, build_unet, load_artifact, save_artifact
from pipeline.sample_data import write_sample_data
from pipeline.segment.predictor import SegmentationPredictor, dihedral_mean, moved, tta_symmetries
from pipeline.segment.run import run_segmentation
from pipeline.segment.tiling import Tiling

SQUARE_SYMMETRIES = [
    (lambda a: a, lambda a: a),
    (lambda a: a[:, :, ::-1], lambda a: a[:, :, ::-1]),
    (lambda a: a[:, ::-1], lambda a: a[:, ::-1]),
    (lambda a: np.rot90(a, 1, axes=(1, 2)), lambda a: np.rot90(a, -1, axes=(1, 2))),
    (lambda a: np.rot90(a, 2, axes=(1, 2)), lambda a: np.rot90(a, -2, axes=(1, 2))),
    (lambda a: np.rot90(a, 3, axes=(1, 2)), lambda a: np.rot90(a, -3, axes=(1, 2))),
    (lambda a: np.rot90(a, 1, axes=(1, 2))[:, :, ::-1], lambda a: np.rot90(a[:, :, ::-1], -1, axes=(1, 2))),
    (lambda a: np.rot90(a, 3, axes=(1, 2))[:, :, ::-1], lambda a: np.rot90(a[:, :, ::-1], -3, axes=(1, 2))),
]


def scores(predictor: SegmentationPredictor, pixels: np.ndarray) -> np.ndarray:
    """Return the predictor's float scores for ``pixels``."""
    return predictor.scores(np.ascontiguousarray(pixels, dtype=np.float32))


def test_tta_is_the_mean_over_the_eight_symmetries(tiny_model: str) -> None:
    pixels = np.random.default_rng(0).random((3, 32, 32, 3), dtype=np.float32)
    model = load_artifact(tiny_model).model
    expected = np.mean([undo(model(np.ascontiguousarray(do(pixels)), training=False).numpy())
                        for do, undo in SQUARE_SYMMETRIES], axis=0)
    got = scores(SegmentationPredictor(tiny_model, tta=True), pixels)
    assert got.shape == (3, 32, 32, 3)
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_tta_makes_predictions_follow_flips_and_rotations(tiny_model: str) -> None:
    pixels = np.random.default_rng(1).random((2, 32, 32, 3), dtype=np.float32)
    plain, tta = SegmentationPredictor(tiny_model), SegmentationPredictor(tiny_model, tta=True)
    for do, _ in SQUARE_SYMMETRIES[1:]:
        # the untrained network is not symmetric by itself (zero padding, random kernels) ...
        assert np.abs(scores(plain, do(pixels)) - do(scores(plain, pixels))).max() > 1e-3
        # ... but its TTA average is, up to float rounding
        np.testing.assert_allclose(scores(tta, do(pixels)), do(scores(tta, pixels)), atol=1e-5)


def test_tta_on_non_square_tiles_uses_the_shape_keeping_symmetries(tmp_path: Path) -> None:
    spec = ModelSpec(input_size=(32, 64), channels=1, num_classes=2, depth=2, base_filters=4)
    save_artifact(build_unet(spec), ModelInfo(spec=spec, class_names=("background", "object")), str(tmp_path))
    pixels = np.random.default_rng(2).random((2, 32, 64, 1), dtype=np.float32)
    tta = SegmentationPredictor(str(tmp_path), tta=True)
    result = scores(tta, pixels)
    assert result.shape == (2, 32, 64, 2)
    for flip in (lambda a: a[:, ::-1], lambda a: a[:, :, ::-1], lambda a: a[:, ::-1, ::-1]):
        np.testing.assert_allclose(scores(tta, flip(pixels)), flip(result), atol=1e-5)


def test_batch_call_with_tta_quantises_and_zeroes_error_rows(tiny_model: str) -> None:
    pixels = np.random.default_rng(3).random((2, 32, 32, 3), dtype=np.float32)
    batch = {"pixels": pixels.copy(), "error": np.array(["", "bad image"], dtype=object), "seconds": np.zeros(2)}
    out = SegmentationPredictor(tiny_model, tta=True)(batch)
    assert out["scores"].dtype == np.uint8 and out["scores"].shape == (2, 32, 32, 3)
    assert not out["scores"][1].any()
    expected = scores(SegmentationPredictor(tiny_model, tta=True), pixels[:1])[0]
    assert np.abs(out["scores"][0].astype(float) - expected * 255).max() <= 1.0


def trained_info(spec: ModelSpec, **augmentation: object) -> ModelInfo:
    """Return model info recording a training run with the given augmentation settings."""
    return ModelInfo(spec=spec, class_names=("background", "object"),
                     training={"trained": True, "config": {"flips": True, **augmentation}})


def test_tta_uses_the_symmetries_the_model_was_trained_on() -> None:
    square = ModelSpec(input_size=(32, 32), channels=1, num_classes=2, depth=2, base_filters=4)
    assert len(tta_symmetries(trained_info(square), "m")) == 8
    no_turns = tta_symmetries(trained_info(square, quarter_turns=False, label_offset_rows=-0.5,
                                           label_offset_cols=-0.25), "m")
    # half a pixel up and a quarter left: upside down (a flip and a half turn, or a half turn) the
    # labels come back up a row; a quarter pixel is nearest to no move
    assert sorted(no_turns) == [(False, 0, (0, 0)), (False, 2, (-1, 0)), (True, 0, (0, 0)), (True, 2, (-1, 0))]
    with pytest.raises(ConfigError, match="model m was trained without flips.*without --tta"):
        tta_symmetries(trained_info(square, flips=False), "m")
    # the warp flips and turns by any angle, and keeps no label offset
    warped = tta_symmetries(trained_info(square, flips=False, warp=True, quarter_turns=False,
                                         label_offset_rows=-1.0), "m")
    assert len(warped) == 8 and all(move == (0, 0) for _, _, move in warped)
    # artifacts of this version record the augmentation as a section of the training config
    grouped = ModelInfo(spec=square, class_names=("background", "object"), training={"trained": True, "config": {
        "augment": {"enabled": True, "flips": True, "quarter_turns": False, "label_offset_rows": -0.5,
                    "label_offset_cols": -0.25, "warp": False}}})
    assert sorted(tta_symmetries(grouped, "m")) == sorted(no_turns)


def test_tta_takes_back_the_labels_offset_the_model_learnt() -> None:
    import tensorflow as tf

    pixels = tf.constant(np.random.default_rng(4).random((2, 24, 24, 1), dtype=np.float32))
    spec = ModelSpec(input_size=(24, 24), channels=1, num_classes=2, depth=2, base_filters=4)

    def offset_model(x: tf.Tensor) -> tf.Tensor:  # draws its labels one row above what it sees, in any image
        return moved(x, -1, 0)

    inner = (slice(None), slice(3, -3), slice(3, -3))  # away from the repeated edges
    expected = moved(pixels, -1, 0).numpy()[inner]
    kept = dihedral_mean(offset_model, pixels, tta_symmetries(trained_info(spec, label_offset_rows=-1.0), "m"))
    np.testing.assert_allclose(kept.numpy()[inner], expected, atol=1e-6)
    ignored = dihedral_mean(offset_model, pixels, tta_symmetries(trained_info(spec), "m"))
    assert np.abs(ignored.numpy()[inner] - expected).max() > 0.1  # without the moves the average blurs the offset


def test_segmenting_a_model_trained_without_flips_with_tta_stops_before_work(tmp_path: Path) -> None:
    spec = ModelSpec(input_size=(32, 32), channels=1, num_classes=2, depth=2, base_filters=4)
    model = tmp_path / "model"
    save_artifact(build_unet(spec), trained_info(spec, flips=False), str(model))
    data, output = tmp_path / "data", tmp_path / "out"
    write_sample_data(SampleDataConfig(output=str(data), num_images=2, num_shards=1, num_classes=2,
                                       min_size=32, max_size=48))
    with pytest.raises(ConfigError, match="trained without flips"):
        run_segmentation(SegmentConfig(input=str(data), model=str(model), output=str(output), tta=True))
    assert not output.exists()


def native_batch(images: list[np.ndarray]) -> dict[str, np.ndarray]:
    """Return a predictor batch of decoded images as the prepare stage gives it (8-bit, no errors)."""
    stored = np.empty(len(images), dtype=object)
    for index, image in enumerate(images):
        stored[index] = image
    count = len(images)
    return {"image": stored, "bits": np.full(count, 8, np.int8), "value_low": np.zeros(count),
            "value_high": np.zeros(count), "error": np.array([""] * count, dtype=object), "seconds": np.zeros(count)}


def test_windows_and_whole_images_give_masks_at_the_images_size(tiny_model: str) -> None:
    from pipeline.segment.tiling import segment_in_windows

    rng = np.random.default_rng(5)
    images = [rng.integers(0, 255, (70, 45, 3), dtype=np.uint8), rng.integers(0, 255, (20, 100, 3), dtype=np.uint8)]
    tiling = Tiling(mode="windows", window=(32, 32), overlap=0.25, blend="gaussian")
    predictor = SegmentationPredictor(tiny_model, tiling=tiling, batch_size=4)
    masks = predictor(native_batch(images))["predicted"]
    model = load_artifact(tiny_model).model
    expected, _ = segment_in_windows(images, lambda x: model(x, training=False).numpy(),
                                     lambda index, window: window.astype(np.float32) / 255, (32, 32), 3, 4)
    assert [m.shape for m in masks] == [(70, 45), (20, 100)]
    assert all(np.array_equal(m, e) for m, e in zip(masks, expected))
    assert predictor.counts["windows"] == 6 + 4 and predictor.counts["batches"] == 3  # windows of both in batches of 4

    larger = SegmentationPredictor(tiny_model, tiling=dataclasses.replace(tiling, window=(48, 48)), batch_size=4)
    assert [m.shape for m in larger(native_batch(images))["predicted"]] == [(70, 45), (20, 100)]
    assert larger.counts["windows"] == 2 + 3  # 48-px windows of the same weights: fewer of them

    whole = SegmentationPredictor(tiny_model, tiling=Tiling(mode="whole", window=(32, 32)))
    whole_masks = whole(native_batch(images))["predicted"]
    assert [m.shape for m in whole_masks] == [(70, 45), (20, 100)] and whole.counts["batches"] == 2
    # an image above whole_max_pixels once padded (72 x 48 here) runs in windows; one at the limit, whole
    capped = SegmentationPredictor(tiny_model, tiling=Tiling(mode="whole", window=(32, 32), whole_max_pixels=2000),
                                   batch_size=4)
    capped_masks = capped(native_batch(images))["predicted"]
    assert np.array_equal(capped_masks[0], masks[0]) and np.array_equal(capped_masks[1], whole_masks[1])
    assert capped.counts == {"batches": 2 + 1, "windows": 6}
    # the same image as one tile-sized input: whole equals the model on it
    square = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
    direct = model(square[np.newaxis].astype(np.float32) / 255, training=False).numpy()[0].argmax(-1)
    assert np.array_equal(whole(native_batch([square]))["predicted"][0], direct)


def test_a_window_the_model_cannot_halve_stops_before_work(tmp_path: Path, tiny_model: str) -> None:
    data = tmp_path / "data"
    write_sample_data(SampleDataConfig(output=str(data), num_images=2, num_shards=1, min_size=32, max_size=40))
    with pytest.raises(ConfigError, match="multiple of 4"):
        run_segmentation(SegmentConfig(input=str(data), model=tiny_model, output=str(tmp_path / "out"),
                                       tiling="windows", window=30))
    assert not (tmp_path / "out").exists()


def test_tta_composes_with_windows(tiny_model: str) -> None:
    """Each window's scores are the mean over the eight symmetries, then blended as without TTA."""
    from pipeline.segment.tiling import segment_in_windows

    image = np.random.default_rng(8).integers(0, 255, (50, 70, 3), dtype=np.uint8)
    tiling = Tiling(mode="windows", window=(32, 32), overlap=0.5, blend="gaussian")
    predictor = SegmentationPredictor(tiny_model, tiling=tiling, tta=True, batch_size=8)
    mask = predictor(native_batch([image]))["predicted"][0]
    model = load_artifact(tiny_model).model

    def mean_over_symmetries(batch: np.ndarray) -> np.ndarray:
        return np.mean([undo(model(np.ascontiguousarray(do(batch)), training=False).numpy())
                        for do, undo in SQUARE_SYMMETRIES], axis=0)

    (expected,), _ = segment_in_windows([image], mean_over_symmetries, lambda i, w: w.astype(np.float32) / 255,
                                        (32, 32), 3, 8, overlap=0.5)
    assert mask.shape == (50, 70) and (mask == expected).mean() > 0.999  # float sums in another order: rare ties


def test_mixed_precision_gives_the_scores_of_float32_within_a_level(tiny_model: str) -> None:
    pixels = np.random.default_rng(5).random((3, 32, 32, 3), dtype=np.float32)

    def call(**options: str) -> np.ndarray:
        batch = {"pixels": pixels.copy(), "error": np.array([""] * 3, dtype=object), "seconds": np.zeros(3)}
        return SegmentationPredictor(tiny_model, **options)(batch)["scores"].astype(int)

    full, mixed = call(), call(precision="mixed_float16")
    assert np.abs(full - mixed).max() <= 2 and (full != mixed).any()  # float16 arithmetic: close, not identical


def test_mixed_precision_for_a_model_it_cannot_rebuild_stops_before_work(tmp_path: Path) -> None:
    import keras

    from pipeline.config import ImportConfig
    from pipeline.model.importing import import_model
    from pipeline.segment.plan import plan_run

    inputs = keras.Input((32, 32, 3))
    keras.Model(inputs, keras.layers.Conv2D(2, 1, activation="softmax")(inputs)).save(tmp_path / "theirs.keras")
    import_model(ImportConfig(keras=str(tmp_path / "theirs.keras"), output=str(tmp_path / "art"), classes="bg,fg"))
    data = tmp_path / "data"
    write_sample_data(SampleDataConfig(output=str(data), num_images=1, num_shards=1, num_classes=2))
    with pytest.raises(ConfigError, match="mixed precision is for the networks segpipe builds"):
        plan_run(SegmentConfig(input=str(data), model=str(tmp_path / "art"), output=str(tmp_path / "out"),
                               precision="mixed_float16"))
    assert not (tmp_path / "out").exists()


def test_objects_from_borders_for_a_model_without_borders_stops_before_work(tmp_path: Path, tiny_model: str) -> None:
    from pipeline.config import ObjectsConfig
    from pipeline.segment.plan import plan_run

    data = tmp_path / "data"
    write_sample_data(SampleDataConfig(output=str(data), num_images=1, num_shards=1))
    with pytest.raises(ConfigError, match="objects.split=borders: model .* was not trained on border targets"):
        plan_run(SegmentConfig(input=str(data), model=tiny_model, output=str(tmp_path / "out"),
                               objects=ObjectsConfig(enabled=True, split="borders")))
    assert not (tmp_path / "out").exists()
