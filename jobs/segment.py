"""Ray job entrypoint: ``python jobs/segment.py --config jobs/configs/segment.yaml [KEY=VALUE ...]``.

Same options as ``segpipe segment``; suitable for ``ray job submit --working-dir . -- python jobs/segment.py ...``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from jobs.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["segment", *sys.argv[1:]], command_line=True))
