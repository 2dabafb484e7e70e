"""The HTTP baseline: a bare JSON endpoint on the same HTTP stack as Keyturn's listener
(aiohttp's low-level server, the same options), in its own process, nothing else.

Run as ``python -m bench.http_echo_server --listen 127.0.0.1:0``; it prints
``baseline listening on HOST:PORT`` once it serves, and stops on SIGTERM. Every POST
parses its JSON body and answers a JSON object the size of a validation.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket

from aiohttp import web

from bench.baseline import listen_argument
from keyturn_server.process import collector

_ANSWER = {
    "validation": {
        "valid": True,
        "reason": "VALIDATION_REASON_UNSPECIFIED",
        "handleId": "hdl_aaaaaaaaaaaaaaaa",
        "remainingUses": "999999999",
        "expireTime": "2027-01-01T00:00:00Z",
        "rotateTime": "2026-12-31T00:00:00Z",
        "rotated": False,
        "anomalies": [],
        "type": "bench",
        "owner": "admin",
    }
}


async def answer(request: web.BaseRequest) -> web.StreamResponse:
    body = json.loads(await request.read() or b"{}")
    document = dict(_ANSWER, echo=len(body))
    return web.Response(
        body=json.dumps(document, separators=(",", ":")).encode(),
        content_type="application/json",
    )


async def serve(listen: str) -> None:
    host, _, port = listen.rpartition(":")
    server = web.Server(answer, handler_cancellation=True, access_log=None)
    runner = web.ServerRunner(server, access_log=None)
    await runner.setup()
    sock = socket.create_server((host, int(port)), backlog=1024)
    await web.SockSite(runner, sock).start()
    collector.settle_after_start()  # as keyturn serve does: like compared with like
    print(f"baseline listening on {host}:{sock.getsockname()[1]}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(serve(listen_argument()))
