#!/usr/bin/env python3
"""The import graph of keyturn_server between its parts, as edges with import counts.

    .venv/bin/python scripts/import-graph.py          # the parts and who imports whom
    .venv/bin/python scripts/import-graph.py --dot    # Graphviz (| dot -Tsvg > graph.svg)

A part is a subpackage (api, domain, store, crypto, cli, observability) or a top-level
module (app, settings, ...); domain.repositories, the protocols the store implements,
is shown as its own part. The rules themselves are checked by tests/test_layers.py.
"""

from __future__ import annotations

import sys
from collections import Counter

import grimp

ROOT = "keyturn_server"
OWN_PARTS = ("domain.repositories",)


def part(module: str) -> str:
    name = module.removeprefix(ROOT + ".")
    if module == ROOT:
        return "(package)"
    for own in OWN_PARTS:
        if name == own or name.startswith(own + "."):
            return own
    return name.split(".")[0]


def edges() -> Counter[tuple[str, str]]:
    graph = grimp.build_graph(ROOT)
    found: Counter[tuple[str, str]] = Counter()
    for importer in graph.modules:
        for imported in graph.find_modules_directly_imported_by(importer):
            a, b = part(importer), part(imported)
            if a != b:
                found[(a, b)] += 1
    return found


def main() -> int:
    found = edges()
    if "--dot" in sys.argv[1:]:
        print("digraph keyturn_server {\n  rankdir=LR;")
        for (a, b), n in sorted(found.items()):
            print(f'  "{a}" -> "{b}" [label="{n}"];')
        print("}")
        return 0
    width = max(len(a) for a, _ in found)
    for (a, b), n in sorted(found.items()):
        print(f"{a:<{width}} -> {b}  ({n} imports)")
    into_store = sorted(a for a, b in found if b == "store")
    print(f"\nimports of store: from {', '.join(into_store) or 'nothing'}")
    print(f"domain -> store: {found[('domain', 'store')]} imports")
    return 0


if __name__ == "__main__":
    sys.exit(main())
