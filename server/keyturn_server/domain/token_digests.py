"""The digests a presented handle token is looked up by.

A handle's secret is stored as a keyed digest under its type's algorithm as it was when
the handle was issued, and keeps that algorithm through its rotations (it is copied onto
the handle). UpdateConfig may change a type's algorithm since, and a type change is for
new handles only. So a token is looked up with its type's current algorithm first and,
when that finds nothing, with the others. Looking up with the current one alone refused
every handle issued before the change as an unknown token, its owner's calls included,
and counted those refusals against the owner until it was throttled.
"""

from __future__ import annotations

from collections.abc import Iterator

from keyturn_server.crypto.algorithms import HANDLE_ALGORITHMS
from keyturn_server.crypto.keyring import Keyring
from keyturn_server.domain.config_service import ConfigService
from keyturn_server.domain.tokens import ParsedToken

ALGORITHMS = tuple(HANDLE_ALGORITHMS)


class TokenDigests:
    def __init__(self, keyring: Keyring, config: ConfigService) -> None:
        self._keyring = keyring
        self._config = config

    def _current(self, parsed: ParsedToken) -> str | None:
        handle_type = self._config.current.handle_types.get(parsed.type)
        return handle_type.algorithm if handle_type is not None else None

    def first(self, parsed: ParsedToken) -> list[bytes]:
        """The digest under the type's current algorithm; under every algorithm for a
        type no longer configured (its handles live on)."""
        current = self._current(parsed)
        if current is None:
            return [self._keyring.digest(parsed.text, a) for a in ALGORITHMS]
        return [self._keyring.digest(parsed.text, current)]

    def others(self, parsed: ParsedToken) -> list[bytes]:
        """The digests :meth:`first` left out: for a handle issued before its type's
        algorithm changed."""
        current = self._current(parsed)
        if current is None:
            return []
        return [self._keyring.digest(parsed.text, a) for a in ALGORITHMS if a != current]

    def every(self, parsed: ParsedToken) -> Iterator[bytes]:
        """First, then the others, computed as they are asked for."""
        yield from self.first(parsed)
        yield from self.others(parsed)
