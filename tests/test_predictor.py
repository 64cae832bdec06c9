"""The prediction actor's model call, with and without test-time augmentation (run in-process)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.model import ModelInfo, UNetSpec, build_unet, load_artifact, save_artifact
from pipeline.predictor import SegmentationPredictor

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
    return predictor.forward(np.ascontiguousarray(pixels, dtype=np.float32)).numpy()


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
    spec = UNetSpec(input_size=(32, 64), channels=1, num_classes=2, depth=2, base_filters=4)
    save_artifact(build_unet(spec), ModelInfo(unet=spec, class_names=("background", "object")), str(tmp_path))
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
