"""Operator commands against a running server, through the Python client:
`keyturn keys|handles|config|audit|health|watch ...`, one module per command group
(see :mod:`wiring` for the flags, exit codes and the connection they share).
"""

from __future__ import annotations

from typing import Any

from keyturn_server.cli.operator import audit, config, handles, keys, watch
from keyturn_server.cli.operator.wiring import connect

__all__ = ["connect", "register"]


def register(commands: Any) -> None:
    for group in (keys, handles, config, audit, watch):
        group.register(commands)
