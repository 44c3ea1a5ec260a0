"""The package's layers (docs/design.md) hold: every import points to a lower line of the diagram, and no CLI module
imports another CLI module's private names. Imports are read with ``ast`` (nothing is imported)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: source folder → the package it installs as (setup.cfg ``package_dir``)
PACKAGES = {"resfu_med": "resfu_med", "networks": "resfu_med.networks", "data": "resfu_med.data"}


def _diagram() -> list[set[str]]:
    """The layers of docs/design.md, top first; each a set of peers (``a | b``)."""
    text = (ROOT / "docs" / "design.md").read_text(encoding="utf-8")
    block = re.search(r"<!-- layers -->\s*```text\n(.*?)```\s*<!-- /layers -->", text, re.S)
    assert block, "docs/design.md lost its <!-- layers --> diagram"
    layers = []
    for line in block.group(1).splitlines():
        names = re.match(r"\s*([\w_]+(?:\s*\|\s*[\w_]+)*)", line)
        if names:
            layers.append({n.strip() for n in names.group(1).split("|")})
    return layers


def _modules() -> dict[str, Path]:
    out = {}
    for folder, package in PACKAGES.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            name = ".".join((package, *parts))
            out[name.removesuffix(".__init__")] = path
    return out


def _imports(name: str, path: Path) -> list[tuple[str, list[str], int]]:
    """``(imported module, imported names, line)`` of every import in one file, relative ones resolved."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(a.name, [], node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else [])) if node.level else node.module
            found.append((module, [a.name for a in node.names], node.lineno))
    return found


def _layer(module: str, names: set[str]) -> str | None:
    """The diagram name of a ``resfu_med`` module (``resfu_med.engine.trainer`` → ``engine``), else ``None``."""
    parts = module.split(".")
    if parts[0] != "resfu_med":
        return None
    key = parts[1] if len(parts) > 1 else "resfu_med"
    assert key in names, f"{module}: not in the docs/design.md layer diagram"
    return key


def test_every_import_points_down_the_diagram():
    layers = _diagram()
    rank = {n: i for i, peers in enumerate(layers) for n in peers}
    bad = []
    for name, path in _modules().items():
        src = _layer(name, set(rank))
        for module, _, line in _imports(name, path):
            dst = _layer(module, set(rank)) if module else None
            if dst is not None and dst != src and rank[dst] <= rank[src]:
                bad.append(f"{path.relative_to(ROOT)}:{line}: {src} imports {module} ({dst} is not below {src})")
    assert not bad, "\n".join(bad)


def test_cli_modules_use_no_private_names_of_each_other():
    bad = []
    for name, path in _modules().items():
        if not name.startswith("resfu_med.cli."):
            continue
        for module, names, line in _imports(name, path):
            if module and module.startswith("resfu_med.cli.") and module != name:
                bad += [f"{path.relative_to(ROOT)}:{line}: {module}.{n}" for n in names if n.startswith("_")]
    assert not bad, "\n".join(bad)


def test_the_checker_sees_upward_imports():
    # not vacuous: the parser resolves relative imports and the diagram ranks them
    rank = {n: i for i, peers in enumerate(_diagram()) for n in peers}
    assert rank["cli"] < rank["engine"] < rank["networks"] < rank["ops"] < rank["errors"]
    assert rank["data"] == rank["networks"] == rank["metrics"]
    mods = _modules()
    assert any(m == "resfu_med.data.cache" for m, _, _ in _imports("resfu_med.data.acdc", mods["resfu_med.data.acdc"]))
    trainer = [m for m, _, _ in _imports("resfu_med.engine.trainer", mods["resfu_med.engine.trainer"])]
    assert "resfu_med.networks.model_registry" in trainer


def test_no_import_cycles_between_modules():
    # function-local imports count too: they hide cycles (the data registry and its adapters had one)
    mods = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        deps = set()
        for module, names, _ in _imports(name, path):
            targets = [module, *(f"{module}.{n}" for n in names)] if module else []
            deps |= {t for t in targets if t in mods and t != name}
        # a package re-exporting its submodules, and a submodule importing its package's names, are not cycles
        graph[name] = {d for d in deps if not d.startswith(f"{name}.") and not name.startswith(f"{d}.")}
    seen: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        seen[node] = 1
        for dep in sorted(graph[node]):
            if seen.get(dep) == 1:
                cycles.append(" -> ".join(path[path.index(dep):] + [dep]))
            elif dep not in seen:
                visit(dep, path + [dep])
        seen[node] = 2

    for start in sorted(graph):
        if start not in seen:
            visit(start, [start])
    assert not cycles, "\n".join(cycles)
