"""Figures for the HTML pages segpipe writes (the report, training.html): matplotlib on the Agg backend,
embedded as PNG data URIs so that each page is one self-contained file."""

from __future__ import annotations

import base64
import io
from typing import Any


def png_data_uri(data: bytes) -> str:
    """Return a ``data:image/png;base64,...`` URI."""
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def figure_uri(figure: Any) -> str:
    """Return a matplotlib figure as a PNG data URI and close it."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(figure)
    return png_data_uri(buffer.getvalue())


def pyplot() -> Any:
    """Return matplotlib.pyplot on the Agg backend (no display)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt
