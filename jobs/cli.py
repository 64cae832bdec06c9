"""The ``segpipe`` command: parse arguments, build one frozen config, call one library function.

Every subcommand takes ``--config FILE`` (YAML) and trailing ``KEY=VALUE`` overrides; the named
options are shorthands for keys. Precedence: config file < options < ``KEY=VALUE``.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any

from pipeline.cluster import shutdown_local_ray
from pipeline.config import ConfigError, ReportConfig, SampleDataConfig, SegmentConfig, TrainConfig, load_config

log = logging.getLogger("segpipe")

EPILOG = """\
Every option is also a config key; KEY=VALUE pairs after the options override both the config
file and the options, e.g.:
  segpipe segment --config jobs/configs/segment.yaml actors.max=4 batch_size=32
Object storage credentials and endpoint come from the standard AWS environment
(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL) or the storage.* keys.
"""

# option dest -> config key, per subcommand
SEGMENT_OPTIONS = {
    "input": "input", "model": "model", "output": "output", "address": "address",
    "batch_size": "batch_size", "min_actors": "actors.min", "max_actors": "actors.max",
    "cpus_per_actor": "actors.cpus", "gpus_per_actor": "actors.gpus", "endpoint_url": "storage.endpoint_url",
    "run_id": "run_id", "report": "report", "overwrite": "overwrite", "tta": "tta",
    "max_image_pixels": "max_image_pixels",
}
REPORT_OPTIONS = {
    "run": "run", "baseline": "baseline", "output": "output", "worst": "worst", "partial": "partial",
    "endpoint_url": "storage.endpoint_url",
}
TRAIN_OPTIONS = {
    "data": "data", "val_data": "val_data", "output": "output", "address": "address", "num_workers": "num_workers",
    "use_gpu": "use_gpu", "cpus_per_worker": "cpus_per_worker", "epochs": "epochs",
    "passes_per_epoch": "passes_per_epoch", "batch_size": "batch_size",
    "learning_rate": "learning_rate", "lr_schedule": "lr_schedule", "loss": "loss", "augment": "augment", "warp": "warp",
    "flips": "flips", "quarter_turns": "quarter_turns",
    "label_offset_rows": "label_offset_rows", "label_offset_cols": "label_offset_cols",
    "crop": "crop", "patch_size": "patch_size", "ema": "ema", "input_size": "unet.input_size",
    "channels": "unet.channels", "num_classes": "unet.num_classes", "depth": "unet.depth",
    "base_filters": "unet.base_filters", "resume": "resume", "xla": "xla", "endpoint_url": "storage.endpoint_url",
}
SAMPLE_OPTIONS = {
    "output": "output", "num_images": "num_images", "num_shards": "num_shards", "num_classes": "num_classes",
    "min_size": "min_size", "max_size": "max_size", "seed": "seed", "layout": "layout",
    "endpoint_url": "storage.endpoint_url",
}


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--config``, ``--endpoint-url``, ``-v`` and the trailing ``KEY=VALUE`` overrides."""
    parser.add_argument("--config", metavar="FILE", help="YAML config file")
    parser.add_argument("--endpoint-url", help="S3 endpoint URL (default: $AWS_ENDPOINT_URL)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. actors.max=4")


def build_parser() -> argparse.ArgumentParser:
    """Return the ``segpipe`` parser with its subcommands."""
    parser = argparse.ArgumentParser(
        prog="segpipe",
        description="Distributed batch image segmentation with Ray Data and a Keras U-Net.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    segment = commands.add_parser(
        "segment", help="segment every image of an input into masks + per-image metrics",
        description="Segment every image under --input with the model artifact --model; write masks/, "
        "metrics/*.parquet and run.json under --output. Without --address or RAY_ADDRESS a local Ray starts.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    segment.add_argument("--input", help="URL of tar shards, an images/ folder or Parquet files")
    segment.add_argument("--model", help="URL of a model artifact (folder with model.keras + model.json)")
    segment.add_argument("--output", help="URL to write masks/, metrics/ and run.json under")
    segment.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray)")
    segment.add_argument("--batch-size", type=int, help="images per model batch (default 16)")
    segment.add_argument("--min-actors", type=int, help="smallest actor pool (default 1)")
    segment.add_argument("--max-actors", type=int, help="largest actor pool (default 1)")
    segment.add_argument("--cpus-per-actor", type=float, help="CPUs per actor (default: automatic)")
    segment.add_argument("--gpus-per-actor", type=float, help="GPUs per actor (default 0)")
    segment.add_argument("--run-id", help="run id recorded in every row (default: UTC start time)")
    segment.add_argument("--report", action="store_true", default=None,
                         help="write the dataset-level report (<output>/report/) when the run ends")
    segment.add_argument("--overwrite", action="store_true", default=None,
                         help="replace what --output holds from another run (by default a re-run continues the same "
                         "run, skipping committed shards, and refuses an output of another input or model)")
    segment.add_argument("--max-image-pixels", type=int,
                         help="largest image (width x height, read from its header before decoding) to segment; "
                         "larger ones become image_too_large error rows (default 268435456 = 16384 x 16384)")
    segment.add_argument("--tta", action="store_true", default=None,
                         help="test-time augmentation: average each image's scores over the flips and 90-degree "
                         "rotations the model was trained on (8 passes for square tiles, 4 for other tiles or a model "
                         "trained with --no-quarter-turns; that many times the model's work), each moved back by the "
                         "model's label offset; refused for a model trained with --no-flips")
    add_common_arguments(segment)
    segment.set_defaults(handler=run_segment_command, config_class=SegmentConfig, options=SEGMENT_OPTIONS)

    train = commands.add_parser(
        "train", help="train a U-Net on labelled shards with Ray Train; writes a model artifact",
        description="Train a U-Net on --data (tar shards, images/+masks/ folders or Parquet, with masks) across "
        "--num-workers Ray Train workers; checkpoints every epoch under --output/checkpoints, and re-running the "
        "same command continues from the latest one. The best epoch (validation mean Dice) becomes the artifact "
        "--output/model.keras + model.json that `segpipe segment --model` reads.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    train.add_argument("--data", help="URL of the labelled training shards")
    train.add_argument("--val-data", help="URL of labelled validation shards (validated every epoch)")
    train.add_argument("--output", help="URL of the model artifact to write (checkpoints go under it)")
    train.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray)")
    train.add_argument("--num-workers", type=int, help="Ray Train workers (default 1)")
    train.add_argument("--use-gpu", action="store_true", default=None, help="one GPU per worker")
    train.add_argument("--cpus-per-worker", type=float, help="CPUs per worker (default: automatic)")
    train.add_argument("--epochs", type=int, help="epochs to train (default 10)")
    train.add_argument("--passes-per-epoch", type=int,
                       help="passes over the training data per epoch, i.e. between validations and checkpoints "
                       "(default 1; more for small data sets)")
    train.add_argument("--batch-size", type=int, help="global batch size, split across workers (default 8)")
    train.add_argument("--learning-rate", type=float, help="Adam learning rate (default 0.001)")
    train.add_argument("--lr-schedule", choices=("constant", "cosine"),
                       help="learning rate per epoch: constant (default) or cosine decay towards 0")
    train.add_argument("--loss", choices=("ce", "dice", "ce+dice"), help="loss (default ce+dice)")
    train.add_argument("--no-augment", dest="augment", action="store_false", default=None,
                       help="no flips, rotations, crops, warps or intensity jitter")
    train.add_argument("--crop", action="store_true", default=None,
                       help="augment with random crops (80-100%% of each side, the same window for image and mask) "
                       "resized to the tile")
    train.add_argument("--no-flips", dest="flips", action="store_false", default=None,
                       help="no flips or 90-degree turns (the rest of the augmentation stays): for labels that sit "
                       "off the objects' centre in a fixed direction, which flips would teach the model to ignore")
    train.add_argument("--no-quarter-turns", dest="quarter_turns", action="store_false", default=None,
                       help="flips (left-right, up-down) and half turns only, no 90-degree turns: for labels whose "
                       "offset from the objects differs between rows and columns")
    train.add_argument("--label-offset-rows", type=float,
                       help="where the labels sit relative to the objects they mark, in pixels down (negative: up), "
                       "e.g. -0.5; flips and turns then move each mask back to that offset (default 0)")
    train.add_argument("--label-offset-cols", type=float, help="the same, in pixels right (negative: left)")
    train.add_argument("--warp", action="store_true", default=None,
                       help="augment with a random warp (rotation by any angle, zoom x0.9-1.1, shift, elastic "
                       "deformation; mirrored borders) instead of flips and 90-degree turns")
    train.add_argument("--patch-size", type=int,
                       help="train on random windows of this many pixels square cut from the tiles, at the tiles' "
                       "scale: more steps for the same compute on large tiles (default 0: whole tiles)")
    train.add_argument("--ema", type=float,
                       help="validate, keep and save an exponential moving average of the weights, updated each "
                       "step with this momentum, e.g. 0.99 (default 0: the weights as trained)")
    train.add_argument("--input-size", type=int, help="square tile size in pixels (default 64)")
    train.add_argument("--channels", type=int, choices=(1, 3), help="image channels the model takes (default 3)")
    train.add_argument("--num-classes", type=int, help="classes including background (default 3)")
    train.add_argument("--depth", type=int, help="U-Net levels (default 3)")
    train.add_argument("--base-filters", type=int, help="filters of the first level (default 16)")
    train.add_argument("--resume", action="store_true", default=None,
                       help="continue from the latest checkpoint (the default; resume=false refuses to reuse an output)")
    train.add_argument("--no-xla", dest="xla", action="store_false", default=None,
                       help="run the training step as a plain TensorFlow graph, not XLA-compiled (about 1.5x slower on CPU)")
    add_common_arguments(train)
    train.set_defaults(handler=run_train_command, config_class=TrainConfig, options=TRAIN_OPTIONS)

    sample = commands.add_parser(
        "sample-data", help="write synthetic labelled shards",
        description="Write synthetic images with class-index masks (tar shards by default).",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sample.add_argument("--output", help="URL to write the shards under")
    sample.add_argument("--num-images", type=int, help="images to write (default 64)")
    sample.add_argument("--num-shards", type=int, help="shards to split them into (default 4)")
    sample.add_argument("--num-classes", type=int, help="classes including background (default 3)")
    sample.add_argument("--min-size", type=int, help="smallest image side (default 48)")
    sample.add_argument("--max-size", type=int, help="largest image side (default 96)")
    sample.add_argument("--seed", type=int, help="random seed (default 0)")
    sample.add_argument("--layout", choices=("tar", "folder", "parquet"), help="input shape to write (default tar)")
    add_common_arguments(sample)
    sample.set_defaults(handler=run_sample_command, config_class=SampleDataConfig, options=SAMPLE_OPTIONS)

    report = commands.add_parser(
        "report", help="dataset-level metrics of a run: report/summary.json + a self-contained report.html",
        description="Aggregate a segmentation run's metrics/*.parquet (streamed, never loaded whole) into "
        "<run>/report/summary.json (counts, macro/micro Dice and IoU per class with 95%% bootstrap intervals, "
        "pixel accuracy, errors by kind) and report.html (tables, plots, the worst images as overlays, errors, "
        "run metadata). With --baseline, per-class changes and the images that got most worse.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    report.add_argument("run", nargs="?", help="URL of a segmentation run's output (what segment --output wrote)")
    report.add_argument("--baseline", help="URL of an earlier run to compare with")
    report.add_argument("--output", help="URL to write summary.json and report.html under (default <run>/report)")
    report.add_argument("--worst", type=int, help="how many worst images to show as overlays (default 12)")
    report.add_argument("--partial", action="store_true", default=None,
                        help="report on the committed shards of an unfinished run instead of refusing")
    add_common_arguments(report)
    report.set_defaults(handler=run_report_command, config_class=ReportConfig, options=REPORT_OPTIONS)

    demo = commands.add_parser(
        "demo", help="generate sample data, train a small U-Net, segment with it on a local Ray",
        description="Write labelled sample shards, train a small U-Net on them (a few minutes on 2 CPU cores), "
        "segment the validation shards with it and with an untrained model, print both Dice figures and where "
        "the outputs are.",
    )
    demo.add_argument("--workdir", default="demo-output", help="folder for the demo's data, model and run (default demo-output)")
    demo.add_argument("--epochs", type=int, default=12, help="training epochs (default 12)")
    demo.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    demo.set_defaults(handler=run_demo_command)
    return parser


def config_from_args(args: argparse.Namespace) -> Any:
    """Return the frozen config for a subcommand: file, then options, then KEY=VALUE overrides."""
    options = {key: value for dest, key in args.options.items() if (value := getattr(args, dest, None)) is not None}
    return load_config(args.config_class, args.config, args.overrides, options)


def run_segment_command(args: argparse.Namespace) -> int:
    """Run ``segpipe segment``; return the exit status."""
    from pipeline.segment.run import run_segmentation

    cfg = config_from_args(args)
    summary = run_segmentation(cfg)
    if not summary.model_trained:
        print("note: the model artifact is untrained (model.json training.trained is false); masks are not meaningful")
    print(summary.line())
    if cfg.report:
        from pipeline.report.build import build_report

        print(build_report(ReportConfig(run=cfg.output, storage=cfg.storage)).line())
    return 0


def run_report_command(args: argparse.Namespace) -> int:
    """Run ``segpipe report``; return the exit status."""
    from pipeline.report.build import build_report

    print(build_report(config_from_args(args)).line())
    return 0


def run_train_command(args: argparse.Namespace) -> int:
    """Run ``segpipe train``; return the exit status."""
    from pipeline.train.run import run_training

    summary = run_training(config_from_args(args))
    print(summary.line())
    return 0


def run_sample_command(args: argparse.Namespace) -> int:
    """Run ``segpipe sample-data``; return the exit status."""
    from pipeline.sample_data import write_sample_data

    cfg = config_from_args(args)
    shards = write_sample_data(cfg)
    print(f"wrote {cfg.num_images} images in {len(shards)} {cfg.layout} shard(s) under {cfg.output}")
    return 0


def run_demo_command(args: argparse.Namespace) -> int:
    """Run ``segpipe demo``; return the exit status."""
    from pipeline.demo import run_demo

    result = run_demo(args.workdir, epochs=args.epochs)
    for line in result.lines():
        print(line)
    return 0


def user_errors() -> tuple[type[BaseException], ...]:
    """Return the exception types that mean "the run cannot start": shown as one message, exit 2."""
    from pipeline.io.shards import InputError
    from pipeline.io.storage import StorageError
    from pipeline.model import ModelArtifactError
    from pipeline.report.reading import ReportError

    return ConfigError, InputError, ModelArtifactError, StorageError, ReportError


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``segpipe`` console script; return the process exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except user_errors() as exc:
        print(f"segpipe {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean-up short
        resume = "; re-run the same command to resume" if args.command in ("segment", "train") else ""
        print(f"segpipe {args.command}: interrupted{resume}", file=sys.stderr)
        return 130
    finally:
        shutdown_local_ray()


if __name__ == "__main__":
    sys.exit(main())
