"""Label maps: masks as their owners keep them (VOC's 255 bands, stored values, colours, lossy colours),
read into class indices with IGNORE where not labelled, and left out of every count."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline import imaging, metrics
from pipeline.config import ConfigError, SegmentConfig, load_config
from pipeline.errors import ErrorKind
from pipeline.imaging import IGNORE, LabelMap
from pipeline.io.labelmaps import fitted_label_map, input_label_map

VOC_PALETTE = [0, 0, 0, 128, 0, 0, 0, 128, 0] + [0, 0, 0] * 252 + [224, 224, 192]  # 0, 1, 2 ... 255: VOC's void colour


def png(array: np.ndarray, palette: list[int] | None = None, fmt: str = "PNG") -> bytes:
    picture = Image.fromarray(array)
    if palette is not None:
        picture = picture.convert("P")
        picture.putpalette(palette)
    buffer = io.BytesIO()
    picture.save(buffer, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def voc_mask() -> np.ndarray:
    """A 4x6 VOC-style mask: an object of class 15 outlined by a 1-px void (255) band, as VOC draws them."""
    mask = np.zeros((4, 6), np.uint8)
    mask[0:3, 0:4] = 255
    mask[1, 1:3] = 15
    return mask


def test_a_voc_mask_is_refused_naming_labels_ignore_and_read_with_it() -> None:
    data = png(voc_mask(), VOC_PALETTE)
    assert Image.open(io.BytesIO(data)).mode == "P"
    with pytest.raises(imaging.SampleError, match=r"labels\.ignore=255") as raised:
        imaging.decode_mask(data, 21, (4, 6))
    assert raised.value.kind == ErrorKind.MASK_CLASSES
    read = imaging.decode_mask(data, LabelMap.from_mapping({"ignore": 255}).with_classes(21), (4, 6))
    assert np.array_equal(read, voc_mask())  # the palette's indices are the classes; 255 stays IGNORE
    assert IGNORE == 255


def test_dice_with_an_ignore_band_equals_dice_on_the_labelled_pixels_alone() -> None:
    truth = np.array([[1, IGNORE, 0, 0],
                      [1, IGNORE, 0, 0]], np.uint8)
    predicted = np.array([[1, 1, 1, 0],
                          [0, 1, 0, 0]], np.uint8)
    result = metrics.image_metrics(predicted, truth, 2)
    # labelled pixels only: class 1 has TP 1 (0,0), FP 1 (0,2), FN 1 (1,0); the band's two 1s count nowhere
    assert result["tp"].tolist() == [3, 1] and result["fp"].tolist() == [1, 1] and result["fn"].tolist() == [1, 1]
    assert result["dice"][1] == pytest.approx(2 / 4) and result["ignored_pixels"] == 2
    labelled = truth != IGNORE
    cropped = metrics.image_metrics(predicted[labelled], truth[labelled], 2)
    assert np.allclose(result["dice"], cropped["dice"]) and cropped["ignored_pixels"] == 0


def test_declared_values_map_to_classes_by_index_or_name_and_an_undeclared_value_is_named() -> None:
    stored = np.array([[0, 38, 38], [0, 0, 77]], np.uint8)
    label_map = LabelMap.from_mapping({"classes": ["background", "nucleus", "border"],
                                       "values": {0: "background", 38: "nucleus", 77: 2}})
    assert label_map.num_classes == 3
    assert imaging.decode_mask(png(stored), label_map, (2, 3)).tolist() == [[0, 1, 1], [0, 0, 2]]
    stored[0, 0] = 5
    with pytest.raises(imaging.SampleError, match=r"values \[5\].*labels\.values") as raised:
        imaging.decode_mask(png(stored), label_map, (2, 3))
    assert raised.value.kind == ErrorKind.MASK_CLASSES


def test_colour_masks_read_through_their_colours_as_rgb_or_palette_pngs() -> None:
    colours = {"128,0,0": 1, "#008000": 2, "0,0,0": 0}
    label_map = LabelMap.from_mapping({"colors": colours, "ignore": ["224,224,192"]}).with_classes(3)
    rgb = np.zeros((3, 4, 3), np.uint8)
    rgb[0, :2] = (128, 0, 0)
    rgb[1, 2:] = (0, 128, 0)
    rgb[2, 3] = (224, 224, 192)
    expected = [[1, 1, 0, 0], [0, 0, 2, 2], [0, 0, 0, IGNORE]]
    assert imaging.decode_mask(png(rgb), label_map, (3, 4)).tolist() == expected
    indices = np.array([[1, 1, 0, 0], [0, 0, 2, 2], [0, 0, 0, 255]], np.uint8)  # the same mask as a palette PNG
    assert imaging.decode_mask(png(indices, VOC_PALETTE), label_map, (3, 4)).tolist() == expected
    rgb[2, 0] = (1, 2, 3)
    with pytest.raises(imaging.SampleError, match=r"colours \[1,2,3\]") as raised:
        imaging.decode_mask(png(rgb), label_map, (3, 4))
    assert raised.value.kind == ErrorKind.MASK_CLASSES
    with pytest.raises(imaging.SampleError, match=r"labels\.colors"):  # a colour mask with no colours declared
        imaging.decode_mask(png(rgb), 3, (3, 4))


def test_a_jpeg_colour_mask_is_snapped_to_its_colours_and_a_photo_is_refused() -> None:
    label_map = LabelMap.from_mapping({"colors": {"200,30,30": 1, "0,0,0": 0}}).with_classes(2)
    regions = np.zeros((48, 64), np.uint8)
    regions[8:40, 16:48] = 1
    rgb = np.zeros((48, 64, 3), np.uint8)
    rgb[regions == 1] = (200, 30, 30)
    mask, snapped = imaging.decode_mask_counted(png(rgb, fmt="JPEG"), label_map, (48, 64))
    assert snapped > 0 and (mask != regions).mean() < 0.02  # JPEG's few wrong pixels sit on the edges
    photo = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    with pytest.raises(imaging.SampleError, match="photo") as raised:
        imaging.decode_mask(png(photo, fmt="JPEG"), label_map, (48, 64))
    assert raised.value.kind == ErrorKind.BAD_MASK


@pytest.mark.parametrize(("mapping", "message"), [
    ({"colors": {"300,0,0": 1}}, "no colour"),
    ({"values": {0: 0, 255: 1}, "ignore": [255]}, "both a class"),
    ({"classes": ["background"]}, "at least two"),
    ({"values": {0: "cat"}, "classes": ["background", "dog"]}, "no class"),
    ({"ignore": [-1]}, "0..65535"),
    ({"colours": {}}, "unknown key 'colours'"),
])
def test_a_label_map_that_cannot_be_used_is_refused_naming_its_key(mapping: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LabelMap.from_mapping(mapping)


def test_label_keys_come_from_the_command_line_as_yaml_and_survive_model_json() -> None:
    cfg = load_config(SegmentConfig, overrides=["input=a", "model=b", "output=c", "labels.values={0: 0, 38: 1}",
                                                "labels.ignore=255", "labels.classes=background,nucleus"])
    found, where = input_label_map("unused", cfg.labels.given(), None)
    assert where == "the labels.* keys" and found is not None
    assert found.values == ((0, 0), (38, 1)) and found.ignore == (255,) and found.names == ("background", "nucleus")
    assert LabelMap.from_mapping(found.to_json()) == found
    with pytest.raises(ConfigError, match="names 2 classes.*the model has 3"):
        fitted_label_map(found, where, 3)


def test_a_labels_yaml_at_the_input_root_is_found_by_itself_and_the_keys_win(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    assert input_label_map(str(tmp_path), None, None) == (None, "")
    (tmp_path / "labels.yaml").write_text("classes: [background, cat, dog]\nignore: 255\n")
    found, where = input_label_map(str(tmp_path), None, None)
    assert where.endswith("labels.yaml") and found.names == ("background", "cat", "dog") and found.ignore == (255,)
    (tmp_path / "shard.tar").write_bytes(b"")
    assert input_label_map(str(tmp_path / "shard.tar"), None, None)[0] == found  # beside a single shard file
    assert input_label_map(str(tmp_path), {"ignore": 0}, None)[0].ignore == (0,)
    (tmp_path / "labels.yaml").write_text("classes: [background, cat\n")
    with pytest.raises(ConfigError, match="labels.yaml is not valid YAML"):
        input_label_map(str(tmp_path), None, None)
