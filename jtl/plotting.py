"""Figure output shared by the analysis and result tools."""

from __future__ import annotations

import os
from pathlib import Path

from jtl.fileio import atomic_open


def save_png(fig, path: str | os.PathLike, dpi: float | None = None) -> Path:
    """Write a matplotlib figure as PNG atomically (a temporary file in the same folder, then rename)."""
    path = Path(path)
    with atomic_open(path, "wb") as fh:  # mode from the umask, like any file the user creates
        fig.savefig(fh, format="png", **({"dpi": dpi} if dpi else {}))
    return path
