"""What a worker of ``--workers`` tells the others about itself: its figures, on a Unix
socket in the supervisor's private directory (mode 0700: only the server's user reaches
it).

One request per connection: a command word and a newline (``metrics``, ``statistics``);
the answer is the command's bytes, then the connection closes. The supervisor asks every
worker for its metrics at each scrape (``observability/worker_metrics.py``); a worker
answering a statistics call asks its siblings for theirs, so that the answer counts every
worker's calls, not only its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
from collections.abc import Callable, Mapping
from pathlib import Path

from keyturn_server.domain.statistics import Statistics

log = logging.getLogger("keyturn.app")

#: How long a sibling or the supervisor waits for an answer.
TIMEOUT = 2.0
#: The longest command word.
_COMMAND = 32

Answer = Callable[[], bytes]


def socket_path(peers: Path, index: int) -> Path:
    return peers / f"figures-{index}.sock"


def _remove(path: Path) -> None:
    path.unlink(missing_ok=True)


async def serve(path: Path, answers: Mapping[str, Answer]) -> asyncio.AbstractServer:
    """Answer the commands of ``answers`` on ``path`` (a predecessor's socket is
    replaced)."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(TIMEOUT):
                command = (await reader.readline())[:_COMMAND].strip().decode(errors="replace")
            make = answers.get(command)
            if make is not None:
                writer.write(make())
                await writer.drain()
        except (ConnectionError, TimeoutError):
            pass
        finally:
            writer.close()

    _remove(path)
    return await asyncio.start_unix_server(answer, path=str(path))


def withdraw(server: asyncio.AbstractServer, path: Path) -> None:
    """Stop answering on ``path`` and remove it (Python 3.11 leaves the file behind, and
    an orphaned worker's directory is removed by nobody else)."""
    server.close()
    _remove(path)


def fetch(path: Path, command: str) -> bytes | None:
    """Ask ``path`` for ``command`` (blocking: the supervisor's metrics thread); None if
    it does not answer within TIMEOUT."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(TIMEOUT)
            conn.connect(str(path))
            conn.sendall(command.encode() + b"\n")
            chunks = []
            while chunk := conn.recv(65536):
                chunks.append(chunk)
    except OSError as exc:
        log.debug("a worker did not answer %s: %s", command, exc)
        return None
    return b"".join(chunks) or None


async def ask(path: Path, command: str) -> bytes | None:
    """Ask ``path`` for ``command`` from the event loop; None if it does not answer
    within TIMEOUT (a sibling that is starting, stuck or gone)."""
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(TIMEOUT):
            reader, writer = await asyncio.open_unix_connection(str(path))
            writer.write(command.encode() + b"\n")
            answer = await reader.read()
    except (OSError, TimeoutError) as exc:
        log.debug("a sibling did not answer %s: %s", command, exc)
        return None
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
    return answer or None


class Siblings:
    """A worker's statistics combined with its siblings' (a sibling that does not answer
    in time is left out of that answer).

    Combined answers are reused for ``REUSE_FOR``: each costs every sibling a snapshot
    (thousands of latency samples as JSON) on its event loop, outside the limits of the
    caller who asked, so a flood of statistics calls to one worker must not become one
    to all of them."""

    REUSE_FOR = 1.0

    def __init__(self, peers: Path, count: int, index: int, own: Statistics) -> None:
        self._others = [socket_path(peers, i) for i in range(count) if i != index]
        self._own = own
        self._last: tuple[float, asyncio.Future[Statistics]] | None = None

    def answers(self) -> dict[str, Answer]:
        return {"statistics": lambda: json.dumps(self._own.snapshot()).encode()}

    async def statistics(self) -> Statistics:
        loop = asyncio.get_running_loop()
        last = self._last
        if last is None or loop.time() - last[0] > self.REUSE_FOR:
            # Shared by the calls that come meanwhile; not cancelled with the first.
            last = self._last = (loop.time(), asyncio.ensure_future(self._combine()))
        return await asyncio.shield(last[1])

    async def _combine(self) -> Statistics:
        answers = await asyncio.gather(*(ask(path, "statistics") for path in self._others))
        parts = [self._own.snapshot()]
        for answer in answers:
            if answer is not None:
                with contextlib.suppress(ValueError, KeyError):
                    parts.append(json.loads(answer))
        return Statistics.combined(parts)
