"""The caller of an HTTP request, as the guard sees every caller (api/auth.Caller)."""

from __future__ import annotations

from typing import Any

from aiohttp import web


class HttpCaller:
    """Peer, bearer credentials and client certificate of one HTTP request.

    ``query_token``: the ``access_token`` query parameter (RFC 6750 section 2.3) is taken
    only where a client cannot send headers (a browser's EventSource): the transcoder
    allows it on Server-Sent Event routes alone, because URLs end up in logs and history.
    """

    __slots__ = ("_request", "_token", "peer")

    def __init__(self, request: web.BaseRequest, query_token: bool = False) -> None:
        self._request = request
        self.peer = request.remote or ""
        self._token = request.rel_url.query.get("access_token", "") if query_token else ""

    @property
    def authorization(self) -> str:
        header = self._request.headers.get("Authorization", "")
        if not header and self._token:
            return f"Bearer {self._token}"
        return header

    def certificate_identity(self) -> str:
        """The verified client certificate's URI SAN, DNS SAN or CN, in that order (the
        TLS context only accepts certificates signed by --client-ca)."""
        transport = self._request.transport
        certificate: Any = transport.get_extra_info("peercert") if transport else None
        if not certificate:
            return ""
        names = certificate.get("subjectAltName", ())
        for wanted in ("URI", "DNS"):
            for kind, value in names:
                if kind == wanted and value:
                    return str(value)
        for rdn in certificate.get("subject", ()):
            for key, value in rdn:
                if key == "commonName" and value:
                    return str(value)
        return ""
