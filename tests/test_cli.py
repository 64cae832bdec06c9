"""The segpipe command: help texts, and run-level problems that stop before any work starts."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from jobs.cli import build_parser, config_from_args, configuration_reference, main
from pipeline.config import ConfigError, ReportConfig, SegmentConfig, TrainConfig, load_config, option_fields
from tests.test_console import TENSORFLOW_LINE, WORKER_LINE, read_events


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    status = main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out + captured.err


def test_help_explains_every_segment_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["segment", "--help"])
    text = capsys.readouterr().out
    assert exit_info.value.code == 0
    for option in ("--input", "--model", "--output", "--address", "--batch-size", "--min-actors", "--max-actors",
                   "--cpus-per-actor", "--gpus-per-actor", "--config", "KEY=VALUE", "AWS_ENDPOINT_URL"):
        assert option in text


def test_train_options_switch_the_augmentation_parts() -> None:
    def train_config(*options: str) -> TrainConfig:
        return config_from_args(build_parser().parse_args(["train", "--data", "/d", "--output", "/o", *options]))

    default = train_config().augment
    assert default.enabled and default.flips and not default.warp and not default.crop
    no_flips = train_config("--no-flips").augment
    assert no_flips.enabled and not no_flips.flips
    assert default.quarter_turns and not train_config("--no-quarter-turns").augment.quarter_turns
    assert not train_config("--no-augment").augment.enabled
    assert train_config("--warp", "--crop").augment.warp and train_config("--crop").augment.crop
    offset = train_config("--label-offset-rows", "-0.5", "--label-offset-cols", "-0.25").augment
    assert (offset.label_offset_rows, offset.label_offset_cols) == (-0.5, -0.25) and offset.flips
    with pytest.raises(ConfigError, match="label_offset_rows=12.0: the labels' offset"):
        train_config("--label-offset-rows", "12")


def test_every_option_sets_its_grouped_key_and_the_old_flat_keys_still_work(tmp_path: Path) -> None:
    def train_config(*argv: str, config: Path | None = None) -> TrainConfig:
        extra = ["--config", str(config)] if config else []
        return config_from_args(build_parser().parse_args(["train", "--data", "/d", "--output", "/o", *extra, *argv]))

    flags = train_config("--batch-size", "16", "--lr-schedule", "cosine", "--patch-size", "32", "--no-xla",
                         "--passes-per-epoch", "3", "--input-size", "64", "--ema", "0.9")
    assert (flags.optim.batch_size, flags.optim.lr_schedule, flags.optim.xla, flags.optim.ema) == (16, "cosine", False, 0.9)
    assert (flags.loader.patch_size, flags.loader.passes_per_epoch, flags.model.input_size) == (32, 3, 64)
    grouped = train_config("optim.learning_rate=0.01", "augment.flips=false", "loader.decoded_cache_mb=0")
    assert grouped.optim.learning_rate == 0.01 and not grouped.augment.flips and grouped.loader.decoded_cache_mb == 0
    old = tmp_path / "old.yaml"
    old.write_text("batch_size: 4\nflips: false\naugment: false\nlearning_rate: 0.002\nnormalization: minmax\n")
    legacy = train_config("patch_size=0", "ema=0.5", config=old)
    assert (legacy.optim.batch_size, legacy.optim.learning_rate, legacy.optim.ema) == (4, 0.002, 0.5)
    assert not legacy.augment.enabled and not legacy.augment.flips and legacy.loader.normalization == "minmax"
    assert train_config("--batch-size", "6", config=old).optim.batch_size == 6  # an option beats the file


def test_the_configuration_reference_lists_every_key() -> None:
    reference = Path("docs/configuration.md").read_text()
    assert reference == configuration_reference(), (
        "docs/configuration.md is out of date: write it again with "
        "python -c 'from jobs.cli import configuration_reference; print(configuration_reference(), end=\"\")' "
        "> docs/configuration.md")
    for config_class in (SegmentConfig, TrainConfig, ReportConfig):
        for item in option_fields(config_class):
            assert f"| `{item.key}` |" in reference and item.help, item.key


def test_top_level_help_lists_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert "segment" in text and "sample-data" in text and "demo" in text


@pytest.fixture()
def sample_tars(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    data = tmp_path / "data"
    status, text = run_cli(capsys, "sample-data", "--output", str(data), "--num-images", "4", "--num-shards", "2")
    assert status == 0 and "wrote 4 images in 2 tar shard(s)" in text
    return data


def assert_refused(status: int, text: str, fragment: str, output: Path) -> None:
    assert status == 2, text
    assert "segpipe segment: error:" in text and fragment in text
    assert "Traceback" not in text
    assert not (output / "run.json").exists() and not (output / "metrics").exists()


def test_missing_input_stops_before_work(tmp_path: Path, tiny_model: str, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    status, text = run_cli(capsys, "segment", "--input", str(tmp_path / "nope"), "--model", tiny_model, "--output", str(out))
    assert_refused(status, text, "does not exist", out)


def test_input_without_images_stops_before_work(tmp_path: Path, tiny_model: str, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "notes.txt").write_text("no images here")
    out = tmp_path / "out"
    status, text = run_cli(capsys, "segment", "--input", str(tmp_path / "in"), "--model", tiny_model, "--output", str(out))
    assert_refused(status, text, "holds no images", out)


def test_a_label_map_that_cannot_serve_the_run_stops_it_before_work(tmp_path: Path, sample_tars: Path, tiny_model: str,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    (sample_tars / "labels.yaml").write_text("classes: [background, cat\n")
    out = tmp_path / "out"
    status, text = run_cli(capsys, "segment", "--input", str(sample_tars), "--model", tiny_model, "--output", str(out))
    assert_refused(status, text, "labels.yaml is not valid YAML", out)
    (sample_tars / "labels.yaml").write_text("classes: [background, cat, dog, bird]\nignore: 255\n")
    status, text = run_cli(capsys, "segment", "--input", str(sample_tars), "--model", tiny_model, "--output", str(out))
    assert_refused(status, text, "names 4 classes (background, cat, dog, bird) but the model has 3", out)
    status, text = run_cli(capsys, "segment", "--input", str(sample_tars), "--model", tiny_model, "--output", str(out),
                           "labels.colors=[1, 2]")
    assert_refused(status, text, "labels.colors", out)


def test_missing_model_stops_before_work(tmp_path: Path, sample_tars: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    status, text = run_cli(capsys, "segment", "--input", str(sample_tars), "--model", str(tmp_path / "m"), "--output", str(out))
    assert_refused(status, text, "has no model.json", out)


def test_invalid_model_stops_before_work(tmp_path: Path, sample_tars: Path, tiny_model: str, capsys: pytest.CaptureFixture[str]) -> None:
    broken = tmp_path / "broken-model"
    broken.mkdir()
    described = json.loads(Path(tiny_model, "model.json").read_text())
    del described["model_sha256"]  # as written before model.json recorded it: the file itself is checked
    (broken / "model.json").write_text(json.dumps(described))
    (broken / "model.keras").write_bytes(b"PK\x03\x04 truncated")
    out = tmp_path / "out"
    status, text = run_cli(capsys, "segment", "--input", str(sample_tars), "--model", str(broken), "--output", str(out))
    assert_refused(status, text, "cannot be loaded", out)
    (broken / "model.json").write_text(Path(tiny_model, "model.json").read_text())  # as saved: the weights' hash differs
    status, text = run_cli(capsys, "segment", "--input", str(sample_tars), "--model", str(broken), "--output", str(out))
    assert_refused(status, text, "were replaced after the model was saved", out)


def test_unwritable_output_stops_before_work(tmp_path: Path, sample_tars: Path, tiny_model: str, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    out = blocker / "out"
    status, text = run_cli(capsys, "segment", "--input", str(sample_tars), "--model", tiny_model, "--output", str(out))
    assert_refused(status, text, "is not writable", out)


def test_missing_s3_bucket_is_an_unwritable_output(s3_endpoint: str, sample_tars: Path, tiny_model: str, capsys: pytest.CaptureFixture[str]) -> None:
    status, text = run_cli(capsys, "segment", "--input", str(sample_tars), "--model", tiny_model,
                           "--output", "s3://no-such-bucket-here/out")
    assert status == 2 and "s3://no-such-bucket-here/out is not writable" in text


def folder_input(root: Path) -> Path:
    """Write an image folder with ground-truth masks, as a user keeps one."""
    import numpy as np

    from pipeline.imaging import encode_png

    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True)
    for key in ("a", "b"):
        (root / "images" / f"{key}.png").write_bytes(encode_png(np.full((8, 8, 3), 90, np.uint8)))
        (root / "masks" / f"{key}.png").write_bytes(encode_png(np.ones((8, 8), np.uint8)))
    return root


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("relation", ["same", "output inside", "input inside", "model inside", "overwrite"])
def test_an_output_overlapping_the_input_or_model_is_refused_before_work(
        tmp_path: Path, tiny_model: str, capsys: pytest.CaptureFixture[str], relation: str) -> None:
    data = folder_input(tmp_path / "data")
    model = tmp_path / "model"
    for path in Path(tiny_model).iterdir():
        (model / path.name).parent.mkdir(exist_ok=True)
        (model / path.name).write_bytes(path.read_bytes())
    before = snapshot(tmp_path)
    inputs, output = {"same": (data, data), "output inside": (data, data / "run"), "input inside": (data, tmp_path),
                      "model inside": (data, model / "out"), "overwrite": (data, data)}[relation]
    extra = ["--overwrite"] if relation == "overwrite" else []
    status, text = run_cli(capsys, "segment", "--input", f"file://{inputs}" if relation == "same" else str(inputs),
                           "--model", str(model), "--output", str(output), *extra)
    what = "model artifact" if relation == "model inside" else "input"
    assert status == 2 and f"the {what}" in text and "never writes into" in text, text
    assert "Traceback" not in text
    assert snapshot(tmp_path) == before  # not even a write probe


def test_a_symlinked_output_into_the_input_is_refused(tmp_path: Path, tiny_model: str,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    data = folder_input(tmp_path / "data")
    (tmp_path / "alias").symlink_to(data)
    status, text = run_cli(capsys, "segment", "--input", str(data), "--model", tiny_model,
                           "--output", str(tmp_path / "alias" / "out"))
    assert status == 2 and "lies inside the input" in text


def test_an_s3_output_inside_an_s3_input_is_refused(s3_bucket: str, tiny_model: str,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    from pipeline.config import SampleDataConfig
    from pipeline.sample_data import write_sample_data

    write_sample_data(SampleDataConfig(output=f"{s3_bucket}/in", num_images=2, num_shards=1, layout="parquet"))
    status, text = run_cli(capsys, "segment", "--input", f"{s3_bucket}/in", "--model", tiny_model,
                           "--output", f"{s3_bucket}/in/out")
    assert status == 2 and f"output {s3_bucket}/in/out lies inside the input" in text
    status, text = run_cli(capsys, "segment", "--input", f"{s3_bucket}/in/", "--model", tiny_model,
                           "--output", f"s3a://{s3_bucket[len('s3://'):]}")
    assert status == 2 and "contains the input" in text


def without_aws_credentials(monkeypatch: pytest.MonkeyPatch, home: Path) -> None:
    """Remove every source of AWS credentials a test machine could have."""
    import os

    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(home))  # no ~/.aws
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance metadata service


def test_s3_input_without_credentials_stops_with_one_message(tmp_path: Path, tiny_model: str,
                                                             monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    without_aws_credentials(monkeypatch, tmp_path)
    status, text = run_cli(capsys, "segment", "--input", "s3://bucket-that-does-not-exist/x/", "--model", tiny_model,
                           "--output", str(tmp_path / "out"))
    assert status == 2 and "Traceback" not in text, text
    assert "s3://bucket-that-does-not-exist/x/ cannot be reached: no object-storage credentials" in text
    assert "AWS_ACCESS_KEY_ID" in text and "storage.anon=true" in text


def test_an_unreachable_endpoint_stops_within_seconds(tmp_path: Path, tiny_model: str, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    import socket
    import time

    without_aws_credentials(monkeypatch, tmp_path)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with socket.socket() as probe:  # a loopback port nothing listens on
        probe.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{probe.getsockname()[1]}"
    started = time.monotonic()
    status, text = run_cli(capsys, "segment", "--input", "s3://bucket/x/", "--model", tiny_model,
                           "--output", str(tmp_path / "out"), "--endpoint-url", endpoint)
    assert time.monotonic() - started < 15
    assert status == 2 and "Traceback" not in text, text
    assert f"the object-storage endpoint {endpoint} does not answer" in text and "AWS_ENDPOINT_URL" in text


def test_bad_override_stops_before_work(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, text = run_cli(capsys, "segment", "--input", "x", "--model", "y", "--output", "z", "actors.gpu=1")
    assert status == 2 and "unknown config key 'actors.gpu'" in text


@pytest.mark.parametrize("pattern, config_class", [("segment*.yaml", SegmentConfig), ("train*.yaml", TrainConfig),
                                                   ("report*.yaml", ReportConfig)])
def test_example_configs_load(pattern: str, config_class: type) -> None:
    paths = sorted(Path("jobs/configs").glob(pattern))
    assert paths
    for path in paths:
        cfg = load_config(config_class, path)
        assert cfg.output or getattr(cfg, "run", "")
        assert set(yaml.safe_load(path.read_text())) <= set(config_class.__dataclass_fields__)


@pytest.mark.slow
def test_demo_command_runs_end_to_end(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "jobs.cli", "demo", "--workdir", str(tmp_path / "demo"), "--epochs", "4"],
        capture_output=True, text=True, timeout=900, check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "32 images (32 ok, 0 errors)" in result.stdout
    dice = re.search(r"trained (\d\.\d+), untrained (\d\.\d+)", result.stdout)
    assert dice, result.stdout
    assert float(dice.group(1)) > float(dice.group(2)) + 0.2  # training clearly beats random weights
    assert (tmp_path / "demo" / "run" / "run.json").exists()
    assert len(list((tmp_path / "demo" / "run" / "masks").rglob("*.png"))) == 32
    summary = json.loads((tmp_path / "demo" / "run" / "report" / "summary.json").read_text())
    assert summary["counts"]["images"] == 32 and summary["baseline"]["images_matched"] == 32
    assert f"{summary['foreground']['dice']['macro']:.3f}" == dice.group(1)  # the printed figure is the report's
    assert (tmp_path / "demo" / "run" / "report" / "report.html").stat().st_size > 50_000  # plots and overlays embedded
    # the console: one screen of segpipe's own lines, an epoch line each, every output named, curves written
    console = (result.stdout + result.stderr).splitlines()
    assert len(console) < 45, "\n".join(console)
    assert not [line for line in console if TENSORFLOW_LINE.match(line) or WORKER_LINE.search(line)], "\n".join(console)
    epochs = [re.fullmatch(r"\d\d:\d\d:\d\d epoch (\d)/4: loss \d+\.\d{4}, val Dice \d\.\d{3}, IoU \d\.\d{3}, "
                           r"\d+\.\d s, ETA \d+:\d\d:\d\d(, best)?", line) for line in console]
    assert [int(match.group(1)) for match in epochs if match] == [1, 2, 3, 4], "\n".join(console)
    demo = tmp_path / "demo"
    for output in (demo / "run" / "masks", demo / "run" / "run.json", demo / "run" / "report" / "report.html",
                   demo / "model" / "training.html"):
        assert str(output) in result.stdout and output.exists(), output
    losses = {step: value for (step, tag), value in read_events(demo / "model" / "logs").items() if tag == "loss/train"}
    history = json.loads((demo / "model" / "model.json").read_text())["training"]["history"]
    assert losses == pytest.approx({record["epoch"] + 1: record["loss"] for record in history}) and len(losses) == 4


def test_help_explains_every_report_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["report", "--help"])
    text = capsys.readouterr().out
    assert exit_info.value.code == 0
    for option in ("--baseline", "--output", "--worst", "--partial", "--config", "KEY=VALUE", "summary.json"):
        assert option in text
