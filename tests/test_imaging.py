"""Decoding, normalisation, resizing and mask checks on small hand-made images."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from pipeline import imaging
from pipeline.imaging import SampleError


def encoded(array_or_image: np.ndarray | Image.Image, fmt: str = "PNG", **kwargs: object) -> bytes:
    picture = array_or_image if isinstance(array_or_image, Image.Image) else Image.fromarray(array_or_image)
    buffer = io.BytesIO()
    picture.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def test_8bit_gray_and_rgb_decode_to_hwc_uint8() -> None:
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4)
    assert imaging.decode_image(encoded(gray)).shape == (3, 4, 1)
    rgb = np.zeros((3, 4, 3), dtype=np.uint8)
    decoded = imaging.decode_image(encoded(rgb))
    assert decoded.shape == (3, 4, 3) and decoded.dtype == np.uint8


def test_16bit_gray_keeps_its_range() -> None:
    gray16 = (np.arange(12, dtype=np.uint16).reshape(3, 4) * 5000)
    decoded = imaging.decode_image(encoded(gray16))
    assert decoded.dtype == np.uint16
    assert decoded[:, :, 0].tolist() == gray16.tolist()
    scaled = imaging.normalise(decoded, {"mode": "scale"})
    assert scaled.max() == pytest.approx(55000 / 65535)


def test_rgba_drops_alpha_and_palette_becomes_rgb() -> None:
    rgba = np.full((2, 2, 4), 200, dtype=np.uint8)
    assert imaging.decode_image(encoded(rgba)).shape == (2, 2, 3)
    palette = Image.fromarray(np.zeros((2, 2, 3), dtype=np.uint8)).convert("P")
    assert imaging.decode_image(encoded(palette)).shape == (2, 2, 3)


def test_unsupported_mode_names_the_mode_and_the_fix() -> None:
    cmyk = Image.new("CMYK", (4, 4))
    with pytest.raises(SampleError, match="unsupported image mode 'CMYK'.*convert"):
        imaging.decode_image(encoded(cmyk, "JPEG"))


def test_corrupt_and_truncated_images_are_sample_errors() -> None:
    with pytest.raises(SampleError, match="not a recognised image format"):
        imaging.decode_image(b"this is not an image")
    with pytest.raises(SampleError, match="empty"):
        imaging.decode_image(b"")
    whole = encoded(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    with pytest.raises(SampleError, match="corrupt or truncated"):
        imaging.decode_image(whole[: len(whole) // 2])


def test_model_input_matches_channels_and_tile() -> None:
    gray = np.full((10, 20, 1), 255, dtype=np.uint8)
    tile = imaging.model_input(gray, (8, 8), 3, {"mode": "scale"})
    assert tile.shape == (8, 8, 3) and tile.dtype == np.float32
    assert np.allclose(tile, 1.0)
    rgb = np.zeros((4, 4, 3), dtype=np.uint8)
    rgb[..., 1] = 255  # pure green: luma 0.587
    assert imaging.model_input(rgb, (4, 4), 1, {"mode": "scale"})[0, 0, 0] == pytest.approx(149 / 255)


def test_minmax_normalisation_and_constant_image() -> None:
    image = np.array([[[10], [20]], [[30], [50]]], dtype=np.uint8)
    out = imaging.normalise(image, {"mode": "minmax"})
    assert out.min() == 0.0 and out.max() == 1.0 and out[0, 1, 0] == pytest.approx(0.25)
    assert not imaging.normalise(np.full((2, 2, 1), 7, np.uint8), {"mode": "minmax"}).any()


def test_binary_0_255_mask_reads_as_classes_0_1() -> None:
    mask = np.array([[0, 255], [255, 0]], dtype=np.uint8)
    assert imaging.decode_mask(encoded(mask), 2, (2, 2)).tolist() == [[0, 1], [1, 0]]


def test_mask_with_unknown_classes_is_refused() -> None:
    mask = np.array([[0, 1], [2, 5]], dtype=np.uint8)
    with pytest.raises(SampleError, match=r"class values \[5\].*3 classes"):
        imaging.decode_mask(encoded(mask), 3, (2, 2))


def test_mask_of_other_size_is_refused() -> None:
    with pytest.raises(SampleError, match="mask size 3x2 differs from image size 4x4"):
        imaging.decode_mask(encoded(np.zeros((2, 3), np.uint8)), 2, (4, 4))


def test_rgb_mask_is_refused() -> None:
    with pytest.raises(SampleError, match="single-channel"):
        imaging.decode_mask(encoded(np.zeros((2, 2, 3), np.uint8)), 2, (2, 2))


def test_scores_back_to_original_size() -> None:
    scores = np.zeros((4, 4, 3), dtype=np.float32)
    scores[:, :2, 1] = 1.0  # left half class 1
    scores[:, 2:, 2] = 1.0  # right half class 2
    mask = imaging.mask_at_size(scores, 6, 10, 0.5)
    assert mask.shape == (6, 10)
    assert set(np.unique(mask[:, :4]).tolist()) == {1}
    assert set(np.unique(mask[:, 6:]).tolist()) == {2}


def test_sigmoid_scores_use_the_threshold() -> None:
    scores = np.array([[[0.2], [0.6]]], dtype=np.float32)
    assert imaging.mask_from_scores(scores, 0.5).tolist() == [[0, 1]]
    assert imaging.mask_from_scores(scores, 0.7).tolist() == [[0, 0]]
    levels = imaging.quantise_scores(scores)
    assert levels.dtype == np.uint8 and levels.ravel().tolist() == [51, 153]
    assert imaging.mask_from_scores(levels, 0.5).tolist() == [[0, 1]]
    assert imaging.mask_from_scores(levels, 0.7).tolist() == [[0, 0]]


def test_quantised_scores_resize_like_float_scores() -> None:
    rng = np.random.default_rng(0)
    probabilities = rng.dirichlet(np.ones(3), size=(8, 8)).astype(np.float32)
    from_float = imaging.mask_at_size(probabilities, 13, 11, 0.5)
    from_levels = imaging.mask_at_size(imaging.quantise_scores(probabilities), 13, 11, 0.5)
    assert from_levels.shape == (13, 11)
    assert (from_float == from_levels).mean() > 0.95  # only near-ties may differ
    sigmoid = rng.random((8, 8, 1)).astype(np.float32)
    assert (imaging.mask_at_size(sigmoid, 5, 7, 0.5) == imaging.mask_at_size(imaging.quantise_scores(sigmoid), 5, 7, 0.5)).mean() > 0.9


def test_encode_png_round_trips() -> None:
    mask = np.array([[0, 1, 2]], dtype=np.uint8)
    assert np.asarray(Image.open(io.BytesIO(imaging.encode_png(mask)))).tolist() == [[0, 1, 2]]


def test_an_image_over_the_pixel_limit_is_refused_from_its_header() -> None:
    from tests.segment.hostile_input import png_header_only

    huge = png_header_only(40000, 40000)  # 1.6 gigapixels declared in 57 bytes
    too_large = r"40000x40000 = 1600 megapixels, more than max_image_pixels=268435456"
    with pytest.raises(SampleError, match=too_large) as info:
        imaging.read_model_input(huge, (8, 8), 3, {"mode": "scale"})
    assert info.value.kind == "image_too_large" and "--max-image-pixels" in str(info.value)
    small = encoded(np.zeros((10, 11), np.uint8))
    assert imaging.read_model_input(small, (8, 8), 1, {"mode": "scale"}, max_pixels=110)[1] == (10, 11)
    with pytest.raises(SampleError, match="more than max_image_pixels=109"):
        imaging.read_model_input(small, (8, 8), 1, {"mode": "scale"}, max_pixels=109)


def test_errors_carry_their_kind() -> None:
    cases = [(b"", "corrupt_image"), (encoded(Image.new("CMYK", (4, 4)), "JPEG"), "unsupported_image")]
    for data, kind in cases:
        with pytest.raises(SampleError) as info:
            imaging.read_model_input(data, (4, 4), 3, {"mode": "scale"})
        assert info.value.kind == kind
    mask_cases = [(encoded(np.zeros((3, 2), np.uint8)), "mask_size_mismatch"),
                  (encoded(np.full((2, 2), 9, np.uint8)), "mask_classes"), (b"nope", "bad_mask"),
                  (encoded(np.zeros((2, 2, 3), np.uint8)), "bad_mask")]
    for data, kind in mask_cases:
        with pytest.raises(SampleError) as info:
            imaging.decode_mask(data, 3, (2, 2))
        assert info.value.kind == kind, (kind, info.value)


def test_model_input_from_bytes_matches_the_array_path() -> None:
    rng = np.random.default_rng(3)
    same = rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)
    pixels, size = imaging.read_model_input(encoded(same), (16, 16), 3, {"mode": "scale"})
    assert size == (16, 16) and np.array_equal(pixels, imaging.model_input(same, (16, 16), 3, {"mode": "scale"}))
    large = rng.integers(0, 255, (90, 70), dtype=np.uint16) * 200  # 16-bit, resized in its own type
    pixels, size = imaging.read_model_input(encoded(large), (16, 16), 3, {"mode": "minmax"})
    reference = imaging.model_input(large[:, :, None], (16, 16), 3, {"mode": "minmax"})
    assert size == (90, 70) and pixels.shape == (16, 16, 3) and np.abs(pixels - reference).max() < 0.02


def test_a_large_jpeg_is_decoded_reduced_and_no_full_float_copy_is_made() -> None:
    import tracemalloc

    height, width = 3000, 4000  # 12 megapixels: one float32 RGB copy would take 144 MB
    gradient = np.linspace(0, 255, width, dtype=np.float32)[None, :, None] * np.ones((height, 1, 3), np.float32)
    jpeg = encoded(gradient.astype(np.uint8), "JPEG", quality=90)
    png = encoded(gradient.astype(np.uint8)[:, :, 0])
    del gradient
    for data, limit in ((jpeg, 4 * 2**20), (png, 4 * 2**20)):
        tracemalloc.start()
        pixels, size = imaging.read_model_input(data, (64, 64), 3, {"mode": "scale"})
        _, peak = tracemalloc.get_traced_memory()  # NumPy's allocations; Pillow's own buffer is not traced
        tracemalloc.stop()
        assert size == (height, width) and pixels.shape == (64, 64, 3)
        assert peak < limit, f"{peak / 2**20:.1f} MB of arrays for a 64x64 input"
        assert pixels[:, 0].mean() < 0.05 and pixels[:, -1].mean() > 0.95  # the gradient survived the reduction


def test_scores_back_to_a_large_size_cost_a_few_bytes_per_pixel() -> None:
    import tracemalloc

    rng = np.random.default_rng(0)
    scores = imaging.quantise_scores(rng.dirichlet(np.ones(4), size=(32, 32)).astype(np.float32))
    expected = np.argmax(imaging.resize_channels(scores, 1500, 2000, Image.Resampling.BILINEAR), axis=-1)
    tracemalloc.start()
    mask = imaging.mask_at_size(scores, 1500, 2000, 0.5)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert np.array_equal(mask, expected)  # the same argmax, ties to the lower class
    assert peak < 8 * 1500 * 2000, f"{peak / (1500 * 2000):.1f} bytes per pixel"  # all planes, then argmax: 12


def tiff_bytes(array: np.ndarray, **options: object) -> bytes:
    import tifffile

    buffer = io.BytesIO()
    tifffile.imwrite(buffer, array, **options)
    return buffer.getvalue()


def test_tiled_16_bit_and_bigtiff_files_are_read_at_their_type() -> None:
    rng = np.random.default_rng(4)
    gray16 = rng.integers(0, 65535, (70, 90), dtype=np.uint16)
    for options in ({"tile": (32, 32)}, {"tile": (32, 32), "compression": "zlib"}, {"bigtiff": True},
                    {"compression": "lzw"}):
        data = tiff_bytes(gray16, **options)
        assert imaging.is_tiff(data)
        decoded = imaging.decode_image(data)
        assert decoded.dtype == np.uint16 and np.array_equal(decoded[:, :, 0], gray16), options
        native, value_range = imaging.read_native(data, {"mode": "minmax"})
        assert np.array_equal(native[:, :, 0], gray16) and value_range == (gray16.min(), gray16.max())
    pixels, size = imaging.read_model_input(tiff_bytes(gray16, tile=(32, 32)), (16, 16), 1, {"mode": "scale"})
    assert size == (70, 90) and pixels.shape == (16, 16, 1) and 0.3 < pixels.mean() < 0.7


def test_planar_rgb_and_alpha_tiffs_give_rgb() -> None:
    rgb = np.random.default_rng(5).integers(0, 255, (3, 20, 30), dtype=np.uint8)
    planar = imaging.decode_image(tiff_bytes(rgb, photometric="rgb", planarconfig="separate"))
    assert planar.shape == (20, 30, 3) and np.array_equal(planar, np.moveaxis(rgb, 0, -1))
    rgba = np.random.default_rng(6).integers(0, 255, (20, 30, 4), dtype=np.uint8)
    assert np.array_equal(imaging.decode_image(tiff_bytes(rgba, photometric="rgb", extrasamples=["unassalpha"])),
                          rgba[:, :, :3])


def test_a_multi_page_tiff_needs_a_page_and_its_size_is_checked_before_decoding() -> None:
    pages = np.stack([np.full((10, 12), value, np.uint8) for value in (10, 20, 30)])
    data = tiff_bytes(pages, photometric="minisblack")  # three pages, not one planar RGB page
    with pytest.raises(imaging.SampleError, match="3 pages.*tiff_page") as caught:
        imaging.decode_image(data)
    assert caught.value.kind == "multi_page_image"
    assert (imaging.decode_image(data, tiff_page=2) == 30).all()
    with pytest.raises(imaging.SampleError, match="tiff_page=3 does not exist"):
        imaging.read_native(data, {"mode": "scale"}, tiff_page=3)
    with pytest.raises(imaging.SampleError, match="max-image-pixels") as caught:
        imaging.read_native(tiff_bytes(np.zeros((100, 100), np.uint8)), {"mode": "scale"}, max_pixels=9999)
    assert caught.value.kind == "image_too_large"
    with pytest.raises(imaging.SampleError, match="float32") as caught:
        imaging.decode_image(tiff_bytes(np.zeros((8, 8), np.float32)))
    assert caught.value.kind == "unsupported_image"
    with pytest.raises(imaging.SampleError, match="TIFF") as caught:
        imaging.decode_image(tiff_bytes(np.zeros((64, 64), np.uint8))[:200])
    assert caught.value.kind == "corrupt_image"


def test_tiff_masks_are_read_and_checked() -> None:
    mask = np.zeros((12, 10), np.uint8)
    mask[3:6] = 2
    assert np.array_equal(imaging.decode_mask(tiff_bytes(mask, tile=(16, 16)), 3, (12, 10)), mask)
    with pytest.raises(imaging.SampleError, match="differs from image size"):
        imaging.decode_mask(tiff_bytes(mask), 3, (10, 12))
    with pytest.raises(imaging.SampleError, match="class values"):
        imaging.decode_mask(tiff_bytes(mask), 2, (12, 10))


def test_instance_label_images_round_trip_and_bad_ones_are_refused() -> None:
    import io

    import tifffile
    from PIL import Image

    from pipeline.imaging import decode_instances, encode_instances

    labels = np.arange(12, dtype=np.int64).reshape(3, 4) * 5000  # up to 55,000: 16-bit PNG
    data, ext = encode_instances(labels)
    assert ext == "png" and Image.open(io.BytesIO(data)).mode.startswith("I")
    assert np.array_equal(decode_instances(data, (3, 4)), labels)
    many = labels * 2  # up to 110,000: a 32-bit TIFF
    data, ext = encode_instances(many)
    assert ext == "tif" and np.array_equal(decode_instances(data, (3, 4)), many)
    small = np.array([[0, 1], [2, 3]], np.uint8)
    assert np.array_equal(decode_instances(encoded(small), (2, 2)), small)

    def saved(array: np.ndarray, mode: str | None = None) -> bytes:  # PNG, or TIFF for a float image
        buffer = io.BytesIO()
        Image.fromarray(array, mode).save(buffer, format="TIFF" if mode == "F" else "PNG")
        return buffer.getvalue()

    floats = io.BytesIO()
    tifffile.imwrite(floats, np.ones((2, 2), np.float32))
    wrapped = np.arange(256, dtype=np.uint8).reshape(16, 16)  # every 8-bit label used
    cases = [(encoded(small), (3, 2), "instances_size_mismatch"), (floats.getvalue(), (2, 2), "bad_instances"),
             (saved(np.ones((2, 2, 3), np.uint8)), (2, 2), "bad_instances"),
             (saved(np.ones((2, 2), np.float32), "F"), (2, 2), "bad_instances"),
             (encoded(wrapped), (16, 16), "bad_instances"), (b"", (2, 2), None)]
    for data, shape, kind in cases:
        with pytest.raises(SampleError) as caught:
            decode_instances(data, shape)
        assert kind is None or caught.value.kind == kind, (kind, caught.value.kind, str(caught.value))


def test_unusable_instance_label_images_are_truth_errors_of_their_kind_and_the_image_is_kept() -> None:
    from pipeline.model import ModelInfo, ModelSpec
    from pipeline.segment.prepare import prepare_batch

    image = imaging.encode_png(np.zeros((20, 30, 3), np.uint8))
    floats = io.BytesIO()
    Image.fromarray(np.zeros((20, 30), np.float32)).save(floats, format="TIFF")
    full8 = np.arange(20 * 30).reshape(20, 30) % 256  # every 8-bit label used: it has wrapped
    cases = {
        "ok": (imaging.encode_png(np.ones((20, 30), np.uint16)), ""),
        "small": (imaging.encode_png(np.ones((10, 30), np.uint16)), "instances_size_mismatch"),
        "wrapped": (imaging.encode_png(full8.astype(np.uint8)), "bad_instances"),
        "float": (floats.getvalue(), "bad_instances"),
        "colour": (imaging.encode_png(np.zeros((20, 30, 3), np.uint8)), "bad_instances"),
        "corrupt": (b"\x89PNG\r\n\x1a\n broken", "bad_instances"),
    }
    keys = list(cases)
    batch = {name: np.array(values, dtype=object) for name, values in {
        "key": keys, "source": ["s"] * len(keys), "shard": ["s"] * len(keys), "image": [image] * len(keys),
        "mask": [b""] * len(keys), "instances": [cases[k][0] for k in keys], "error": [""] * len(keys),
        "error_kind": [""] * len(keys), "truth_error": [""] * len(keys), "truth_error_kind": [""] * len(keys)}.items()}
    batch["shard_rows"] = np.full(len(keys), len(keys))
    spec = ModelSpec(input_size=(32, 32), channels=3, num_classes=2, depth=2, base_filters=4)
    out = prepare_batch(batch, ModelInfo(spec=spec, class_names=("background", "cell")))
    assert not any(out["error"]) and out["height"].tolist() == [20] * len(keys)  # every image is kept
    assert dict(zip(keys, out["truth_error_kind"])) == {k: kind for k, (_, kind) in cases.items()}
    assert all(key in error and "segmented but not scored" in error for key, error in zip(keys, out["truth_error"]) if error)
    assert [len(labels) > 0 for labels in out["instances"]] == [key == "ok" for key in keys]  # bad ones dropped


def test_tiles_at_their_own_type_normalise_as_the_float_path_does() -> None:
    from pipeline.model import ModelInfo, ModelSpec
    from pipeline.segment.prepare import prepare_batch, tile_pixels

    rng = np.random.default_rng(2)
    eight = imaging.encode_png(rng.integers(0, 256, (40, 30, 3), dtype=np.uint8))
    sixteen = io.BytesIO()
    Image.fromarray(rng.integers(0, 65536, (20, 50), dtype=np.uint16)).save(sixteen, format="PNG")
    for normalization in ({"mode": "scale"}, {"mode": "minmax"}, {"mode": "scale", "mean": 0.5, "std": 0.25}):
        expected = [imaging.read_model_input(data, (16, 16), 3, normalization)[0] for data in (eight, sixteen.getvalue())]
        batch = {name: np.array(values, dtype=object) for name, values in {
            "key": ["eight", "sixteen"], "source": ["s"] * 2, "shard": ["s"] * 2, "image": [eight, sixteen.getvalue()],
            "mask": [b""] * 2, "instances": [b""] * 2, "error": [""] * 2, "error_kind": [""] * 2,
            "truth_error": [""] * 2, "truth_error_kind": [""] * 2}.items()}
        batch["shard_rows"] = np.full(2, 2)
        info = ModelInfo(spec=ModelSpec(input_size=(16, 16), channels=3, num_classes=2, depth=2, base_filters=4),
                         class_names=("background", "cell"), normalization=normalization)
        prepared = prepare_batch(batch, info)
        assert prepared["tiles"].dtype == np.uint8 and prepared["bits"].tolist() == [8, 16]
        got = tile_pixels(prepared, np.array([True, True]), normalization)
        assert got.dtype == np.float32 and np.allclose(got, np.stack(expected), atol=1e-6), normalization
        assert np.allclose(tile_pixels(prepared, np.array([True, False]), normalization), expected[:1], atol=1e-6)


def test_a_mask_with_classes_the_model_lacks_names_them_cut_with_an_ellipsis_and_the_fix() -> None:
    mask = np.arange(20, dtype=np.uint8).reshape(4, 5)  # classes 3..19 beyond a 3-class model
    with pytest.raises(SampleError, match=r"class values \[3, 4, 5, 6, 7, …\] but the model has 3 classes .*relabel"):
        imaging.decode_mask(imaging.encode_png(mask), 3, (4, 5))
    with pytest.raises(SampleError, match=r"class values \[3\] but"):
        imaging.decode_mask(imaging.encode_png(np.full((4, 5), 3, np.uint8)), 3, (4, 5))


def test_an_animated_gif_png_or_webp_is_a_multi_page_row_and_a_still_gif_is_read() -> None:
    frames = [Image.fromarray(np.full((6, 8), value, np.uint8)) for value in (0, 255)]
    still = io.BytesIO()
    frames[0].save(still, format="GIF")
    assert imaging.decode_image(still.getvalue()).shape == (6, 8, 3)  # a palette image, expanded
    for fmt in ("GIF", "PNG", "WEBP"):
        animated = io.BytesIO()
        frames[0].save(animated, format=fmt, save_all=True, append_images=frames[1:], duration=100)
        with pytest.raises(SampleError, match=rf"animated {fmt} of 2 frames") as caught:
            imaging.decode_image(animated.getvalue())
        assert caught.value.kind == "multi_page_image"


INVERSE_TRANSPOSES = {1: None, 2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
                      4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_90,
                      7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_270}  # displayed -> stored


def stored_with_orientation(shown: np.ndarray, orientation: int, fmt: str = "PNG") -> bytes:
    """Return ``shown`` (as a viewer displays it) stored turned back, with the EXIF orientation that undoes it."""
    picture = Image.fromarray(shown)
    if INVERSE_TRANSPOSES[orientation] is not None:
        picture = picture.transpose(INVERSE_TRANSPOSES[orientation])
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    picture.save(buffer, format=fmt, exif=exif.tobytes(), **({"quality": 95} if fmt == "JPEG" else {}))
    return buffer.getvalue()


@pytest.mark.parametrize("orientation", range(1, 9))
def test_an_exif_orientation_is_applied_to_the_image_and_its_mask_as_viewers_show_them(orientation: int) -> None:
    rng = np.random.default_rng(orientation)
    shown = rng.integers(0, 256, (6, 10, 3), dtype=np.uint8)  # displayed: 6 rows, 10 columns
    mask = rng.integers(0, 3, (6, 10), dtype=np.uint8)
    data = stored_with_orientation(shown, orientation)
    assert imaging.image_orientation(data) == orientation
    assert np.array_equal(imaging.decode_image(data), shown)
    assert np.array_equal(imaging.read_native(data, {"mode": "scale"})[0], shown)
    tile, size, _ = imaging.read_tile(data, (6, 10), 3, {"mode": "scale"})
    assert size == (6, 10) and np.array_equal(tile, shown)
    assert np.array_equal(imaging.decode_mask(imaging.encode_png(mask), 3, size), mask)  # drawn on the displayed photo
    assert np.array_equal(imaging.decode_mask(stored_with_orientation(mask, orientation), 3, size), mask)  # or oriented


def test_a_large_turned_jpeg_is_reduced_and_sized_as_displayed() -> None:
    shown = np.zeros((400, 200, 3), np.uint8)
    shown[:100] = 255  # the top quarter white, as displayed
    tile, size, _ = imaging.read_tile(stored_with_orientation(shown, 6, "JPEG"), (32, 32), 3, {"mode": "scale"})
    assert size == (400, 200) and tile.shape == (32, 32, 3)
    assert tile[:6].mean() > 200 and tile[10:].mean() < 30


def jpeg_bytes(array: np.ndarray, mode: str | None = None) -> bytes:
    buffer = io.BytesIO()
    picture = Image.fromarray(array)
    (picture.convert(mode) if mode else picture).save(buffer, format="JPEG", quality=75)
    return buffer.getvalue()


def test_a_jpeg_mask_is_snapped_to_its_classes_with_the_count_and_a_photo_saved_as_one_is_refused() -> None:
    yy, xx = np.mgrid[:48, :64]
    binary = ((yy - 24) ** 2 + (xx - 30) ** 2 < 15 ** 2).astype(np.uint8)  # a disc, saved as 0/255
    for mode in (None, "RGB"):  # grey, or a colour JPEG of a grey mask
        data = jpeg_bytes(binary * 255, mode)
        stored = np.asarray(Image.open(io.BytesIO(data)).convert("L")).astype(int)
        mask, snapped = imaging.decode_mask_counted(data, 2, (48, 64))
        assert snapped == int(np.count_nonzero((stored != 0) & (stored != 255))) > 0
        assert set(np.unique(mask)) == {0, 1} and (mask == binary).mean() > 0.99
    indices = np.zeros((48, 64), np.uint8)
    indices[:, 32:] = 2  # a three-class index mask: snapped to the nearest index
    mask, _ = imaging.decode_mask_counted(jpeg_bytes(indices), 3, (48, 64))
    assert (mask == indices).mean() > 0.95
    photo = np.random.default_rng(0).integers(0, 256, (48, 64), dtype=np.uint8)
    with pytest.raises(SampleError, match=r"lossy \(JPEG\) image whose pixels are not class values: .* looks like a "
                                          r"photo, not a mask: save masks as PNG") as caught:
        imaging.decode_mask_counted(jpeg_bytes(photo), 2, (48, 64))
    assert caught.value.kind == "bad_mask"
    noisy = np.asarray(Image.open(io.BytesIO(jpeg_bytes(binary * 255))))  # JPEG damage saved losslessly: strict
    with pytest.raises(SampleError) as caught:
        imaging.decode_mask(imaging.encode_png(noisy), 2, (48, 64))
    assert caught.value.kind == "mask_classes"
    assert imaging.decode_mask_counted(imaging.encode_png(binary * 255), 2, (48, 64))[1] == 0
