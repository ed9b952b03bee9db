"""Figure output shared by the analysis and result tools."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def save_png(fig, path: str | os.PathLike) -> Path:
    """Write a matplotlib figure as PNG atomically (a temporary file in the same folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".png", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fig.savefig(fh, format="png")
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would make the figure private
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path
