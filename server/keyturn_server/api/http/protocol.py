"""How the HTTP listener answers a request it cannot parse: without the request's bytes.

aiohttp answers a malformed request (a header or URL over 8,190 bytes, broken chunked
framing, too many headers) itself, before any route runs, with a text/plain 400 whose
body is the parser's message, and logs that message with a traceback through the
``aiohttp.server`` logger. The message quotes up to a hundred bytes of what it choked
on: the start of an oversized ``Authorization: Bearer ...`` header is the token, and a
body with bad chunk framing is whatever the caller sent (a plaintext to encrypt, a
handle token to validate). Both went to the caller's error body and, as plain-text
lines, into a log that is otherwise JSON. Here such a request gets the listener's usual
google.rpc.Status JSON with a message that names only what was wrong, and one access
line naming the parser's error type, never its message.
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler

from keyturn_server.api.http.responses import error_response
from keyturn_server.api.status import status_of
from keyturn_server.domain.errors import InvalidArgument

log = logging.getLogger("keyturn.access")

#: What a caller is told, by the parser's error type: never the bytes it quoted.
_TOLD = {
    "LineTooLong": "the request line or a header is longer than the server accepts",
    "BadStatusLine": "the request line is not HTTP/1.x",
    "BadHttpMethod": "the request line is not HTTP/1.x",
    "InvalidHeader": "a header is malformed",
    "InvalidURLError": "the request's URL is malformed",
    "TransferEncodingError": "the request body's chunked framing is malformed",
    "ContentLengthError": "the request body does not match its Content-Length",
}
_MALFORMED = "the request is not well-formed HTTP/1.1"


def told(exc: BaseException | None) -> str:
    """What the caller is told about ``exc``: the sentence of its type or of the nearest
    type it derives from (aiohttp raises subclasses of these), else a general one."""
    for kind in type(exc).__mro__:
        if kind.__name__ in _TOLD:
            return _TOLD[kind.__name__]
    return _MALFORMED


#: What one read from a plain-text connection asks for. asyncio's default (256 KiB) makes
#: every read allocate a buffer of that size, and the server maps buffers of 64 KiB and up
#: apart (process/memory.py): every request cost an mmap and an munmap, a quarter of an
#: HTTP validation's CPU. Below the threshold they come from the heap; a larger body takes
#: more reads. TLS connections read into a buffer of their own and are not affected.
READ_SIZE = 32 * 1024


class Protocol(RequestHandler):
    """aiohttp's connection handler, answering its own errors as the listener does."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if hasattr(transport, "max_size"):  # asyncio's socket transport (selector_events)
            transport.max_size = READ_SIZE

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status >= 500 or not isinstance(exc, HttpProcessingError):
            # Not a parse error: aiohttp's own answer and log, as for any server error
            # (the dispatcher answers every error of Keyturn's own code before this).
            return super().handle_error(request, status, exc, message)
        if request.writer.output_size > 0:
            raise ConnectionError("the response was sent already")
        log.info(
            "bad HTTP request",
            extra={
                "category": "access",
                "code": "INVALID_ARGUMENT",
                "http_status": status,
                "error": type(exc).__name__,
                "peer": request.remote or "",
                "transport": "http",
            },
        )
        refusal = InvalidArgument(told(exc), reason="MALFORMED_HTTP_REQUEST")
        response = error_response(status_of(refusal), status)
        response.force_close()
        return response
