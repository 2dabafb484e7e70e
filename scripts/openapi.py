"""Writes the OpenAPI 3 document of the HTTP listener, generated from proto/ (through the
committed Python stubs) and the compatibility routes, as package data of the server.

Usage: python scripts/openapi.py   (scripts/generate.sh runs it; CI fails when stale)
"""

from __future__ import annotations

from pathlib import Path

from keyturn_server.api.http import openapi


def main() -> None:
    target = Path(openapi.__file__).with_name(openapi.FILE)
    target.write_text(openapi.render(openapi.build()))


if __name__ == "__main__":
    main()
