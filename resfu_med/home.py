"""resfu-med's own folder for generated and cached files (demo data, prepared datasets, the compiled operator)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["resfu_home"]


def resfu_home() -> Path:
    """``$RESFU_MED_HOME``, or ``~/.cache/resfu-med`` when it is unset."""
    return Path(os.environ.get("RESFU_MED_HOME") or Path.home() / ".cache" / "resfu-med").expanduser()
