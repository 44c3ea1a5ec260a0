"""``python -m resfu_med`` runs the ``resfu-med`` command line (also under ``torchrun``)."""

from __future__ import annotations

import sys

from resfu_med.cli import main

if __name__ == "__main__":
    sys.exit(main())
