"""The optional native extension (``native/``, Rust via PyO3): the token shape check and
the keyed token digest, the pure steps of every validation.

Measured in a loop on this machine: parse 0.09 µs and digest 0.20 µs native, against
1.6 µs and 1.3 µs in Python (and 10-14 µs and 9-29 µs inside a loaded server, where
every allocation and GIL release counts). The Python implementations
(:mod:`keyturn_server.domain.tokens`, :class:`keyturn_server.crypto.keyring.Keyring`) stay
the reference, and the test suite runs both.

``KEYTURN_NATIVE`` chooses: ``auto`` (the default) uses the extension when it is
installed, ``0`` never does, ``1`` requires it (the server refuses to start without it).
"""

from __future__ import annotations

import importlib
import os
from typing import Protocol, cast

MODULE = "keyturn_native"


class TokenMac(Protocol):
    def digest(self, secret: str, algorithm: str) -> bytes: ...


class NativeApi(Protocol):
    """What ``keyturn_native`` offers (see native/src/lib.rs)."""

    def token_type(self, token: str) -> str | None: ...

    def TokenMac(self, key: bytes) -> TokenMac: ...  # a class in the extension


class NativeMissing(RuntimeError):
    """KEYTURN_NATIVE=1 but the extension is not installed."""


_MODE = os.environ.get("KEYTURN_NATIVE", "auto").strip().lower()


def _load(mode: str) -> NativeApi | None:
    if mode in ("0", "off", "false", "no"):
        return None
    try:
        return cast(NativeApi, importlib.import_module(MODULE))
    except ImportError:
        return None


#: The extension in use, or None for the pure-Python implementations.
api: NativeApi | None = _load(_MODE)


def check() -> None:
    """Refuse to start when KEYTURN_NATIVE=1 asks for an extension that is not there."""
    if api is None and _MODE in ("1", "on", "true", "yes", "require"):
        raise NativeMissing(
            "KEYTURN_NATIVE=1 but the native extension is not installed (build it with "
            "`make setup` where cargo is available, or `pip install ./native`)"
        )


def implementation() -> str:
    """'native' or 'python': which token checks this process runs (logged at start)."""
    return "native" if api is not None else "python"
