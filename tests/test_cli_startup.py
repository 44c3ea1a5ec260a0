"""Start-up cost: a command registers only its own options, so it does not import what other commands need
(``train``'s options come from the network registry: torch, the networks)."""

from __future__ import annotations

import json
import subprocess
import sys

PROBE = """
import json, sys
from resfu_med.cli import main
try:
    main({argv!r})
except SystemExit:
    pass
print(json.dumps(sorted(m for m in ("torch", "monai", "resfu_med.networks", "resfu_med.engine.config") if m in sys.modules)))
"""


def _imported(argv: list[str]) -> list[str]:
    out = subprocess.run([sys.executable, "-c", PROBE.format(argv=argv)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_top_level_help_imports_no_torch():
    assert _imported(["--help"]) == []


def test_prepare_does_not_import_the_networks():
    # MONAI is needed by prepare itself (the intensity transforms, and the dataset registry behind --dataset's help)
    assert _imported(["prepare", "--help"]) == ["monai", "torch"]


def test_exit_skips_the_final_collections():
    # the command line registers gc.freeze at exit: the interpreter's final collections skip torch's and MONAI's
    # objects (docs/scale.md, "fixed cost"); nothing else about the exit changes
    probe = ("import atexit, gc, resfu_med.cli; assert gc.get_freeze_count() == 0; atexit._run_exitfuncs(); "
             "print(gc.get_freeze_count())")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert int(out.stdout.strip()) > 0
