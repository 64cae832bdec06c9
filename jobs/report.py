"""Ray job entrypoint: ``python jobs/report.py --config jobs/configs/report.yaml [KEY=VALUE ...]``.

Same options as ``segpipe report``; suitable for ``ray job submit --working-dir . -- python jobs/report.py ...``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from jobs.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["report", *sys.argv[1:]]))
