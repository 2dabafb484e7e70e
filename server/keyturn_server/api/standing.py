"""Open streams follow their credentials: whether the caller that opened a stream still
may receive it, and the sweep that ends the streams of callers who no longer may.

A stream lives for hours, and its caller was authenticated once, when it opened: before,
a revoked or expired access token (or a client certificate that a reloaded identities
file no longer maps to the same principal) kept its open WatchExpiring streams, and with
``deliver_tokens`` went on receiving every newly rotated handle secret. The credentials
are checked again before any message that carries a secret and at least every
RECHECK_SECONDS before others.

That alone left an idle stream open until its next message: a heartbeat, every 30 s by
default, so a thief's stream outlived the revocation of its token by up to half a minute
(found by an attack pass). One sweep per process now checks every open stream each
RECHECK_SECONDS, which costs an idle stream no wake-up of its own, and ends those whose
credentials no longer stand by cancelling their task; the guard turns that cancellation
into UNAUTHENTICATED.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator

from keyturn_server.api import auth
from keyturn_server.domain.access import Principal
from keyturn_server.domain.errors import KeyturnError, Unauthenticated

log = logging.getLogger("keyturn.api")

#: How often an open stream's credentials are checked again, at the latest (a message
#: carrying a secret is never sent without a check). Every process sees a revocation on
#: its next check (domain/access_token_service.py).
RECHECK_SECONDS = 1.0


class Standing:
    """Whether the caller that opened a stream still may receive it."""

    __slots__ = ("_auth", "_caller", "_due", "_who", "ended", "task")

    def __init__(self, authenticator: auth.Authenticator, caller: auth.Caller, who: Principal):
        self._auth = authenticator
        self._caller = caller
        self._who = who
        self._due = time.monotonic() + RECHECK_SECONDS
        #: Why the sweep ended the stream (its task was cancelled for it), if it did.
        self.ended: Unauthenticated | None = None
        self.task = asyncio.current_task()

    def check(self, carries_secret: bool, force: bool = False) -> None:
        """Raise Unauthenticated when the credentials no longer name the same principal
        with the same role (only every RECHECK_SECONDS unless a secret is to be sent)."""
        now = time.monotonic()
        if now < self._due and not carries_secret and not force:
            return
        self._due = now + RECHECK_SECONDS
        self.judge(self.identify(recheck=not carries_secret))

    @property
    def credential(self) -> str:
        """The bearer credential the stream was opened with ("" for a certificate)."""
        return self._caller.authorization

    def identify(self, recheck: bool) -> Principal | Unauthenticated:
        """Who the credentials name now, or why they name nobody."""
        try:
            return self._auth.identify(self._caller, recheck=recheck)
        except Unauthenticated:
            return Unauthenticated(
                "the credentials this stream was opened with were revoked or expired",
                reason="CREDENTIALS_REVOKED",
            )

    def judge(self, again: Principal | Unauthenticated) -> None:
        if isinstance(again, Unauthenticated):
            raise again
        if again.name != self._who.name or again.role is not self._who.role:
            raise Unauthenticated(
                "the credentials this stream was opened with now name another principal "
                "or role: open the stream again",
                reason="CREDENTIALS_CHANGED",
            )


class Sweep:
    """Checks every open stream of this process each RECHECK_SECONDS, while there are
    some, and cancels the task of each whose credentials no longer stand."""

    def __init__(self) -> None:
        self._open: set[Standing] = set()
        self._task: asyncio.Task[None] | None = None

    @contextlib.contextmanager
    def watching(self, standing: Standing) -> Iterator[None]:
        self._open.add(standing)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="keyturn-sweep")
        try:
            yield
        finally:
            self._open.discard(standing)

    async def _run(self) -> None:
        while self._open:
            await asyncio.sleep(RECHECK_SECONDS)
            # A thousand streams of one token cost one authentication per sweep.
            verdicts: dict[str, Principal | Unauthenticated] = {}
            for standing in list(self._open):
                if standing.ended is not None or standing.task is None:
                    continue
                try:
                    credential = standing.credential
                    again = verdicts.get(credential) if credential else None
                    if again is None:
                        again = standing.identify(recheck=True)
                        if credential:
                            verdicts[credential] = again
                    standing.judge(again)
                except Unauthenticated as exc:
                    standing.ended = exc
                    standing.task.cancel()
                except KeyturnError:  # a store that is away: the stream's own checks decide
                    log.debug("stream credentials not checked", exc_info=True)
