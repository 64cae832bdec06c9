"""What a person sees of a run: a quiet console, the workers' warnings once, live progress.

By default (:data:`VERBOSITY` 0) the console holds segpipe's own lines: the plan, progress, one
line per training epoch, warnings, the summary. TensorFlow's C++ start-up lines, Ray's start-up
notices, Ray Data's plan and progress blocks and everything the workers print stay out of it: the
workers' output stays in Ray's log files (``ray.init(log_to_driver=False)``, under
``/tmp/ray/session_latest/logs``). ``-v`` (1) brings the workers' lines and Ray's and other
libraries' INFO lines back; ``-vv`` (2) adds debug lines.

A warning logged by segpipe's code in a worker (a retry, a skipped sample, an image that could
not be written) reaches the driver beside the data, through Ray's cluster key-value store
(:class:`WorkerWarnings`), and is shown once per kind. The same store carries what a worker tells
the driver during a run (:func:`publish`; training's steps and epochs), read by :class:`Watch`.

A live display (:class:`LiveBar`: one line, redrawn in place, log lines printed above it) is
drawn only where the console is a terminal; a log (CI, Ray Jobs, KubeRay) gets lines instead.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import sys
import threading
import uuid
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

VERBOSITY = 0  # 0: quiet; 1: -v, the workers' and libraries' lines; 2: -vv, debug lines too
OWN_LOGGERS = ("pipeline", "jobs", "segpipe")
CHANNELS = "segpipe-console"  # key-value namespace of what workers tell the driver during a run
WARNINGS = "segpipe-console-warnings"  # key-value namespace of the workers' warnings
POLL_SECONDS = 0.5


class StderrHandler(logging.StreamHandler):
    """A handler writing to ``sys.stderr`` as it is at each record, so that a live display that
    redirects it prints the record above itself."""

    def __init__(self) -> None:
        super().__init__()

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:  # logging.StreamHandler sets it; sys.stderr is read at each record
        pass


class ConsoleFormatter(logging.Formatter):
    """``HH:MM:SS message`` (``warning:`` or ``error:`` before the message where it is one); with -v the
    level and logger name too."""

    def __init__(self, verbose: int) -> None:
        detail = "%(levelname)s %(name)s: " if verbose else ""
        super().__init__(f"%(asctime)s {detail}%(message)s", datefmt="%H:%M:%S")
        self.verbose = verbose

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        text = super().formatMessage(record)
        if self.verbose or record.levelno < logging.WARNING:
            return text
        stamp, _, message = text.partition(" ")
        return f"{stamp} {'warning' if record.levelno < logging.ERROR else 'error'}: {message}"


def setup(verbose: int = 0) -> None:
    """Set this process's console up for ``verbose`` (see the module's text); call it before TensorFlow
    or Ray is imported, as the command line does."""
    global VERBOSITY
    VERBOSITY = verbose
    handler = StderrHandler()
    handler.setFormatter(ConsoleFormatter(verbose))
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, StderrHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING)
    for name in OWN_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG if verbose > 1 else logging.INFO)
    if not verbose:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ INFO and WARNING lines in this process
        # said at every start of a local Ray; a cluster that needs the token says so when it refuses one
        logging.getLogger("ray._private.authentication").setLevel(logging.ERROR)


# What the native code of a quiet driver writes to its stderr and the filter drops: TensorFlow's (absl's)
# INFO and WARNING lines and the preamble before them, the continuation of its CPU-features line, Ray's
# C++ INFO and WARNING lines, and Ray's ERROR line about Ray Data's actor constructor arguments (Ray
# Data passes them by reference on purpose: a false alarm, ray-project/ray#53727).
NATIVE_NOISE = (
    r"^(WARNING: All log messages before absl::InitializeLog\(\) is called"
    r"|[IW]\d{4} [\d:.]+ +\d+ \S+:\d+\] "
    r"|To enable the following instructions: .* rebuild TensorFlow"
    r"|\[\d{4}-\d\d-\d\d [\d:,.]+ [IW] \d+ \d+\] "
    r"|\[\d{4}-\d\d-\d\d [\d:,.]+ E \d+ \d+\] core_worker\.cc:\d+: Actor with class name: .* has constructor "
    r"arguments in the object store)"
)
# The filter process: it ignores Ctrl-C and SIGTERM (it ends when the driver's stderr closes, so that a
# crash's last native lines still reach the console) and passes every other line through at once.
FILTER_PROGRAM = """
import re, signal, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGTERM, signal.SIG_IGN)
noise = re.compile(sys.argv[1].encode())
out = sys.stdout.buffer
for line in iter(sys.stdin.buffer.readline, b""):
    if not noise.match(line):
        out.write(line)
        out.flush()
"""
_native_filter: Any = None  # (filter process, the console's file descriptor)


def filter_native_stderr() -> None:
    """Route this process's native stderr (file descriptor 2, where TensorFlow's and Ray's C++ code
    write) through a filter process that drops :data:`NATIVE_NOISE` and passes everything else, an
    error or a crash's last words included; Python's ``sys.stderr`` keeps writing to the console
    itself (a terminal stays a terminal for the live display). For the command line's quiet mode
    (TensorFlow's C++ start-up lines ignore ``TF_CPP_MIN_LOG_LEVEL`` before absl is initialised).
    """
    global _native_filter
    if _native_filter is not None or os.name != "posix":
        return
    import subprocess

    sys.stderr.flush()
    console_fd = os.dup(2)
    process = subprocess.Popen([sys.executable, "-c", FILTER_PROGRAM, NATIVE_NOISE], stdin=subprocess.PIPE,
                               stdout=console_fd, stderr=subprocess.DEVNULL)
    os.dup2(process.stdin.fileno(), 2)
    process.stdin.close()
    sys.stderr = open(console_fd, "w", buffering=1, encoding=sys.stderr.encoding, errors="backslashreplace",
                      closefd=False)
    _native_filter = (process, console_fd)


def close_native_filter() -> None:
    """Give file descriptor 2 back to the console and let the filter process pass its last lines."""
    global _native_filter
    if _native_filter is None:
        return
    process, console_fd = _native_filter
    _native_filter = None
    sys.stderr.flush()
    os.dup2(console_fd, 2)
    try:
        process.wait(timeout=2.0)
    except Exception:  # noqa: BLE001 - a child process still holding the pipe keeps it open; it ends with them
        pass


def ray_init_options() -> dict[str, Any]:
    """Return the ``ray.init`` options of the console's verbosity: whether the workers' output is shown."""
    return {"log_to_driver": VERBOSITY > 0, "logging_level": logging.INFO if VERBOSITY else logging.WARNING}


def quiet_ray_data() -> None:
    """Keep Ray Data's plan, progress blocks and "execution finished" lines out of a quiet console (its
    warnings stay); they remain in Ray Data's log file. Call after Ray Data is imported."""
    if VERBOSITY:
        return
    from ray.data import DataContext

    context = DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # "progress bars disabled": as asked
    for handler in logging.getLogger("ray.data").handlers:
        if not isinstance(handler, logging.FileHandler):
            handler.setLevel(logging.WARNING)


def interactive() -> bool:
    """Return whether the console is a terminal that a live display can redraw."""
    try:
        return sys.stderr.isatty() and os.environ.get("TERM", "") != "dumb"
    except (AttributeError, ValueError):
        return False


def duration(seconds: float | None) -> str:
    """Return ``seconds`` as ``H:MM:SS`` ("unknown" for None)."""
    return "unknown" if seconds is None else str(dt.timedelta(seconds=max(0, round(seconds))))


class LiveBar:
    """One live line on a terminal: a name, a bar and a text, redrawn in place (rich); log lines print
    above it while it runs (``with bar:``, or start and stop). Where the console is not a terminal it
    draws nothing."""

    def __init__(self, name: str, enabled: bool | None = None) -> None:
        self.name = name
        self.enabled = interactive() if enabled is None else enabled
        self.progress: Any = None
        self.task: Any = None

    def start(self) -> LiveBar:
        if self.enabled and self.progress is None:
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn

            self.progress = Progress(TextColumn("{task.description}"), BarColumn(bar_width=30),
                                     TextColumn("{task.fields[text]}"), console=Console(stderr=True),
                                     redirect_stderr=True, redirect_stdout=True)
            self.task = self.progress.add_task(self.name, total=None, text="starting")
            self.progress.start()
        return self

    def update(self, completed: float, total: float | None, text: str) -> None:
        if self.progress is not None:
            self.progress.update(self.task, completed=completed, total=total, text=text)

    def stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None

    def __enter__(self) -> LiveBar:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ------------------------------------------------------------------------ from the workers


def kv_store() -> Any:
    """Return Ray's internal key-value module where this process is connected to Ray, else None."""
    try:
        from ray.experimental import internal_kv
    except ImportError:
        return None
    return internal_kv if internal_kv._internal_kv_initialized() else None


def _job_id() -> str:
    import ray

    return ray.get_runtime_context().get_job_id()


def new_channel() -> str:
    """Return a channel name for one run's messages from its workers."""
    return uuid.uuid4().hex[:16]


def publish(channel: str, key: str, payload: dict[str, Any]) -> None:
    """Put ``payload`` under ``key`` of ``channel`` (a later one under the same key replaces it); never fails."""
    store = kv_store()
    if store is None or not channel:
        return
    try:
        store._internal_kv_put(f"{channel}/{key}", json.dumps(payload), overwrite=True, namespace=CHANNELS)
    except Exception as exc:  # noqa: BLE001 - what the console shows is no reason to fail a run
        log.debug("message %s on %s was not sent: %s", key, channel, exc)


class WorkerWarnings(logging.Handler):
    """Sends the first warning of each kind this worker process logs to the driver (:class:`Watch`)."""

    def __init__(self, job: str) -> None:
        super().__init__(logging.WARNING)
        self.job = job
        self.sent: set[str] = set()

    def emit(self, record: logging.LogRecord) -> None:
        kind = f"{record.name}:{record.msg}"
        if kind in self.sent:
            return
        self.sent.add(kind)
        store = kv_store()
        if store is None:
            return
        try:
            store._internal_kv_put(f"{self.job}/{os.getpid()}-{uuid.uuid4().hex[:8]}",
                                   json.dumps({"kind": kind, "message": record.getMessage()}), namespace=WARNINGS)
        except Exception:  # noqa: BLE001 - a lost warning is no reason to lose an image
            pass


_forwarding = False


def forward_worker_warnings() -> None:
    """In a Ray worker, send segpipe's warnings to the driver's console (once per process; a no-op elsewhere).

    Called where segpipe's code starts in a worker: the read task, the model and writer actors,
    the training loop and its data stages.
    """
    global _forwarding
    if _forwarding or kv_store() is None:
        return
    import ray

    worker = ray._private.worker.global_worker
    if getattr(worker, "mode", None) != ray._private.worker.WORKER_MODE:
        return
    logging.getLogger(OWN_LOGGERS[0]).addHandler(WorkerWarnings(_job_id()))
    _forwarding = True


class Watch:
    """A driver thread that shows the workers' warnings (each kind once) and hands what they publish on
    ``channel`` to ``on_message(key, payload)``, every :data:`POLL_SECONDS`; use it as a context manager.

    Leaving the block reads once more, so that nothing a finished worker published is missed.
    """

    def __init__(self, channel: str = "", on_message: Callable[[str, dict[str, Any]], None] | None = None) -> None:
        self.channel = channel
        self.on_message = on_message
        self.shown: set[str] = set()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self.run, name="segpipe-console", daemon=True)
        self.job = ""

    def __enter__(self) -> Watch:
        if kv_store() is not None:
            self.job = _job_id()
            self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.thread.is_alive():
            self.stopped.set()
            self.thread.join(5.0)
            self.poll()

    def run(self) -> None:
        while not self.stopped.wait(POLL_SECONDS):
            self.poll()

    def poll(self) -> None:
        store = kv_store()
        if store is None:
            return
        try:
            self.show_warnings(store)
            if self.channel and self.on_message is not None:
                for key in sorted(store._internal_kv_list(self.channel + "/", namespace=CHANNELS)):
                    value = store._internal_kv_get(key, namespace=CHANNELS)
                    store._internal_kv_del(key, namespace=CHANNELS)
                    if value:
                        self.on_message(key.decode().split("/", 1)[1], json.loads(value))
        except Exception as exc:  # noqa: BLE001 - the console is a view of the run, never its cause of failure
            log.debug("the console could not read the workers' messages: %s", exc)

    def show_warnings(self, store: Any) -> None:
        for key in store._internal_kv_list(self.job + "/", namespace=WARNINGS):
            value = store._internal_kv_get(key, namespace=WARNINGS)
            store._internal_kv_del(key, namespace=WARNINGS)
            warning = json.loads(value or b"{}")
            if VERBOSITY or not warning or warning["kind"] in self.shown:
                continue  # with -v the worker's own line is on the console already
            self.shown.add(warning["kind"])
            log.warning("%s", warning["message"])
