"""The layering cannot regress: the import contracts in pyproject.toml (import-linter) hold,
and the server uses only the Python client's public names."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parent.parent


def test_the_import_contracts_hold() -> None:
    """api -> domain -> protocols <- store; no domain import of store, api, grpc or protos."""
    lint_imports = Path(sys.executable).parent / "lint-imports"
    result = subprocess.run(
        [str(lint_imports), "--no-cache"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_the_server_imports_no_private_module_of_the_client() -> None:
    graph = grimp.build_graph("keyturn_server", "keyturn")
    private = sorted(
        f"{importer} -> {imported}"
        for importer in graph.modules
        if importer.startswith("keyturn_server")
        for imported in graph.find_modules_directly_imported_by(importer)
        if imported.startswith("keyturn.")
        and any(part.startswith("_") for part in imported.split(".")[1:])
    )
    assert private == []
