"""The model artifact: save, load with safe_mode, identity, and the errors for bad artifacts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.model import ModelArtifactError, ModelInfo, ModelSpec, build_unet, load_artifact, read_info, save_artifact


def test_round_trip_keeps_weights_info_and_identity(tiny_model: str) -> None:
    loaded = load_artifact(tiny_model)
    assert loaded.info.spec.num_classes == 3 and loaded.info.class_names == ("background", "disc", "stripes")
    assert loaded.model_id.startswith("unet-") and len(loaded.sha256) == 64
    scores = loaded.model(np.zeros((2, 32, 32, 3), np.float32)).numpy()
    assert scores.shape == (2, 32, 32, 3)
    assert np.allclose(scores.sum(axis=-1), 1.0, atol=1e-4)  # softmax
    assert load_artifact(tiny_model).sha256 == loaded.sha256


def test_sigmoid_binary_model(tmp_path: Path) -> None:
    spec = ModelSpec(input_size=(16, 16), channels=1, num_classes=2, depth=1, base_filters=2, output_activation="sigmoid")
    save_artifact(build_unet(spec), ModelInfo(spec=spec, class_names=("bg", "fg")), str(tmp_path))
    loaded = load_artifact(str(tmp_path))
    assert loaded.model.output_shape == (None, 16, 16, 1)


def test_a_border_model_has_one_more_output_and_records_its_target_and_objects(tmp_path: Path) -> None:
    spec = ModelSpec(input_size=(16, 16), channels=1, num_classes=2, depth=1, base_filters=2, target="borders")
    assert spec.output_channels == spec.label_classes == 3
    objects = {"border_width": 2, "diameter": 19.5, "area": {"p5": 45.0, "p50": 300.0, "p95": 2200.0}, "source": "labels"}
    save_artifact(build_unet(spec), ModelInfo(spec=spec, class_names=("bg", "nucleus"), objects=objects), str(tmp_path))
    written = json.loads((tmp_path / "model.json").read_text())
    assert written["parameters"]["target"] == "borders" and written["objects"] == objects
    loaded = load_artifact(str(tmp_path))
    assert loaded.model.output_shape == (None, 16, 16, 3) and loaded.info.spec == spec
    assert loaded.info.diameter == 19.5 and loaded.info.class_names == ("bg", "nucleus")
    classes = ModelSpec(input_size=(16, 16), num_classes=2, depth=1)  # a class model's model.json stays as it was
    assert "target" not in classes.parameters() and classes.output_channels == 2
    with pytest.raises(ValueError, match="target borders"):
        ModelSpec(num_classes=2, output_activation="sigmoid", target="borders")


def test_missing_artifact_says_what_it_needs(tmp_path: Path) -> None:
    with pytest.raises(ModelArtifactError, match="has no model.json"):
        load_artifact(str(tmp_path / "nowhere"))


def test_invalid_model_json_is_named(tiny_model: str, tmp_path: Path) -> None:
    info = json.loads(Path(tiny_model, "model.json").read_text())
    info["format_version"] = 99
    Path(tmp_path, "model.json").write_text(json.dumps(info))
    with pytest.raises(ModelArtifactError, match="format_version 99"):
        read_info(str(tmp_path))
    Path(tmp_path, "model.json").write_text("{not json")
    with pytest.raises(ModelArtifactError, match="not valid JSON"):
        read_info(str(tmp_path))


def test_corrupt_keras_file_is_refused(tiny_model: str, tmp_path: Path) -> None:
    Path(tmp_path, "model.json").write_text(Path(tiny_model, "model.json").read_text())
    Path(tmp_path, "model.keras").write_bytes(b"not a zip")
    with pytest.raises(ModelArtifactError, match="cannot be loaded"):
        load_artifact(str(tmp_path))


def test_info_that_disagrees_with_the_weights_is_refused(tiny_model: str, tmp_path: Path) -> None:
    info = json.loads(Path(tiny_model, "model.json").read_text())
    info["input_size"] = [64, 64]
    Path(tmp_path, "model.json").write_text(json.dumps(info))
    Path(tmp_path, "model.keras").write_bytes(Path(tiny_model, "model.keras").read_bytes())
    with pytest.raises(ModelArtifactError, match="do not belong together"):
        load_artifact(str(tmp_path))


def test_spec_checks() -> None:
    with pytest.raises(ValueError, match="divisible"):
        ModelSpec(input_size=(30, 32), depth=2)
    with pytest.raises(ValueError, match="sigmoid output needs num_classes=2"):
        ModelSpec(num_classes=3, output_activation="sigmoid")


def test_inspecting_an_artifact_checks_it_without_tensorflow(tiny_model: str, tmp_path: Path) -> None:
    import subprocess
    import sys

    from pipeline.model import inspect_artifact

    described = inspect_artifact(tiny_model)
    assert described.model is None and described.sha256 == load_artifact(tiny_model).sha256
    code = ("import sys; from pipeline.model import inspect_artifact; inspect_artifact(sys.argv[1]); "
            "print('tensorflow' in sys.modules, 'keras' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code, tiny_model], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False", "False"]
    info = json.loads(Path(tiny_model, "model.json").read_text())
    info["num_classes"], info["class_names"] = 2, ["bg", "fg"]  # the file gives 3 channels
    del info["model_sha256"]  # as written before model.json recorded it: the shapes are still checked
    Path(tmp_path, "model.json").write_text(json.dumps(info))
    Path(tmp_path, "model.keras").write_bytes(Path(tiny_model, "model.keras").read_bytes())
    with pytest.raises(ModelArtifactError, match="gives 3 channels.*do not belong together"):
        inspect_artifact(str(tmp_path))
    Path(tmp_path, "model.keras").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(ModelArtifactError, match="cannot be loaded"):
        inspect_artifact(str(tmp_path))


def test_weights_swapped_under_model_json_are_refused_before_any_work(tiny_model: str, tmp_path: Path) -> None:
    """model.json records the sha256 of the model.keras saved with it; other weights are refused, by the
    driver's check and by the actors' full load alike, naming both files and the fix."""
    from pipeline.model import ModelInfo, ModelSpec, build_unet, inspect_artifact, save_artifact

    recorded = json.loads(Path(tiny_model, "model.json").read_text())["model_sha256"]
    assert recorded == load_artifact(tiny_model).sha256
    other = tmp_path / "other"
    spec = ModelSpec(input_size=(32, 32), channels=3, num_classes=3, depth=2, base_filters=4)
    save_artifact(build_unet(spec), ModelInfo(spec=spec, class_names=("a", "b", "c")), str(other))
    swapped = tmp_path / "swapped"
    swapped.mkdir()
    Path(swapped, "model.json").write_text(Path(tiny_model, "model.json").read_text())
    Path(swapped, "model.keras").write_bytes(Path(other, "model.keras").read_bytes())
    for check in (inspect_artifact, load_artifact):
        with pytest.raises(ModelArtifactError, match=r"model.keras has sha256 .* but model.json was written for "
                                                     + recorded[:12] + r".*put back"):
            check(str(swapped))
