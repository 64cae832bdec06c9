"""Sliding windows: placement, the importance map, blending, and batches that span images."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.segment import tiling
from pipeline.segment.tiling import importance_map, segment_in_windows
from pipeline.windows import window_grid, window_starts


@pytest.mark.parametrize("length, tile, overlap", [(64, 64, 0.25), (65, 64, 0.25), (100, 64, 0.25), (1000, 64, 0.25),
                                                   (1000, 64, 0.5), (517, 128, 0.0), (2000, 256, 0.5)])
def test_windows_cover_the_axis_evenly_and_the_last_sits_flush(length: int, tile: int, overlap: float) -> None:
    starts = window_starts(length, tile, overlap)
    assert starts[0] == 0 and starts[-1] == length - tile  # flush with both edges: no padding
    steps = np.diff(starts)
    assert all(step <= math.floor(tile * (1 - overlap)) for step in steps)  # at least the overlap asked
    assert len(steps) == 0 or steps.max() - steps.min() <= 1  # evenly spaced
    # as few as that allows: one window fewer would leave a step longer than the stride
    stride = math.floor(tile * (1 - overlap))
    if len(starts) >= 3:
        assert (length - tile) / (len(starts) - 2) > stride


def test_an_image_the_size_of_the_tile_or_smaller_is_one_window() -> None:
    assert window_grid(64, 64, (64, 64), 0.25) == [(0, 0)]
    assert window_grid(10, 200, (64, 64), 0.5) == [(0, left) for left in window_starts(200, 64, 0.5)]


def test_the_gaussian_map_peaks_at_the_centre_with_sigma_an_eighth_of_the_tile() -> None:
    weights = importance_map((64, 64))
    assert weights.dtype == np.float32 and weights.shape == (64, 64)
    assert weights.max() == pytest.approx(1.0) and weights.min() > 0
    assert np.allclose(weights, weights[::-1]) and np.allclose(weights, weights.T)
    centre = 31.5
    profile = weights[31] / weights[31].max()  # row 31 lies half a pixel above the centre
    expected = np.exp(-0.5 * ((np.arange(64) - centre) / 8.0) ** 2)
    assert np.allclose(profile, expected / expected.max(), atol=1e-5)
    assert np.array_equal(importance_map((32, 48), "constant"), np.ones((32, 48), np.float32))


@pytest.mark.parametrize("blend", ["gaussian", "constant"])
@pytest.mark.parametrize("size", [(150, 97), (20, 30), (64, 64), (301, 64)])
def test_blending_a_constant_score_map_gives_that_constant(blend: str, size: tuple[int, int]) -> None:
    constant = np.array([0.2, 0.5, 0.3], np.float32)
    image = np.zeros((*size, 1), np.uint8)
    (result,), _ = segment_in_windows([image], lambda x: np.broadcast_to(constant, (*x.shape[:3], 3)),
                                      lambda index, window: window.astype(np.float32), (64, 64), 3, 8,
                                      overlap=0.5, blend=blend, keep_scores=True)
    mask, scores = result
    assert mask.shape == size and scores.shape == (*size, 3)
    assert np.abs(scores - constant).max() < 1e-5
    assert (mask == 1).all()


def test_scores_that_follow_the_input_come_back_exactly() -> None:
    """An identity 'model' (scores = input) blended over overlapping windows gives the input back."""
    rng = np.random.default_rng(0)
    image = rng.random((203, 150, 3)).astype(np.float32)
    (result,), _ = segment_in_windows([image], lambda x: x, lambda index, window: window, (64, 64), 3, 5,
                                      keep_scores=True)
    assert np.abs(result[1] - image).max() < 1e-5
    assert np.array_equal(result[0], image.argmax(axis=-1))


def test_sigmoid_scores_are_decided_at_the_threshold() -> None:
    image = np.linspace(0, 1, 100 * 90, dtype=np.float32).reshape(100, 90, 1)
    (mask,), _ = segment_in_windows([image], lambda x: x, lambda index, window: window, (32, 32), 1, 4, threshold=0.3)
    assert np.array_equal(mask, (image[:, :, 0] >= 0.3).astype(np.uint8))


def test_windows_of_several_images_share_a_batch_and_a_large_image_spans_batches() -> None:
    rng = np.random.default_rng(1)
    images = [rng.random((20, 25, 3)).astype(np.float32), None, rng.random((30, 30, 3)).astype(np.float32),
              rng.random((200, 150, 3)).astype(np.float32), rng.random((10, 10, 3)).astype(np.float32)]
    seen: list[int] = []

    def forward(batch: np.ndarray) -> np.ndarray:
        seen.append(len(batch))
        return np.tanh(batch * 3.0 - 1.0)  # any per-pixel function: each result can be checked alone

    masks, counts = segment_in_windows(images, forward, lambda index, window: window, (32, 32), 3, 8)
    windows = 1 + 1 + len(window_grid(200, 150, (32, 32), 0.25)) + 1
    assert counts == {"batches": math.ceil(windows / 8), "windows": windows}
    assert seen[:-1] == [8] * (len(seen) - 1)  # every batch full but the call's last
    assert masks[1] is None
    for image, mask in zip(images, masks):
        if image is not None:
            alone, _ = segment_in_windows([image], forward, lambda index, window: window, (32, 32), 3, 8)
            assert mask.shape == image.shape[:2] and np.array_equal(mask, alone[0])


def test_the_blender_keeps_a_band_not_the_image() -> None:
    blender = tiling.WindowBlender(5000, 300, (64, 64), importance_map((64, 64)), 4)
    assert blender.band.shape == (128, 300, 4) and blender.band_weight.shape == (128, 300)
    with pytest.raises(ValueError, match="row by row"):
        blender.add(100, 0, np.zeros((64, 64, 4), np.float32))
        blender.add(0, 0, np.zeros((64, 64, 4), np.float32))


def shifted_difference(forward, image: np.ndarray, shift: tuple[int, int], blend: str,
                       margin: int = 16) -> tuple[np.ndarray, float]:
    """Return |scores of the image - scores of the image moved by ``shift``| inside ``margin``, and the masks' agreement."""
    moved = image[shift[0]:, shift[1]:]
    (first,), _ = segment_in_windows([image], forward, lambda i, w: w, (32, 32), 3, 16, blend=blend, keep_scores=True)
    (second,), _ = segment_in_windows([moved], forward, lambda i, w: w, (32, 32), 3, 16, blend=blend, keep_scores=True)
    inner = (slice(shift[0] + margin, -margin), slice(shift[1] + margin, -margin))
    difference = np.abs(first[1][inner] - second[1][margin:-margin, margin:-margin])
    return difference, float((first[0][inner] == second[0][margin:-margin, margin:-margin]).mean())


def test_a_translated_image_gives_the_translated_prediction_away_from_the_edges() -> None:
    """Shifting the image shifts the blended prediction, up to what the windows' edges change.

    A model that sees 3 pixels around each pixel gives back exactly the shifted scores but where a
    window's padding reaches, which the Gaussian weighs down to almost nothing; a random U-Net, which
    sees the whole window, changes more at window edges, and less with the Gaussian than with a plain mean.
    """
    import keras

    from pipeline.model import ModelSpec, build_unet

    keras.utils.set_random_seed(3)
    inputs = keras.Input((32, 32, 1))
    hidden = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inputs)
    hidden = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(hidden)
    local = keras.Model(inputs, keras.layers.Conv2D(3, 3, padding="same", activation="softmax")(hidden * 10.0))
    rng = np.random.default_rng(2)
    noise = rng.random((150, 170, 1)).astype(np.float32)
    difference, agreement = shifted_difference(lambda b: local(b, training=False).numpy(), noise, (13, 21), "gaussian")
    assert difference.mean() < 5e-3 and difference.max() < 0.1 and agreement > 0.99

    unet = build_unet(ModelSpec(input_size=(32, 32), channels=1, num_classes=3, depth=2, base_filters=4))
    layer = unet.get_layer("scores")
    kernel, bias = layer.get_weights()
    layer.set_weights([kernel * 20.0, bias])  # sharper scores: an untrained model's are near ties everywhere
    smooth = np.kron(rng.random((40, 40)).astype(np.float32), np.ones((4, 4), np.float32))[:, :, np.newaxis]

    def forward(batch: np.ndarray) -> np.ndarray:
        return unet(batch, training=False).numpy()

    gaussian, agreement = shifted_difference(forward, smooth, (12, 20), "gaussian")
    constant, _ = shifted_difference(forward, smooth, (12, 20), "constant")
    assert gaussian.mean() < 0.03 and agreement > 0.85
    assert gaussian.mean() < 0.8 * constant.mean()
