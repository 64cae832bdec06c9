"""Ray job entrypoint: ``python jobs/train.py --config jobs/configs/train.yaml [KEY=VALUE ...]``.

Same options as ``segpipe train``; suitable for ``ray job submit --working-dir . -- python jobs/train.py ...``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from jobs.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]], command_line=True))
