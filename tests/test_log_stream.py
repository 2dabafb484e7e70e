"""The log stream cannot stop the server (observability/logs.py): lines are written by a
thread of their own, so a reader that stops reading stderr (a stalled log shipper, a
full pipe) costs log lines, never calls; and what was dropped is said once the stream
flows again."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from keyturn.v1 import keys_pb2, keys_pb2_grpc
from keyturn_server.observability import logs
from tests.harness import MASTER_KEY
from tests.process import free_port

#: Far more than a pipe holds (64 KiB is about 250 access lines of failed calls).
CALLS = 1500


def test_a_server_whose_stderr_nobody_reads_keeps_answering(tmp_path: Path) -> None:
    address = f"127.0.0.1:{free_port()}"
    read_end, write_end = os.pipe()  # stderr: a pipe that nobody reads until the end
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "keyturn_server",
            "serve",
            "--data-dir",
            str(tmp_path / "data"),
            "--listen",
            address,
            "--http-listen",
            "off",
            "--insecure-no-auth",
            "--caller-rate-limit",
            "0",
        ],
        env={**os.environ, "MASTER_KEY": MASTER_KEY},
        stdout=subprocess.PIPE,
        stderr=write_end,
    )
    os.close(write_end)
    lines: list[bytes] = []
    reader: threading.Thread | None = None
    try:
        assert server.stdout is not None
        while b"keyturn listening on" not in (said := server.stdout.readline()):
            assert said, "the server ended before it listened"
        with grpc.insecure_channel(address) as channel:
            keys = keys_pb2_grpc.KeyServiceStub(channel)
            started = time.monotonic()
            for n in range(CALLS):  # each refused call is an access line of its own
                with pytest.raises(grpc.RpcError) as refused:
                    keys.GetKey(keys_pb2.GetKeyRequest(key_id=_unknown_key(n)), timeout=10)
                assert refused.value.code() == grpc.StatusCode.NOT_FOUND
            assert time.monotonic() - started < 60
        reader = threading.Thread(target=lambda: lines.extend(_read_all(read_end)))
        reader.start()
        server.terminate()
        assert server.wait(30) == 0
        reader.join(30)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
        if server.stdout is not None:
            server.stdout.close()
        if reader is None:  # ended before reading: the pipe is still ours to close
            os.close(read_end)
    access = [json.loads(line) for line in b"".join(lines).splitlines() if line.startswith(b"{")]
    refused_lines = [a for a in access if a.get("method") == "/keyturn.v1.KeyService/GetKey"]
    assert len(refused_lines) == CALLS  # well under the queue's limit: nothing was lost


def _unknown_key(n: int) -> str:
    """A well-formed key id that names no key (base32: letters only)."""
    return "key_" + "".join("abcdefghij"[int(d)] for d in f"{n:016d}")


def _read_all(fd: int) -> list[bytes]:
    chunks = []
    with os.fdopen(fd, "rb") as pipe:
        while chunk := pipe.read(65536):
            chunks.append(chunk)
    return chunks


class _Stalled(io.StringIO):
    """A stream whose writes block until released: a reader that stopped reading."""

    def __init__(self) -> None:
        super().__init__()
        self.released = threading.Event()

    def write(self, text: str) -> int:
        self.released.wait(30)
        return super().write(text)


@pytest.fixture
def configured() -> Iterator[None]:
    """logs.configure changes process-wide loggers: put them back as they were, for the
    tests that run after these in the same process."""
    loggers = [logging.getLogger("keyturn"), logging.getLogger("psycopg"), logging.getLogger()]
    saved = [(lg.handlers[:], lg.level, lg.propagate) for lg in loggers]
    yield
    logs.stop()
    for lg, (handlers, level, propagate) in zip(loggers, saved, strict=True):
        lg.handlers[:] = handlers
        lg.setLevel(level)
        lg.propagate = propagate


@pytest.mark.usefixtures("configured")
def test_records_past_the_queue_are_dropped_counted_and_announced() -> None:
    stream = _Stalled()
    logs.configure("info", stream, queue_limit=10)
    log = logging.getLogger("keyturn.access")
    try:
        started = time.monotonic()
        for n in range(100):
            log.info("rpc", extra={"category": "access", "n": n})
        assert time.monotonic() - started < 1  # the caller never waited for the stream
        stream.released.set()
    finally:
        logs.stop()  # writes what is queued
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    written = [line["n"] for line in lines if "n" in line]
    notice = [line for line in lines if "dropped" in line]
    # Access lines fill the queue's bulk share (8 of 10), and the writer holds what it
    # took from the queue before the stream stalled: at most a queue's worth (10).
    assert written == sorted(written) and 8 <= len(written) <= 8 + 10
    # Said as soon as the writer can write again (more than once if drops went on while
    # it wrote): every dropped line counted once, under its category.
    assert notice and sum(n["dropped"] for n in notice) == 100 - len(written)
    assert all(n["dropped_access"] == n["dropped"] for n in notice)
    assert all(n["level"] == "warning" and n["category"] == "error" for n in notice)


@pytest.mark.usefixtures("configured")
def test_a_flood_of_access_lines_cannot_crowd_out_security_lines() -> None:
    """One caller's flood of refused calls (an access line each) while the reader is
    slow: the authentication failures logged during it are all written."""
    stream = _Stalled()
    logs.configure("info", stream, queue_limit=100)
    access = logging.getLogger("keyturn.access")
    security = logging.getLogger("keyturn.security")
    try:
        for n in range(1000):
            access.info("rpc", extra={"category": "access", "code": "UNAUTHENTICATED", "n": n})
            if n % 50 == 0:
                security.warning("authentication failed", extra={"category": "security", "n": n})
        stream.released.set()
    finally:
        logs.stop()
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    kept = [line["n"] for line in lines if line.get("category") == "security"]
    assert kept == list(range(0, 1000, 50))  # every one, in order
    written = [line for line in lines if line.get("category") == "access"]
    # The bulk share (80), and what the writer took before the stream stalled: lines
    # logged while it drained join its batch (170 were written once, with 2 x 80 as the
    # bound), so a batch is at most a queue's worth (100).
    assert len(written) <= 80 + 100
    notices = [line for line in lines if "dropped" in line]
    assert sum(n["dropped_access"] for n in notices) == 1000 - len(written)
    assert not any("dropped_security" in n for n in notices)


@pytest.mark.usefixtures("configured")
def test_security_lines_past_the_whole_queue_are_dropped_and_counted_as_such() -> None:
    stream = _Stalled()
    logs.configure("info", stream, queue_limit=10)
    security = logging.getLogger("keyturn.security")
    try:
        for n in range(30):
            security.warning("anomaly", extra={"category": "security", "n": n})
        stream.released.set()
    finally:
        logs.stop()
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    kept = [line for line in lines if line.get("category") == "security"]
    assert 10 <= len(kept) <= 2 * 10  # the whole queue (not only its bulk share of 8)
    notices = [line for line in lines if "dropped" in line]
    assert sum(n["dropped_security"] for n in notices) == 30 - len(kept)


@pytest.mark.usefixtures("configured")
def test_libraries_log_json_lines_through_the_queue_too() -> None:
    """aiohttp, asyncio and grpc log through Python's logging; with no handler of their own
    their warnings went to stderr as plain text, written on the caller's thread."""
    stream = _Stalled()
    logs.configure("info", stream)
    try:
        started = time.monotonic()
        logging.getLogger("asyncio").warning("socket.send() raised exception.")
        logging.getLogger("aiohttp.server").error("Error handling request")
        logging.getLogger("grpc._cython.cygrpc").info("chatter below WARNING")
        assert time.monotonic() - started < 1  # queued, not written by the caller
        stream.released.set()
    finally:
        logs.stop()
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(line["logger"], line["category"]) for line in lines] == [
        ("asyncio", "app"),
        ("aiohttp.server", "error"),
    ]


@pytest.mark.usefixtures("configured")
def test_an_exception_is_written_with_its_type_and_traceback() -> None:
    stream = io.StringIO()
    logs.configure("info", stream)
    try:
        try:
            raise ValueError("boom")
        except ValueError:
            logging.getLogger("keyturn.api").exception("failed", extra={"category": "error"})
    finally:
        logs.stop()
    line = json.loads(stream.getvalue())
    assert line["error"] == "ValueError" and "boom" in line["traceback"]


def test_writes_end_at_line_ends_and_stay_within_what_a_pipe_keeps_whole() -> None:
    lines = [f'{{"n":{n},"pad":"{"x" * (n * 37 % 700)}"}}' for n in range(200)]
    lines.append("y" * 5000)  # longer than a pipe keeps whole: a write of its own
    written = logs.chunks(lines)
    assert "".join(written) == "".join(line + "\n" for line in lines)  # nothing lost, in order
    assert all(chunk.endswith("\n") for chunk in written)
    assert all(len(chunk.encode()) <= logs.ATOMIC_WRITE for chunk in written[:-1])
    assert written[-1] == "y" * 5000 + "\n"
    assert len(written) < len(lines) // 4  # batched, not a write per line
