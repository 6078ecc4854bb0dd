"""The layer contract and the size rule (docs/architecture.md): checked on the source tree."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

grimp = pytest.importorskip("grimp")  # installed with import-linter (the dev extra)

SRC = Path(__file__).resolve().parents[1] / "src" / "eviltwins"
MAX_LINES = 450


def _import_cycles() -> list[list[str]]:
    """Strongly connected groups of modules (in-function and TYPE_CHECKING imports count)."""
    graph = grimp.build_graph("eviltwins", cache_dir=None)
    edges = {m: sorted(graph.find_modules_directly_imported_by(m)) for m in graph.modules}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's algorithm
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                cycles.append(sorted(group))

    for m in sorted(edges):
        if m not in index:
            visit(m)
    return cycles


def test_no_import_cycle() -> None:
    assert _import_cycles() == []


def test_layer_contract_holds() -> None:
    lint = Path(sys.executable).with_name("lint-imports")
    if not lint.exists():
        pytest.skip("lint-imports is not installed (the dev extra installs it)")
    res = subprocess.run(
        [str(lint), "--no-cache"],
        cwd=SRC.parents[1],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stdout[-3000:]


def test_no_module_over_450_lines() -> None:
    sizes = {str(p.relative_to(SRC)): len(p.read_text().splitlines()) for p in SRC.rglob("*.py")}
    assert {k: v for k, v in sizes.items() if v > MAX_LINES} == {}


def test_nothing_imports_the_doors() -> None:
    """``api`` and ``cli`` are doors, not rooms: only the package root and ``__main__`` may
    import them."""
    graph = grimp.build_graph("eviltwins", cache_dir=None)
    doors = {m for m in graph.modules if m.split(".")[1:2] in (["api"], ["cli"])}
    importers = set()
    for door in doors:
        importers |= {
            m
            for m in graph.find_modules_that_directly_import(door)
            if m not in doors and m not in ("eviltwins", "eviltwins.__main__")
        }
    assert importers == set()
