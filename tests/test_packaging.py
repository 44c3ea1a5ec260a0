"""Packaging: every Python package folder is declared in setup.cfg and the kernel sources ship as package data."""

from __future__ import annotations

import configparser
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _setup_cfg() -> configparser.ConfigParser:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    return cfg


def test_every_package_folder_is_declared():
    cfg = _setup_cfg()
    declared = set(cfg["options"]["packages"].split())
    mapping = dict(line.split(" = ") for line in cfg["options"]["package_dir"].strip().splitlines())
    found = set()
    for pkg, folder in mapping.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            found.add(".".join([pkg, *rel.parts]) if rel.parts else pkg)
    # Subfolders of a mapped folder that are themselves mapped (none today) would appear twice; both names agree.
    assert found == declared, f"setup.cfg packages differ from the package folders: missing {found - declared}, stale {declared - found}"


def test_kernel_sources_are_package_data():
    patterns = _setup_cfg()["options.package_data"]["resfu_med.csrc"].replace(" ", "").split(",")
    sources = [p for p in (ROOT / "csrc").rglob("*") if p.suffix in {".h", ".cpp", ".cu", ".cuh"}]
    for src in sources:
        rel = src.relative_to(ROOT / "csrc").as_posix()
        assert any(Path(rel).match(pat) for pat in patterns), f"{rel} would not be installed"


def test_test_module_names_are_unique():
    # Test folders are not packages (rootdir "prepend" import mode), so two test files with one basename cannot both
    # be collected: pytest refuses the second.
    names = [p.name for p in (ROOT / "tests").rglob("*.py") if p.name != "conftest.py"]
    dupes = sorted({n for n in names if names.count(n) > 1})
    assert not dupes, f"test module basenames must be unique across tests/: {dupes}"
