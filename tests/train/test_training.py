"""Training: augmentation, the loss, the data stage, and Ray Train runs on the session's local Ray."""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline import symmetry
from pipeline.config import (
    AugmentConfig,
    ConfigError,
    LoaderConfig,
    ModelConfig,
    OptimConfig,
    SampleDataConfig,
    SegmentConfig,
    TrainConfig,
    load_config,
)
from pipeline.imaging import SampleError, encode_png, model_input
from pipeline.io.shards import InputError
from pipeline.io.storage import StorageError
from pipeline.model import ModelSpec, load_artifact
from pipeline.model.architectures import check_model_config, check_training_config
from pipeline.sample_data import write_sample_data
from pipeline.train import augment
from pipeline.train.data import DecodedSamples, training_batch
from pipeline.train.run import run_training
from pipeline.train.step import per_example_loss

TINY = ModelConfig(input_size=32, num_classes=3, depth=2, base_filters=4)


def coordinate_ramps(height: int, width: int) -> np.ndarray:
    """Return a float32 (h, w, 2) image whose channels are each pixel's row and column."""
    rows, cols = np.meshgrid(np.arange(height, dtype=np.float32), np.arange(width, dtype=np.float32), indexing="ij")
    return np.stack([rows, cols], axis=-1)


def test_mirror_folds_coordinates_back_into_the_image() -> None:
    # size 4: ... 2 1 | 0 1 2 3 | 2 1 0 ...
    folded = augment.mirror(np.array([-2.0, -1.0, 0.0, 3.0, 4.0, 5.0, 7.0, 2.5]), 4)
    assert folded.tolist() == [2.0, 1.0, 0.0, 3.0, 2.0, 1.0, 1.0, 2.5]


def test_flips_and_turns_move_image_and_mask_together() -> None:
    rng = np.random.default_rng(0)
    mask = rng.integers(0, 3, (32, 32), dtype=np.uint8)
    image = np.repeat(mask[:, :, np.newaxis].astype(np.float32) / 10, 3, axis=2)  # the image encodes its mask
    seen = set()
    for _ in range(60):
        tile_image, tile_mask = augment.flip_and_rotate(image, mask, rng)
        assert np.array_equal(np.rint(tile_image[:, :, 0] * 10).astype(np.uint8), tile_mask)
        seen.add(tile_mask.tobytes())
    assert len(seen) == 8  # the 8 symmetries of a square, nothing resampled
    wide = rng.integers(0, 3, (16, 24), dtype=np.uint8)
    assert all(augment.flip_and_rotate(wide[:, :, np.newaxis], wide, rng)[1].shape == (16, 24) for _ in range(10))


def labelled_cross() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return ``(feature, mask, image)``: an off-centre cross (every flip and turn gives another
    picture), its labels drawn a row above it, and the image showing it."""
    feature = np.zeros((32, 32), np.uint8)
    feature[8:20, 12:14] = 1
    feature[15, 5:25] = 1
    return feature, symmetry.move(feature, -1, 0), feature[:, :, np.newaxis].astype(np.float32)


def test_flips_and_turns_keep_the_labels_offset() -> None:
    rng = np.random.default_rng(7)
    _, mask, image = labelled_cross()
    seen = set()
    for _ in range(60):
        tile_image, tile_mask = augment.flip_and_rotate(image, mask, rng, label_offset=(-1.0, 0.0))
        assert np.array_equal(tile_mask, symmetry.move(tile_image[:, :, 0].astype(np.uint8), -1, 0))  # still a row above
        seen.add(tile_mask.tobytes())
    assert len(seen) == 8
    # a fractional offset comes back to the nearest whole pixel: half a pixel up, flipped upside down
    # (a left-right flip and a half turn), is half a pixel down, one row from where it was drawn
    assert symmetry.offset_correction((-0.5, -0.25), True, 2) == (-1, 0)
    assert symmetry.offset_correction((-0.5, -0.25), True, 0) == (0, 0)  # a quarter pixel is nearest to no move


def test_flips_without_quarter_turns_keep_rows_rows_and_the_labels_offset() -> None:
    rng = np.random.default_rng(3)
    feature, mask, image = labelled_cross()
    symmetries = {np.rot90(flipped, turns).tobytes() for flipped in (feature, feature[:, ::-1]) for turns in (0, 2)}
    seen = set()
    for _ in range(40):
        tile_image, tile_mask = augment.training_pair(image, mask, (32, 32), rng,
                                                      AugmentConfig(label_offset_rows=-1.0, quarter_turns=False))
        feature_seen = np.rint(tile_image[:, :, 0] > 0.5).astype(np.uint8)  # the jitter keeps 0 and 1 apart
        assert feature_seen.tobytes() in symmetries  # no quarter turn: the long arm stays upright
        assert np.array_equal(tile_mask, symmetry.move(feature_seen, -1, 0))  # the labels still a row above
        seen.add(tile_mask.tobytes())
    assert len(seen) == 4  # identity, left-right flip, up-down flip, half turn


def test_warp_moves_image_and_mask_together() -> None:
    rng = np.random.default_rng(0)
    mask = rng.integers(0, 3, (48, 40), dtype=np.uint8)
    image = coordinate_ramps(48, 40)  # bilinear sampling of a ramp is exact: the image says where each pixel came from
    seen = set()
    for _ in range(20):
        warped_image, warped_mask = augment.random_warp(image, mask, rng)
        assert warped_image.shape == (48, 40, 2) and warped_mask.shape == (48, 40) and warped_mask.dtype == np.uint8
        source_rows, source_cols = (np.rint(warped_image[:, :, k]).astype(int) for k in (0, 1))
        clear = np.abs(np.mod(warped_image, 1.0) - 0.5).min(axis=-1) > 0.01  # not a rounding tie in float32
        assert clear.mean() > 0.9
        assert np.array_equal(warped_mask[clear], mask[source_rows, source_cols][clear])
        seen.add(warped_mask.tobytes())
    assert len(seen) == 20  # every warp differs


def test_warp_keeps_about_the_inference_scale() -> None:
    rng = np.random.default_rng(1)
    image = coordinate_ramps(128, 128)
    for _ in range(10):
        warped, _ = augment.random_warp(image, np.zeros((128, 128), np.uint8), rng)
        # local scale: how far the source moves per output pixel, along rows (mirror folds give a few outliers)
        step = np.hypot(*np.diff(warped, axis=0).transpose(2, 0, 1))
        assert 0.8 < float(np.median(step)) < 1.25


def test_crop_cuts_image_and_mask_to_the_same_window() -> None:
    rng = np.random.default_rng(4)
    image = coordinate_ramps(100, 80)
    mask = (np.arange(80)[np.newaxis, :] >= np.arange(100)[:, np.newaxis] * 0.8).astype(np.uint8)  # 1 right of the diagonal
    windows = set()
    for _ in range(20):
        tile_image, tile_mask = augment.random_crop(image, mask, (40, 40), rng)
        assert tile_image.shape == (40, 40, 2) and tile_mask.shape == (40, 40)
        top, left = tile_image[0, 0]
        bottom, right = tile_image[-1, -1]
        height, width = bottom - top, right - left  # the window's extent, from the resized ramps
        assert 0.8 * 100 - 4 <= height <= 100 and 0.8 * 80 - 4 <= width <= 80
        windows.add((round(float(top)), round(float(left)), round(float(height)), round(float(width))))
        # the mask is the source mask at the source pixel each tile pixel came from (away from the diagonal)
        rows, cols = tile_image[..., 0], tile_image[..., 1]
        expected = (cols >= rows * 0.8).astype(np.uint8)
        clear = np.abs(cols - rows * 0.8) > 2.0
        assert np.array_equal(tile_mask[clear], expected[clear])
    assert len(windows) > 15  # windows differ in place and size


def test_patch_cuts_image_and_mask_to_the_same_window_at_their_scale() -> None:
    rng = np.random.default_rng(5)
    image = coordinate_ramps(64, 48)
    mask = (np.arange(48)[np.newaxis, :] >= np.arange(64)[:, np.newaxis] * 0.75).astype(np.uint8)
    corners = set()
    for _ in range(20):
        patch_image, patch_mask = augment.random_patch(image, mask, (16, 24), rng)
        assert patch_image.shape == (16, 24, 2) and patch_mask.shape == (16, 24)
        top, left = (int(v) for v in patch_image[0, 0])
        assert np.array_equal(patch_image, image[top:top + 16, left:left + 24])  # no resampling
        assert np.array_equal(patch_mask, mask[top:top + 16, left:left + 24])
        corners.add((top, left))
    assert len(corners) > 15
    with pytest.raises(ValueError, match="larger than the 64x48 tile"):
        augment.random_patch(image, mask, (16, 64), rng)


@pytest.mark.parametrize("case", ["jpeg-larger-than-the-tile", "png-rgb-to-grey-minmax", "png-16-bit", "png-smaller"])
def test_the_training_data_path_gives_the_model_input_segmentation_gives(case: str) -> None:
    """One image through the training data stage without augmentation and through segmentation's
    prepare stage and predictor: the same float32 model input, bit for bit."""
    from pipeline.model import ModelInfo, ModelSpec
    from pipeline.segment.prepare import prepare_batch, tile_pixels
    from pipeline.train.data import training_batch

    rng = np.random.default_rng(4)
    smooth = np.linspace(0, 200, 300 * 260).reshape(300, 260)
    images = {
        "jpeg-larger-than-the-tile": (np.dstack([smooth, smooth[::-1], 255 - smooth]).astype(np.uint8), "JPEG",
                                      3, {"mode": "scale"}),
        "png-rgb-to-grey-minmax": (rng.integers(20, 200, (70, 50, 3), dtype=np.uint8), "PNG", 1, {"mode": "minmax"}),
        "png-16-bit": ((smooth[:90, :75] * 300).astype(np.uint16), "PNG", 3, {"mode": "scale", "mean": 0.5}),
        "png-smaller": (rng.integers(0, 255, (20, 24, 3), dtype=np.uint8), "PNG", 3, {"mode": "scale"}),
    }
    array, fmt, channels, normalization = images[case]
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    spec = ModelSpec(input_size=(32, 32), channels=channels, num_classes=2, depth=2, base_filters=4)
    info = ModelInfo(spec=spec, class_names=("background", "object"), normalization=normalization)
    mask = encode_png(((array[:, :, 0] if array.ndim == 3 else array) > 100).astype(np.uint8))
    batch = {name: np.array(values, dtype=object) for name, values in {
        "key": ["a"], "source": ["s"], "shard": ["s"], "image": [buffer.getvalue()], "mask": [mask],
        "instances": [b""], "error": [""], "error_kind": [""], "truth_error": [""], "truth_error_kind": [""]}.items()}
    batch["shard_rows"] = np.ones(1, np.int64)
    trained = training_batch(dict(batch), spec, normalization, None)
    segmented = tile_pixels(prepare_batch(dict(batch), info), np.array([True]), normalization)
    assert trained["weights"].tolist() == [1.0]
    assert trained["pixels"].dtype == segmented.dtype == np.float32
    assert np.array_equal(trained["pixels"], segmented)


def test_training_pair_without_augmentation_is_the_inference_resize() -> None:
    image = np.random.default_rng(2).random((60, 80, 1), dtype=np.float32)
    mask = np.zeros((60, 80), np.uint8)
    mask[:, 40:] = 1
    tile_image, tile_mask = augment.training_pair(image, mask, (32, 32), None)
    assert np.array_equal(tile_image, model_input(image, (32, 32), 1, {"mode": "scale"}))  # already float: scaled by 1
    assert tile_mask[:, :15].max() == 0 and tile_mask[:, 17:].min() == 1
    warped_image, warped_mask = augment.training_pair(image, mask, (32, 32), np.random.default_rng(3))
    assert warped_image.shape == (32, 32, 1) and set(np.unique(warped_mask).tolist()) <= {0, 1}
    warped_image, warped_mask = augment.training_pair(image, mask, (32, 32), np.random.default_rng(3), AugmentConfig(warp=True))
    assert warped_image.shape == (32, 32, 1) and set(np.unique(warped_mask).tolist()) == {0, 1}
    for warp in (False, True):
        cropped_image, cropped_mask = augment.training_pair(image, mask, (32, 32), np.random.default_rng(3),
                                                            AugmentConfig(warp=warp, crop=True))
        assert cropped_image.shape == (32, 32, 1) and cropped_mask.shape == (32, 32)


def test_training_pair_without_flips_keeps_the_geometry_and_jitters_the_intensity() -> None:
    rng = np.random.default_rng(6)
    mask = rng.integers(0, 2, (32, 32), dtype=np.uint8)  # no symmetry: any flip or turn would change it
    image = mask[:, :, np.newaxis].astype(np.float32) * 0.5 + 0.25
    jittered = set()
    for _ in range(10):
        tile_image, tile_mask = augment.training_pair(image, mask, (32, 32), rng, AugmentConfig(flips=False))
        assert np.array_equal(tile_mask, mask)
        assert (tile_image[mask == 1].min() > tile_image[mask == 0].max())  # still the same image, pixel for pixel
        jittered.add(round(float(tile_image.mean()), 4))
    assert len(jittered) == 10
    flipped = {augment.training_pair(image, mask, (32, 32), rng)[1].tobytes() for _ in range(20)}
    assert len(flipped) > 1  # the default still flips and turns


def test_intensity_jitter_leaves_the_mask_alone_and_stays_bounded() -> None:
    rng = np.random.default_rng(2)
    image = np.full((8, 8, 3), 0.5, np.float32)
    jittered = augment.jitter_intensity(image, rng)
    assert abs(float(jittered.mean()) - 0.5) <= augment.BRIGHTNESS + 1e-6


def test_loss_is_low_for_right_and_high_for_wrong_predictions() -> None:
    spec = ModelSpec(input_size=(4, 4), num_classes=2, depth=1, base_filters=2)
    labels = np.zeros((1, 4, 4), np.uint8)
    labels[0, :2] = 1
    right = np.stack([1.0 - labels, labels], axis=-1).astype(np.float32)
    wrong = right[..., ::-1].copy()
    for kind in ("ce", "dice", "ce+dice"):
        low = float(per_example_loss(labels, right, spec, kind)[0])
        high = float(per_example_loss(labels, wrong, spec, kind)[0])
        assert low < 0.05 < 0.5 < high, (kind, low, high)


def test_a_border_model_learns_border_targets_from_the_instance_labels_at_native_and_tile_scale() -> None:
    spec = ModelSpec(input_size=(16, 16), channels=1, num_classes=2, depth=1, base_filters=2, target="borders")
    instances = np.zeros((16, 16), np.uint16)
    instances[4:12, 2:8], instances[4:12, 8:14] = 1, 2  # two touching boxes
    mask = (instances > 0).astype(np.uint8)
    batch = {"key": np.array(["pair", "no-instances"], dtype=object),
             "image": np.array([encode_png(mask * 200)] * 2, dtype=object),
             "mask": np.array([encode_png(mask)] * 2, dtype=object),
             "instances": np.array([encode_png(instances), b""], dtype=object),
             "error": np.array(["", ""], dtype=object)}
    for native in (False, True):
        out = training_batch(batch, spec, {"mode": "scale"}, None, native=native, border_width=1)
        pair, alone = out["labels"][0], out["labels"][1]
        assert (pair == 2).sum() == 16 and (pair[4:12, 7:9] == 2).all()  # a pixel either side of the contact
        assert ((pair > 0) == (mask > 0)).all()  # the border is part of the objects, nothing more
        assert not (alone == 2).any() and (alone == mask).all()  # no instance labels: one component, no border
    # the loss sees three classes: a border pixel predicted as nucleus interior costs
    right = np.eye(3, dtype=np.float32)[out["labels"][:1].astype(int)]
    wrong = np.eye(3, dtype=np.float32)[np.minimum(out["labels"][:1], 1).astype(int)]
    assert float(per_example_loss(out["labels"][:1], right, spec, "ce")[0]) < 0.01
    assert float(per_example_loss(out["labels"][:1], wrong, spec, "ce")[0]) > 0.5


def test_bad_samples_get_weight_zero() -> None:
    spec = ModelSpec(input_size=(16, 16), num_classes=2, depth=1, base_filters=2)
    image = encode_png(np.zeros((20, 20, 3), np.uint8))
    good_mask = encode_png(np.zeros((20, 20), np.uint8))
    batch = {
        "key": np.array(["good", "no-mask", "bad-class", "broken", "read-error"], dtype=object),
        "image": np.array([image, image, image, b"junk", b""], dtype=object),
        "mask": np.array([good_mask, b"", encode_png(np.full((20, 20), 4, np.uint8)), good_mask, b""], dtype=object),
        "error": np.array(["", "", "", "", "shard unreadable"], dtype=object),
    }
    out = training_batch(batch, spec, {"mode": "scale"}, AugmentConfig())
    assert out["weights"].tolist() == [1.0, 0.0, 0.0, 0.0, 0.0]
    assert out["skip_reason"].tolist() == ["", "no_mask", "mask_classes", "corrupt_image", "unreadable"]
    native = training_batch(batch, spec, {"mode": "scale"}, None, native=True)  # one zero-weight row per skipped sample
    assert native["weights"].tolist() == [1.0] * 4 + [0.0] * 4  # the good sample's 4 windows of 16 px
    assert native["skip_reason"].tolist()[4:] == ["no_mask", "mask_classes", "corrupt_image", "unreadable"]
    assert out["pixels"].shape == (5, 16, 16, 3) and out["labels"].shape == (5, 16, 16)
    patches = training_batch(batch, spec, {"mode": "scale"}, None, patch=8)
    assert patches["weights"].tolist() == [1.0, 0.0, 0.0, 0.0, 0.0]
    assert patches["pixels"].shape == (5, 8, 8, 3) and patches["labels"].shape == (5, 8, 8)


def test_decoded_samples_are_kept_by_content_within_their_budget() -> None:
    spec = ModelSpec(input_size=(16, 16), num_classes=2, depth=1, base_filters=2)
    rng = np.random.default_rng(3)
    pixels = [rng.integers(0, 256, (20, 20, 3), dtype=np.uint8) for _ in range(3)]
    images = [encode_png(p) for p in pixels]
    mask = encode_png((pixels[0][:, :, 0] > 127).astype(np.uint8))
    pair_bytes = 20 * 20 * 3 * 4 + 20 * 20  # float32 image + uint8 mask
    cache = DecodedSamples()
    first = cache.get(images[0], mask, spec, {"mode": "scale"}, budget_bytes=2 * pair_bytes)
    np.testing.assert_array_equal(first[0], pixels[0].astype(np.float32) / 255.0)
    assert not first[0].flags.writeable and not first[1].flags.writeable
    assert cache.get(images[0], mask, spec, {"mode": "scale"}, 2 * pair_bytes)[0] is first[0]  # kept
    assert cache.get(images[0], mask, spec, {"mode": "minmax"}, 2 * pair_bytes)[0] is not first[0]  # other settings
    cache.get(images[1], mask, spec, {"mode": "scale"}, 2 * pair_bytes)
    cache.get(images[2], mask, spec, {"mode": "scale"}, 2 * pair_bytes)  # over the budget: the oldest go
    assert cache.bytes <= 2 * pair_bytes and len(cache.entries) == 2
    assert cache.get(images[0], mask, spec, {"mode": "scale"}, 2 * pair_bytes)[0] is not first[0]
    kept = cache.get(images[0], mask, spec, {"mode": "scale"}, 2 * pair_bytes)
    assert cache.get(images[0], mask, spec, {"mode": "scale"}, budget_bytes=0)[0] is not kept[0]  # 0: always decode
    none_kept = DecodedSamples()
    none_kept.get(images[0], mask, spec, {"mode": "scale"}, budget_bytes=0)
    assert not none_kept.entries and none_kept.bytes == 0
    with pytest.raises(SampleError):  # an unusable sample is refused every time, never kept
        cache.get(images[0], encode_png(np.full((20, 20), 4, np.uint8)), spec, {"mode": "scale"}, 2 * pair_bytes)


def test_the_data_stage_gives_the_same_batch_with_and_without_kept_samples() -> None:
    spec = ModelSpec(input_size=(16, 16), num_classes=2, depth=1, base_filters=2)
    rng = np.random.default_rng(4)
    pixels = [rng.integers(0, 256, (16, 16, 3), dtype=np.uint8) for _ in range(2)]
    batch = {
        "key": np.array(["a", "b", "a-again"], dtype=object),
        "image": np.array([encode_png(pixels[0]), encode_png(pixels[1]), encode_png(pixels[0])], dtype=object),
        "mask": np.array([encode_png((p[:, :, 1] > 100).astype(np.uint8)) for p in (*pixels, pixels[0])], dtype=object),
        "error": np.array(["", "", ""], dtype=object),
    }
    plain = training_batch(batch, spec, {"mode": "scale"}, None)
    for _ in range(2):  # the second time every sample comes from the cache
        kept = training_batch(batch, spec, {"mode": "scale"}, None, cache_mb=1)
        for name in ("pixels", "labels", "weights"):
            np.testing.assert_array_equal(kept[name], plain[name])
    augmented = training_batch(batch, spec, {"mode": "scale"}, AugmentConfig(), cache_mb=1)
    assert augmented["weights"].tolist() == [1.0, 1.0, 1.0]  # augmentation works on copies of kept arrays


def test_config_checks() -> None:
    with pytest.raises(ConfigError, match="multiple of num_workers"):
        TrainConfig(data="d", output="o", num_workers=2, optim=OptimConfig(batch_size=3))
    with pytest.raises(ConfigError, match="multiple of 2\\*\\*model.depth"):
        check_model_config(ModelConfig(input_size=30, depth=2))
    for patch in (10, 64):
        with pytest.raises(ConfigError, match=f"patch_size={patch}: a multiple of 4 .what the model.s input sides must be multiples of. up to input_size=32"):
            check_training_config(TrainConfig(data="d", output="o", loader=LoaderConfig(patch_size=patch), model=TINY))
    for momentum in (-0.1, 1.0):
        with pytest.raises(ConfigError, match=f"ema={momentum}: a momentum in \\[0, 1\\)"):
            OptimConfig(ema=momentum)
    with pytest.raises(ConfigError, match="decoded_cache_mb=-1: MB of decoded samples"):
        LoaderConfig(decoded_cache_mb=-1)
    cfg = load_config(TrainConfig, None, ["data=d", "output=o", "unet.num_classes=2", "unet.class_names=bg, cell"])
    assert cfg.model.names() == ("bg", "cell")


@pytest.fixture(scope="module")
def labelled(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("labelled")
    common = {"num_classes": 3, "min_size": 32, "max_size": 48}
    train = write_sample_data(SampleDataConfig(output=str(root / "train"), num_images=24, num_shards=2, seed=1, **common))
    val = write_sample_data(SampleDataConfig(output=str(root / "val"), num_images=8, num_shards=1, seed=2, **common))
    assert train and val
    return {"train": str(root / "train"), "val": str(root / "val")}


FIXED_RECIPE = {  # what these tests train with, instead of the plan's choices for the data (pipeline.train.plan)
    "scale": "resize", "steps_per_epoch": 0, "normalization": "scale", "val_fraction": 0.0, "invert": False,
    "lr_schedule": "constant", "loss": "ce+dice",
    # float32 on every machine: these tests compare a run's validation with its float32 artifact's to 1e-6
    # (bfloat16 training is tested on its own, and the plan's choice in test_plan and the demo)
    "precision": "float32"}


def tiny_train_config(labelled: dict[str, str], output: Path, **overrides: object) -> TrainConfig:
    values = {"data": labelled["train"], "val_data": labelled["val"], "output": str(output), "num_workers": 2,
              "cpus_per_worker": 0.5, "epochs": 1, "batch_size": 8, "unet": TINY, **FIXED_RECIPE}
    values.update(overrides)
    return load_config(TrainConfig, options=values)  # flat keys such as batch_size are TrainConfig.ALIASES


@pytest.mark.slow
@pytest.mark.usefixtures("ray_cluster")
def test_training_that_skips_every_sample_publishes_no_model(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_sample_data(SampleDataConfig(output=str(data), num_images=6, num_shards=1, num_classes=2, min_size=32,
                                       max_size=40, layout="folder"))
    for path in (data / "masks").glob("*.png"):  # an ignore label (255) beside the classes: not a binary mask
        mask = np.array(Image.open(path))
        mask[0, 0] = 255
        path.write_bytes(encode_png(mask))
    cfg = load_config(TrainConfig, options={"data": str(data), "output": str(tmp_path / "model"), "num_workers": 1,
                                            "cpus_per_worker": 1.0, "epochs": 1, "batch_size": 2,
                                            "unet": dataclasses.replace(TINY, num_classes=2), **FIXED_RECIPE})
    with pytest.raises(InputError, match=r"no sample could be trained on \(6 of 6 read were skipped; most common: "
                                         r"mask_classes \(6\)\), so no model was written"):
        run_training(cfg)
    assert not (tmp_path / "model" / "model.json").exists() and not (tmp_path / "model" / "model.keras").exists()


@pytest.mark.slow
@pytest.mark.usefixtures("ray_cluster")
def test_two_workers_train_checkpoint_resume_and_segment(labelled: dict[str, str], tmp_path: Path) -> None:
    output = tmp_path / "model"
    first = run_training(tiny_train_config(labelled, output))
    assert first.epochs == 1 and [h["epoch"] for h in first.history] == [0]
    assert first.history[0]["images"] == 24 and first.history[0]["steps"] == 3  # 12 rows per worker, batch 4 each
    assert list((output / "checkpoints").glob("checkpoint_*"))

    resumed = run_training(tiny_train_config(labelled, output, epochs=2))
    assert [h["epoch"] for h in resumed.history] == [0, 1]  # epoch 0 came from the checkpoint, not re-run
    assert resumed.history[0] == first.history[0]

    info = json.loads((output / "model.json").read_text())
    assert info["training"]["trained"] is True and info["training"]["epochs"] == 2
    assert info["training"]["data_url"] == labelled["train"]
    assert "val_mean_dice" in info["training"]["best_metrics"]
    assert load_artifact(str(output)).info.spec.input_size == (32, 32)

    from pipeline.segment.run import run_segmentation

    summary = run_segmentation(SegmentConfig(input=labelled["val"], model=str(output), output=str(tmp_path / "seg")))
    assert summary.images == 8 and summary.errors == 0 and summary.model_trained


@pytest.mark.slow
@pytest.mark.usefixtures("ray_cluster")
def test_loss_goes_down_on_a_learnable_set(labelled: dict[str, str], tmp_path: Path) -> None:
    cfg = tiny_train_config(labelled, tmp_path / "m", num_workers=1, cpus_per_worker=1.0, epochs=3, passes_per_epoch=2,
                            batch_size=4, learning_rate=0.01, augment=False, val_data=None)
    history = run_training(cfg).history
    assert [h["images"] for h in history] == [48, 48, 48]  # two passes over the 24 images per epoch
    assert history[-1]["loss"] < 0.8 * history[0]["loss"], [h["loss"] for h in history]


@pytest.mark.slow
@pytest.mark.usefixtures("ray_cluster")
def test_training_in_bfloat16_learns_and_writes_a_float32_artifact(labelled: dict[str, str], tmp_path: Path) -> None:
    output = tmp_path / "m"
    cfg = tiny_train_config(labelled, output, num_workers=1, cpus_per_worker=1.0, epochs=3, passes_per_epoch=2,
                            batch_size=4, learning_rate=0.01, augment=False, xla=False, precision="mixed_bfloat16")
    history = run_training(cfg).history
    assert history[-1]["loss"] < 0.8 * history[0]["loss"], [h["loss"] for h in history]
    config = json.loads((output / "model.json").read_text())["training"]["config"]
    assert config["optim"]["precision"] == "mixed_bfloat16"
    model = load_artifact(str(output)).model
    assert {layer.dtype_policy.name for layer in model.layers} == {"float32"}  # segmentation chooses its own
    resumed = run_training(dataclasses.replace(cfg, epochs=4)).history  # from a bfloat16 checkpoint
    assert [h["epoch"] for h in resumed] == [0, 1, 2, 3] and resumed[2] == history[2]


@pytest.mark.slow
@pytest.mark.usefixtures("ray_cluster")
def test_training_on_patches_validates_and_saves_the_whole_tile_model(labelled: dict[str, str], tmp_path: Path) -> None:
    output = tmp_path / "m"
    cfg = tiny_train_config(labelled, output, num_workers=1, cpus_per_worker=1.0, epochs=3, passes_per_epoch=2,
                            batch_size=4, learning_rate=0.01, augment=False, patch_size=16)
    history = run_training(cfg).history
    assert [h["images"] for h in history] == [48, 48, 48]
    assert history[-1]["loss"] < 0.8 * history[0]["loss"], [h["loss"] for h in history]
    assert all(h["val_images"] == 8 for h in history)  # validated at the 32 px tile, not on patches
    dice = [h["val_mean_dice"] for h in history]
    # at lr 0.01 on 24 images, with patches drawn unseeded, one epoch's validation can swing back (a class
    # lost for an epoch): the run as a whole must improve on epoch 0
    assert max(dice[1:]) > dice[0] + 0.02, dice
    info = json.loads((output / "model.json").read_text())
    assert info["training"]["best_metrics"]["val_mean_dice"] == pytest.approx(max(dice))  # the best epoch is saved
    assert load_artifact(str(output)).info.spec.input_size == (32, 32)
    resumed = run_training(dataclasses.replace(cfg, epochs=4)).history
    assert [h["epoch"] for h in resumed] == [0, 1, 2, 3] and resumed[2] == history[2]


@pytest.mark.slow
@pytest.mark.usefixtures("ray_cluster")
def test_weight_average_is_validated_and_saved_while_training_goes_on_from_the_weights(
        labelled: dict[str, str], tmp_path: Path) -> None:
    import keras

    from pipeline.train.data import training_dataset
    from pipeline.train.step import validation_metrics

    output = tmp_path / "m"
    cfg = tiny_train_config(labelled, output, epochs=2, learning_rate=0.01, augment=False, ema=0.9)  # 2 workers
    history = run_training(cfg).history
    artifact = load_artifact(str(output))
    best = max(history, key=lambda h: h["val_mean_dice"])
    checkpoints = {json.loads((f / "state.json").read_text())["epoch"] - 1: f
                   for f in (output / "checkpoints").glob("checkpoint_*") if f.is_dir()}
    trained = keras.saving.load_model(str(checkpoints[best["epoch"]] / "model.keras"), compile=False)
    averaged = artifact.model.get_weights()  # the same epoch's average lags its weights
    assert any(not np.allclose(a, t) for a, t in zip(averaged, trained.get_weights()))
    val = training_dataset(labelled["val"], cfg, artifact.info.spec, augmented=False)
    again = validation_metrics(artifact.model, val, artifact.info.spec, 0.5)
    assert again["val_mean_dice"] == pytest.approx(best["val_mean_dice"], abs=1e-6)  # the validated weights were saved
    assert again["val_pixel_error"] == pytest.approx(best["val_pixel_error"], abs=1e-6)
    resumed = run_training(dataclasses.replace(cfg, epochs=3)).history
    assert [h["epoch"] for h in resumed] == [0, 1, 2] and resumed[1] == history[1]


@pytest.mark.usefixtures("ray_cluster")
def test_bad_training_setups_stop_before_training(labelled: dict[str, str], tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        run_training(tiny_train_config(labelled, tmp_path / "a", data=str(tmp_path / "missing")))
    with pytest.raises(ConfigError, match="does not fit the cluster"):
        run_training(tiny_train_config(labelled, tmp_path / "b", num_workers=8, batch_size=8))
    with pytest.raises(ConfigError, match="needs 2 GPUs"):
        run_training(tiny_train_config(labelled, tmp_path / "c", use_gpu=True))
    with pytest.raises(StorageError, match="lies inside the training data"):
        run_training(tiny_train_config(labelled, Path(labelled["train"]) / "model"))


@pytest.mark.slow
@pytest.mark.usefixtures("ray_cluster")
def test_train_from_and_to_s3_then_segment(s3_bucket: str) -> None:
    import s3fs

    data, output = f"{s3_bucket}/labelled", f"{s3_bucket}/models/tiny"
    write_sample_data(SampleDataConfig(output=data, num_images=8, num_shards=2, num_classes=3, min_size=32, max_size=40))
    cfg = load_config(TrainConfig, options={"data": data, "val_data": data, "output": output, "num_workers": 1,
                                            "cpus_per_worker": 1.0, "epochs": 1, "batch_size": 4, "unet": TINY,
                                            **FIXED_RECIPE})
    summary = run_training(cfg)
    fs = s3fs.S3FileSystem()
    assert summary.epochs == 1 and fs.exists(f"{output}/model.keras") and fs.exists(f"{output}/model.json")
    assert fs.find(f"{output}/checkpoints")  # checkpoints went to object storage too

    from pipeline.segment.run import run_segmentation

    result = run_segmentation(SegmentConfig(input=data, model=output, output=f"{s3_bucket}/seg"))
    assert result.images == 8 and result.errors == 0


def test_cosine_schedule_decays_from_the_set_rate_towards_zero() -> None:
    from pipeline.train.schedule import Schedule

    by_epoch = Schedule(0.01, "cosine", 10, 0.0)
    rates = [by_epoch.rate(epoch, 0.0) for epoch in range(10)]
    assert rates[0] == pytest.approx(0.01) and rates[5] == pytest.approx(0.005)
    assert all(a > b for a, b in zip(rates, rates[1:])) and rates[-1] > 0
    assert Schedule(0.01, "constant", 10, 0.0).rate(7, 0.0) == 0.01
    budget = Schedule(0.01, "cosine", 0, 600.0)  # under a budget the clock sets the rate, and the end
    assert budget.rate(3, 300.0) == pytest.approx(0.005) and budget.rate(0, 600.0) == pytest.approx(0.0)
    assert not budget.over(599.0) and budget.over(600.0) and budget.more_epochs(10**6)
    both = Schedule(0.01, "cosine", 4, 600.0)  # whichever ends first
    assert both.progress(2, 60.0) == 0.5 and both.progress(1, 450.0) == 0.75 and not both.more_epochs(4)


def test_native_windows_come_in_proportion_to_area_at_the_images_scale() -> None:
    rng = np.random.default_rng(0)
    tile = (32, 32)
    image = coordinate_ramps(96, 160)  # 15 tiles of area
    mask = np.zeros((96, 160), np.uint8)
    counts = [len(augment.native_windows(image, mask, tile, rng, AugmentConfig(enabled=True, flips=False)))
              for _ in range(200)]
    assert set(counts) == {15}
    small = [len(augment.native_windows(image[:16, :16], mask[:16, :16], tile, rng, AugmentConfig(flips=False)))
             for _ in range(2000)]
    assert set(small) <= {0, 1} and 0.2 < np.mean(small) < 0.3  # a quarter of a tile's area: a window a quarter of the time
    windows = augment.native_windows(image, mask, tile, rng, AugmentConfig(flips=False))
    for cut, _ in windows:  # a window is a piece of the image at its own scale: the ramps step by one pixel
        assert cut.shape == (32, 32, 2)
        assert np.allclose(np.diff(cut[:, :, 0], axis=0), 1.0, atol=0.3)  # (intensity jitter scales by 0.8-1.2)


def test_native_windows_of_a_small_image_pad_it_and_leave_the_padding_unlabelled() -> None:
    image = np.random.default_rng(1).random((20, 12, 3)).astype(np.float32)
    mask = np.ones((20, 12), np.uint8)
    (cut, labels), = augment.native_windows(image, mask, (32, 32), None)  # validation: the windows that tile it
    assert cut.shape == (32, 32, 3) and np.array_equal(cut[:20, :12], image)
    assert (labels[:20, :12] == 1).all() and (labels[20:] == augment.IGNORE).all() and (labels[:, 12:] == augment.IGNORE).all()
    tiles = augment.native_windows(coordinate_ramps(70, 40), np.zeros((70, 40), np.uint8), (32, 32), None)
    assert [(int(c[0, 0, 0]), int(c[0, 0, 1])) for c, _ in tiles] == [(0, 0), (0, 8), (19, 0), (19, 8), (38, 0), (38, 8)]


def test_the_loss_leaves_unlabelled_pixels_out() -> None:
    spec = ModelSpec(input_size=(4, 4), num_classes=2, depth=1, base_filters=2)
    labels = np.zeros((1, 4, 4), np.uint8)
    labels[0, :2] = 1
    right = np.stack([1.0 - labels, labels], axis=-1).astype(np.float32)
    padded = labels.copy()
    padded[0, :, 2:] = augment.IGNORE
    wrong_in_padding = right.copy()
    wrong_in_padding[0, :, 2:] = right[0, :, 2:, ::-1]
    for kind in ("ce", "dice", "ce+dice"):
        loss = float(per_example_loss(padded, wrong_in_padding, spec, kind)[0])
        assert loss < 0.05, (kind, loss)
        assert float(per_example_loss(labels, wrong_in_padding, spec, kind)[0]) > 0.3


def test_native_scale_rejects_patches_and_crops() -> None:
    with pytest.raises(ConfigError, match="patch_size"):
        TrainConfig(data="d", output="o", scale="native", loader=LoaderConfig(patch_size=16), model=TINY)
    with pytest.raises(ConfigError, match="crop"):
        TrainConfig(data="d", output="o", scale="native", augment=AugmentConfig(crop=True), model=TINY)


@pytest.mark.slow
@pytest.mark.usefixtures("ray_cluster")
def test_native_scale_trains_on_mixed_sizes_and_segments_in_windows(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_sample_data(SampleDataConfig(output=str(data), num_images=12, num_shards=2, min_size=20, max_size=100,
                                       scale="native", object_size=10, seed=4))
    output = tmp_path / "model"
    cfg = load_config(TrainConfig, options={"data": str(data), "val_data": str(data), "output": str(output),
                                            "num_workers": 1, "cpus_per_worker": 1.0, "epochs": 2, "batch_size": 4,
                                            "unet": TINY, **FIXED_RECIPE, "scale": "native", "learning_rate": 0.01})
    history = run_training(cfg).history
    # windows in proportion to area: about sum(h * w) / 32**2 per pass, whole batches of 4 only
    assert all(h["images"] > 12 and h["images"] % 4 == 0 for h in history)
    assert all(h["val_images"] >= 12 for h in history)  # validated on the windows that tile each image
    info = json.loads((output / "model.json").read_text())
    assert info["scale"] == "native" and info["training"]["config"]["scale"] == "native"

    from pipeline.segment.run import run_segmentation

    summary = run_segmentation(SegmentConfig(input=str(data), model=str(output), output=str(tmp_path / "seg")))
    assert summary.images == 12 and summary.errors == 0
    run = json.loads((tmp_path / "seg" / "run.json").read_text())
    assert run["tiling"]["mode"] == "windows" and run["tiling"]["requested"] == "auto"
