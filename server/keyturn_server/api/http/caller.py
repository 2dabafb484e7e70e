"""The caller of an HTTP request, as the guard sees every caller (api/auth.Caller)."""

from __future__ import annotations

import ssl
from typing import Any

from aiohttp import web

from keyturn_server.api.auth import certificate_names
from keyturn_server.client_identities import CertificateNames


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

    def certificate_names(self) -> CertificateNames | None:
        """The names of the verified client certificate (the TLS context only accepts
        certificates signed by --client-ca); --client-identities decides who they are."""
        transport = self._request.transport
        tls: Any = transport.get_extra_info("ssl_object") if transport else None
        der = tls.getpeercert(binary_form=True) if tls is not None else None
        if not der:
            return None
        return certificate_names(ssl.DER_cert_to_PEM_cert(der).encode())
