"""The package's shape, read from its import graph (grimp parses every import, deferred ones included):
no import cycles, a core that imports no program, programs that do not import each other."""

from __future__ import annotations

from functools import cache

import grimp
import pytest

PROGRAMS = ("api", "stream_processor", "producers", "trainer")
ABOVE_CORE = (*PROGRAMS, "cli", "devtools")


@cache
def graph() -> grimp.ImportGraph:
    return grimp.build_graph("streamrec")


def _owner(module: str) -> str:
    """The top part of ``streamrec`` a module belongs to: a program, cli, devtools, or 'core'."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in ABOVE_CORE else "core"


def cycles(g: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), i.e. every import cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in sorted(g.modules):
        if root in index:
            continue
        work = [(root, iter(sorted(g.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(g.find_modules_directly_imported_by(child)))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_import_cycles() -> None:
    assert cycles(graph()) == []


def test_cycle_finder_finds_a_cycle() -> None:
    g = grimp.ImportGraph()
    for name in ("p", "p.a", "p.b", "p.c"):
        g.add_module(name)
    g.add_import(importer="p.a", imported="p.b")
    g.add_import(importer="p.b", imported="p.c")
    g.add_import(importer="p.c", imported="p.a")
    assert cycles(g) == [["p.a", "p.b", "p.c"]]


def test_core_imports_no_program() -> None:
    g = graph()
    wrong = [
        (module, imported)
        for module in sorted(g.modules)
        if _owner(module) == "core"
        for imported in sorted(g.find_modules_directly_imported_by(module))
        if _owner(imported) != "core"
    ]
    assert wrong == []


@pytest.mark.parametrize("program", PROGRAMS)
def test_programs_do_not_import_each_other(program: str) -> None:
    g = graph()
    wrong = [
        (module, imported)
        for module in sorted(g.modules)
        if _owner(module) == program
        for imported in sorted(g.find_modules_directly_imported_by(module))
        if _owner(imported) not in {program, "core"}
    ]
    assert wrong == []
