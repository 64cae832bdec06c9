"""The ``segpipe`` command: parse arguments, build one frozen config, call one library function.

Every subcommand takes ``--config FILE`` (YAML) and trailing ``KEY=VALUE`` overrides; the named
options are shorthands for keys. Precedence: config file < options < ``KEY=VALUE``.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any

from pipeline import console
from pipeline.cluster import shutdown_local_ray
from pipeline.config import (
    ConfigError,
    ExportConfig,
    ImportConfig,
    InspectConfig,
    ReportConfig,
    SampleDataConfig,
    SegmentConfig,
    TrainConfig,
    load_config,
    option_fields,
    reference_markdown,
)

log = logging.getLogger("segpipe")

EPILOG = """\
Every option is also a config key; KEY=VALUE pairs after the options override both the config
file and the options, e.g.:
  segpipe segment --config jobs/configs/segment.yaml actors.max=4 batch_size=32
  segpipe train --data d --output m optim.lr_schedule=cosine augment.flips=false
Object storage credentials and endpoint come from the standard AWS environment
(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL) or the storage.* keys.
"""

COMMANDS = {  # name -> (config class, one-line help, description)
    "segment": (SegmentConfig, "segment every image of an input into masks + per-image metrics",
                "Segment every image under --input with the model artifact --model; write masks/, metrics/*.parquet "
                "and run.json under --output. Without --address or RAY_ADDRESS a local Ray starts."),
    "train": (TrainConfig, "train a U-Net on labelled shards with Ray Train; writes a model artifact",
              "Train a U-Net on --data (tar shards, images/+masks/ folders or Parquet, with masks) across "
              "--num-workers Ray Train workers; checkpoints every epoch under --output/checkpoints, and re-running the "
              "same command continues from the latest one. The best epoch (validation mean Dice) becomes the artifact "
              "--output/model.keras + model.json that `segpipe segment --model` reads. docs/training.md explains the "
              "options."),
    "sample-data": (SampleDataConfig, "write synthetic labelled shards",
                    "Write synthetic images with class-index masks (tar shards by default)."),
    "report": (ReportConfig, "dataset-level metrics of a run: report/summary.json + a self-contained report.html",
               "Aggregate a segmentation run's metrics/*.parquet (streamed, never loaded whole) into "
               "<run>/report/summary.json (counts, macro/micro Dice and IoU per class with 95% bootstrap intervals, "
               "pixel accuracy, errors by kind) and report.html (tables, plots, the worst images as overlays, errors, "
               "run metadata). With --baseline, per-class changes and the images that got most worse."),
    "inspect": (InspectConfig, "a data set's fingerprint: sizes, channels, intensities, classes, objects, problems",
                "Read the data under DATA as a run would (every format, object storage, its label map), measure each "
                "image on Ray Data and print the fingerprint: image sizes, channels and grey images stored as colour, "
                "bit depth, intensities and whether they vary, bright-on-dark or dark-on-bright objects, class shares, "
                "the ignored share, object sizes, and the problems found; write it as fingerprint.json. A large archive "
                "is sampled (--max-images)."),
    "export": (ExportConfig, "a run's predicted objects as a COCO results file (for COCOeval)",
               "Write the objects of a run segmented with --objects as a COCO results file: one entry per object "
               "with its RLE segmentation, category id and score. Where the run's input was a COCO annotations file, "
               "its image and category ids are used, so pycocotools' COCOeval scores the file against it."),
    "model import": (ImportConfig, "make a Keras model trained elsewhere into an artifact segment runs",
                     "Check that a .keras file loads with safe_mode=True (no custom code), takes (H, W, C) or any size "
                     "and gives one score channel per class, then write it with its model.json under --output."),
}


def add_config_options(parser: argparse.ArgumentParser, config_class: type) -> list[str]:
    """Add an option for every config key that declares a flag (:func:`pipeline.config.option`); return their keys.

    The option's value lands under the key itself (``args.__dict__["optim.batch_size"]``); a bool's
    flag sets it to True, or, named ``--no-...``, to False.
    """
    keys = []
    for item in option_fields(config_class):
        if not (item.flag or item.positional):
            continue
        shown = item.shown_default()
        text = f"{item.help} ({'required' if shown == 'required' else f'default: {shown}'}; key {item.key})"
        boolean = item.kind is bool or item.kind == bool | None
        if boolean and item.flag and item.flag.startswith("--no-"):
            text = f"set {item.key} to false: without {item.help}"
        text = text.replace("%", "%%")
        if item.positional:
            parser.add_argument(item.key, nargs="?", help=text)
        elif boolean:
            action = "store_false" if item.flag.startswith("--no-") else "store_true"
            parser.add_argument(item.flag, dest=item.key, action=action, default=None, help=text)
        else:
            base = next((kind for kind in (int, float, str) if kind is item.kind or kind in getattr(
                item.kind, "__args__", ())), str)
            parser.add_argument(item.flag, dest=item.key, type=base, choices=item.choices, default=None,
                                metavar=None if item.choices else item.key.rsplit(".", 1)[-1].upper(), help=text)
        keys.append(item.key)
    return keys


def configuration_reference() -> str:
    """Return docs/configuration.md: every key of every command's config, its default, option and meaning."""
    parts = ["# Configuration reference\n\n"
             "Every key of every command, as a YAML config file (`--config FILE`) gives it, as `KEY=VALUE` after the "
             "options, and (where it has one) as an option. Precedence: config file < options < `KEY=VALUE`. "
             "Written from the config classes' declarations (`pipeline/config/`), as the command-line help is.\n"]
    for name, (config_class, summary, _) in COMMANDS.items():
        parts.append(reference_markdown(config_class, f"`segpipe {name}`: {summary}"))
    return "\n".join(parts)


VERBOSE_HELP = ("show the workers' log lines (TensorFlow, Ray Data, Ray Train) and libraries' notices, which stay in "
                "Ray's log files otherwise; -vv adds debug lines")


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--config``, ``-v`` and the trailing ``KEY=VALUE`` overrides."""
    parser.add_argument("--config", metavar="FILE", help="YAML config file")
    parser.add_argument("-v", "--verbose", action="count", default=0, help=VERBOSE_HELP)
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. actors.max=4")


def build_parser() -> argparse.ArgumentParser:
    """Return the ``segpipe`` parser: a subcommand per run configuration, each option derived from its config."""
    parser = argparse.ArgumentParser(
        prog="segpipe", description="Distributed batch image segmentation with Ray Data and a Keras U-Net.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    handlers = {"segment": run_segment_command, "train": run_train_command, "sample-data": run_sample_command,
                "report": run_report_command, "export": run_export_command,
                "inspect": run_inspect_command, "model import": run_import_command}
    model = commands.add_parser("model", help="model artifacts: import a Keras model",
                                description="Work on model artifacts.")
    model_commands = model.add_subparsers(dest="model_command", required=True, metavar="MODEL_COMMAND")
    for name, (config_class, summary, description) in COMMANDS.items():
        group, name_in_group = (model_commands, name.split()[1]) if " " in name else (commands, name)
        command = group.add_parser(name_in_group, help=summary, description=description, epilog=EPILOG,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
        keys = add_config_options(command, config_class)
        add_common_arguments(command)
        command.set_defaults(handler=handlers[name], config_class=config_class, option_keys=keys)
    demo = commands.add_parser(
        "demo", help="generate sample data, train a small U-Net, segment with it on a local Ray",
        description="Write labelled sample shards, train a small U-Net on them (a few minutes on 2 CPU cores), "
        "segment the validation shards with it and with an untrained model, print both Dice figures and where "
        "the outputs are.",
    )
    demo.add_argument("--workdir", default="demo-output", help="folder for the demo's data, model and run (default demo-output)")
    demo.add_argument("--epochs", type=int, default=12, help="training epochs (default 12)")
    demo.add_argument("-v", "--verbose", action="count", default=0, help=VERBOSE_HELP)
    demo.set_defaults(handler=run_demo_command)
    return parser


def config_from_args(args: argparse.Namespace) -> Any:
    """Return the frozen config for a subcommand: file, then options, then KEY=VALUE overrides."""
    options = {key: value for key in args.option_keys if (value := getattr(args, key, None)) is not None}
    return load_config(args.config_class, args.config, args.overrides, options)


def run_segment_command(args: argparse.Namespace) -> int:
    """Run ``segpipe segment``; return the exit status."""
    from pipeline.segment.record import outputs_line
    from pipeline.segment.run import run_segmentation

    cfg = config_from_args(args)
    summary = run_segmentation(cfg, own_process=True)
    if not summary.model_trained:
        print("note: the model artifact is untrained (model.json training.trained is false); masks are not meaningful")
    print(summary.line())
    print(outputs_line(cfg.output))
    if cfg.report:
        from pipeline.report.build import build_report

        print(build_report(ReportConfig(run=cfg.output, storage=cfg.storage)).line())
    return 0


def run_report_command(args: argparse.Namespace) -> int:
    """Run ``segpipe report``; return the exit status."""
    from pipeline.report.build import build_report

    print(build_report(config_from_args(args)).line())
    return 0


def run_inspect_command(args: argparse.Namespace) -> int:
    """Run ``segpipe inspect``; return the exit status."""
    from pipeline.fingerprint import inspect_data

    for line in inspect_data(config_from_args(args)).lines():
        print(line)
    return 0


def run_export_command(args: argparse.Namespace) -> int:
    """Run ``segpipe export``; return the exit status."""
    from pipeline.report.export import export_run

    print(export_run(config_from_args(args)).line())
    return 0


def run_import_command(args: argparse.Namespace) -> int:
    """Run ``segpipe model import``; return the exit status."""
    from pipeline.model.importing import import_model

    cfg = config_from_args(args)
    info = import_model(cfg)
    spec = info.spec
    size = (f"any size (multiples of {spec.multiple}), tile {spec.input_size[0]}" if spec.free_input
            else f"{spec.input_size[0]}x{spec.input_size[1]}")
    print(f"imported {cfg.keras} as {cfg.output}: {size}, {spec.channels} channel(s), classes "
          f"{', '.join(info.class_names)}{', logits' if spec.from_logits else ''}; scale {info.scale}")
    return 0


def run_train_command(args: argparse.Namespace) -> int:
    """Run ``segpipe train``; return the exit status."""
    from pipeline.train.run import planned_run, run_training

    cfg = config_from_args(args)
    if cfg.plan_only:
        for line in planned_run(cfg).plan.lines():
            print(line)
        return 0
    summary = run_training(cfg)
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


EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report Ctrl-C
EXIT_TERMINATED = 143  # 128 + SIGTERM


class Terminated(KeyboardInterrupt):
    """The process was asked to stop (SIGTERM): an interruption like Ctrl-C, recorded and resumable as one."""


def terminate(signum: int, frame: Any) -> None:
    """SIGTERM's handler: raise :class:`Terminated` in the main thread."""
    raise Terminated(f"signal {signum}")


def main(argv: Sequence[str] | None = None, command_line: bool | None = None) -> int:
    """Entry point of the ``segpipe`` console script; return the process exit status.

    ``command_line``: the process is the command (default: where ``argv`` is the process's own), so
    its console is set up whole, native stderr included (:func:`pipeline.console.filter_native_stderr`).
    """
    args = build_parser().parse_args(argv)
    console.setup(args.verbose)
    if (argv is None if command_line is None else command_line) and not args.verbose:
        console.filter_native_stderr()
    handler: Callable[[argparse.Namespace], int] = args.handler
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, terminate)  # a scheduler's stop is an interruption, as Ctrl-C is
    try:
        return handler(args)
    except user_errors() as exc:
        command = " ".join(filter(None, (args.command, getattr(args, "model_command", None))))
        print(f"segpipe {command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        for stop in (signal.SIGINT, signal.SIGTERM):  # a second stop must not cut the clean-up short
            signal.signal(stop, signal.SIG_IGN)
        resume = "; re-run the same command to resume" if args.command in ("segment", "train") else ""
        by = " (SIGTERM)" if isinstance(exc, Terminated) else ""
        print(f"segpipe {args.command}: interrupted{by}{resume}", file=sys.stderr)
        return EXIT_TERMINATED if isinstance(exc, Terminated) else EXIT_INTERRUPTED
    finally:
        shutdown_local_ray()
        console.close_native_filter()


if __name__ == "__main__":
    sys.exit(main())
