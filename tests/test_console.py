"""The console a person watches: segpipe's lines only, native noise filtered out (errors kept), one
line per training epoch, a progress line in a log, and the curves (TensorBoard event files, training.html)."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import console
from pipeline.io import storage
from pipeline.train.curves import EventLog, epoch_scalars, write_training_page
from pipeline.train.watch import TrainingConsole, epoch_line

TENSORFLOW_START_UP = (
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
    "I0000 00:00:1796575872.838627    4138 port.cc:153] oneDNN custom operations are on. You may see slightly "
    "different numerical results due to floating-point round-off errors from different computation orders.\n"
    "I0000 00:00:1796575873.105792    4138 cpu_feature_guard.cc:227] This TensorFlow binary is optimized to use "
    "available CPU instructions in performance-critical operations.\n"
    "To enable the following instructions: AVX2 AVX512F AVX512_VNNI AVX512_BF16 FMA, in other operations, rebuild "
    "TensorFlow with the appropriate compiler flags.\n"
    "W0000 00:00:1796575895.984325    4709 assert_op.cc:39] Ignoring Assert operator assert_non_negative/Assert\n"
    "[2026-12-06 16:52:44,711 E 4138 4138] core_worker.cc:2465: Actor with class name: 'MapWorker(MapBatches("
    "SegmentationPredictor))' and ID: '85d2e41dedcebb37' has constructor arguments in the object store and "
    "max_restarts > 0. If the arguments in the object store go out of scope or are lost, the actor restart will fail.\n"
)
NATIVE_ERRORS = (
    "E0000 00:00:1796575895.984325    4709 cuda_dnn.cc:39] Could not create cudnn handle\n"
    "[2026-12-06 16:52:44,711 E 4138 4138] core_worker.cc:100: the object store is full\n"
    "F0000 00:00:1796575895.984325    4709 tensor.cc:12] Check failed: size >= 0\n"
)


def test_the_console_shows_the_time_and_the_message_and_names_warnings() -> None:
    def formatted(level: int, verbose: int) -> str:
        record = logging.LogRecord("pipeline.io.readers", level, __file__, 1, "shard %s cannot be read", ("a.tar",), None)
        return console.ConsoleFormatter(verbose).format(record)

    assert re.fullmatch(r"\d\d:\d\d:\d\d shard a\.tar cannot be read", formatted(logging.INFO, 0))
    assert re.fullmatch(r"\d\d:\d\d:\d\d warning: shard a\.tar cannot be read", formatted(logging.WARNING, 0))
    assert re.fullmatch(r"\d\d:\d\d:\d\d error: shard a\.tar cannot be read", formatted(logging.ERROR, 0))
    assert re.fullmatch(r"\d\d:\d\d:\d\d WARNING pipeline\.io\.readers: shard a\.tar cannot be read",
                        formatted(logging.WARNING, 1))


def test_the_native_filter_drops_start_up_noise_and_passes_errors_and_python_lines() -> None:
    # a real process with its file descriptor 2 behind the filter, writing as TensorFlow's and Ray's C++ code does
    program = (
        "import os, sys\n"
        "from pipeline import console\n"
        "console.filter_native_stderr()\n"
        f"os.write(2, {(TENSORFLOW_START_UP + NATIVE_ERRORS).encode()!r})\n"
        "print('a line of segpipe', file=sys.stderr)\n"
        "console.close_native_filter()\n"
        "os.write(2, b'after the filter\\n')\n"
    )
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60, check=True)
    lines = result.stderr.splitlines()
    assert sorted(lines) == sorted([*NATIVE_ERRORS.splitlines(), "a line of segpipe", "after the filter"]), lines


def test_an_epoch_line_says_loss_validation_seconds_eta_and_best() -> None:
    record = {"epoch": 2, "loss": 0.21301, "val_mean_dice": 0.9123, "val_mean_iou": 0.8504, "seconds": 4.62, "best": True}
    assert epoch_line(record, 12, 41.2) == "epoch 3/12: loss 0.2130, val Dice 0.912, IoU 0.850, 4.6 s, ETA 0:00:41, best"
    assert epoch_line({"epoch": 0, "loss": 1.0, "seconds": 3.04, "best": False}, 0, None) == \
        "epoch 1: loss 1.0000, 3.0 s, ETA unknown"


def test_a_log_gets_a_line_per_epoch_and_progress_lines_with_an_eta(caplog: pytest.LogCaptureFixture) -> None:
    shown = TrainingConsole(epochs=4, budget=0.0, interval=0.0, live=False)
    with caplog.at_level(logging.INFO, logger="pipeline.train.watch"):
        shown.on_message("step", {"epoch": 0, "step": 5, "steps": 10, "loss": 0.5})
        shown.on_message("epoch-000000", {"epoch": 0, "loss": 0.4, "val_mean_dice": 0.5, "val_mean_iou": 0.4,
                                          "seconds": 10.0, "best": True, "trained_seconds": 10.0})
        shown.on_message("step", {"epoch": 1, "step": 5, "steps": 10, "loss": 0.3})
    assert [r.getMessage() for r in caplog.records] == [
        "training: epoch 1/4, step 5/10, loss 0.5000, ETA unknown",
        "epoch 1/4: loss 0.4000, val Dice 0.500, IoU 0.400, 10.0 s, ETA 0:00:30, best",
        "training: epoch 2/4, step 5/10, loss 0.3000, ETA 0:00:25",  # 2.5 epochs of 10 s left
    ]
    budgeted = TrainingConsole(epochs=0, budget=100.0, interval=3600.0, live=False)
    budgeted.on_message("epoch-000000", {"epoch": 0, "loss": 0.4, "seconds": 10.0, "trained_seconds": 40.0})
    assert budgeted.lines == ["epoch 1: loss 0.4000, 10.0 s, ETA 0:01:00"]  # the budget's 60 s left


def epoch_records(count: int) -> list[dict]:
    return [{"epoch": epoch, "loss": 1.0 / (epoch + 1), "val_mean_dice": 0.5 + 0.1 * epoch, "val_mean_iou": 0.4,
             "val_dice": [0.9, 0.5 + 0.1 * epoch], "val_iou": [0.8, 0.3], "learning_rate": 1e-3,
             "train_images_per_second": 12.5, "seconds": 2.0} for epoch in range(count)]


def read_events(folder: Path) -> dict[tuple[int, str], float]:
    import tensorflow as tf

    values = {}
    for path in sorted(folder.glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                assert value.metadata.plugin_data.plugin_name == "scalars"  # TensorBoard's scalars dashboard
                values[(event.step, value.tag)] = float(tf.make_ndarray(value.tensor))
    return values


def test_every_epoch_is_read_back_from_the_event_files(tmp_path: Path) -> None:
    events = EventLog(str(tmp_path / "model"), None, ("background", "cell"))
    for record in epoch_records(3):
        events.write(record)
    values = read_events(tmp_path / "model" / "logs")
    for epoch in range(3):
        assert values[(epoch + 1, "loss/train")] == pytest.approx(1.0 / (epoch + 1))
        assert values[(epoch + 1, "val_dice/cell")] == pytest.approx(0.5 + 0.1 * epoch)
        assert values[(epoch + 1, "throughput/windows_per_second")] == pytest.approx(12.5)
    assert set(epoch_scalars({"epoch": 0, "loss": float("nan"), "learning_rate": 0.1}, ())) == {"learning_rate"}


def test_event_files_reach_an_object_store_output(s3_bucket: str, tmp_path: Path) -> None:
    output = f"{s3_bucket}/model"
    events = EventLog(output, None, ("background", "cell"))
    for record in epoch_records(2):
        events.write(record)  # copied after each epoch
    events.close()
    assert not Path(events.folder).exists()  # the local copy is gone
    names = [url.rsplit("/", 1)[1] for url in storage.list_files(storage.join_url(output, "logs"), (".v2",))]
    assert len(names) == 1 and names[0].startswith("events.out.tfevents.")
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / names[0]).write_bytes(storage.read_bytes(storage.join_url(output, "logs", names[0])))
    assert read_events(tmp_path / "logs")[(2, "loss/train")] == pytest.approx(0.5)


def test_training_html_has_the_curves_and_a_row_per_epoch(tmp_path: Path) -> None:
    url = write_training_page(str(tmp_path), None, epoch_records(5), ("background", "cell"), best_epoch=3)
    page = Path(url).read_text()
    assert page.count("<img") == 1 and "data:image/png;base64," in page
    assert page.count("<tr><td>") == 5 and "<td>4 (best)</td>" in page


TENSORFLOW_LINE = re.compile(r"^([IWEF]\d{4} |WARNING: All log messages before absl|.*oneDNN|To enable the following instructions)")
WORKER_LINE = re.compile(r"\((MapWorker|RayTrainWorker|pid=)")


def segment_console(data: Path, model: str, output: Path, *flags: str) -> list[str]:
    """Run ``segpipe segment`` as a user would (its own process) and return its console: stdout and stderr."""
    result = subprocess.run(
        [sys.executable, "-m", "jobs.cli", "segment", "--input", str(data), "--model", model, "--output", str(output),
         *flags], capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    return (result.stdout + result.stderr).splitlines()


@pytest.mark.slow
def test_segment_console_is_quiet_shows_a_worker_warning_once_and_v_brings_the_workers_back(
        tmp_path: Path, tiny_model: str) -> None:
    from pipeline.config import SampleDataConfig
    from pipeline.sample_data import write_sample_data

    data = tmp_path / "data"
    write_sample_data(SampleDataConfig(output=str(data), num_images=12, num_shards=3, min_size=32, max_size=48))
    (data / "broken.tar").write_bytes(b"this is not a tar archive" * 40)  # read in a worker: its warning must reach us

    lines = segment_console(data, tiny_model, tmp_path / "run")
    assert len(lines) < 12, "\n".join(lines)
    assert not [line for line in lines if TENSORFLOW_LINE.match(line) or WORKER_LINE.search(line)], "\n".join(lines)
    warnings = [line for line in lines if re.match(r"\d\d:\d\d:\d\d warning: shard .*broken\.tar cannot be read", line)]
    assert len(warnings) == 1, "\n".join(lines)
    assert any(line.startswith("13 images (12 ok, 1 errors) from 4 shards") for line in lines), "\n".join(lines)
    assert any(f"run record {tmp_path / 'run' / 'run.json'}" in line for line in lines), "\n".join(lines)

    verbose = segment_console(data, tiny_model, tmp_path / "run-v", "-v")
    assert [line for line in verbose if WORKER_LINE.search(line)], "\n".join(verbose)  # the actors' own lines
