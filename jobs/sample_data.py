"""Ray job entrypoint: ``python jobs/sample_data.py --output URL [KEY=VALUE ...]`` (same as ``segpipe sample-data``)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from jobs.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["sample-data", *sys.argv[1:]]))
