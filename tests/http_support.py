"""HTTP clients for the tests of the HTTP/JSON listener: real requests over real sockets
(aiohttp's client), with the secrets they receive remembered for the log guard."""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from tests.harness import SECRETS

#: Response fields that hold secrets: tokens, key material, and the compatibility API's
#: handle id on generate/rotate (which is the token).
_SECRET_FIELDS = {"token", "material"}


def remember(document: Any) -> None:
    if isinstance(document, dict):
        for name, value in document.items():
            if (name in _SECRET_FIELDS and isinstance(value, str) and value) or (
                name == "id" and isinstance(value, str) and value.startswith("kt_")
            ):
                SECRETS.add(value)
            else:
                remember(value)
    elif isinstance(document, list):
        for item in document:
            remember(item)


@dataclass
class Answer:
    status: int
    body: Any
    headers: dict[str, str]
    text: str = ""

    @property
    def error(self) -> dict[str, Any]:
        """The AIP-193 error of a /v1 answer."""
        error: dict[str, Any] = self.body["error"]
        return error

    def detail(self, type_name: str) -> dict[str, Any]:
        for detail in self.error.get("details", []):
            if detail["@type"].endswith(type_name):
                found: dict[str, Any] = detail
                return found
        raise AssertionError(f"no {type_name} in {self.body}")

    @property
    def reason(self) -> str:
        return str(self.detail("ErrorInfo")["reason"])

    @property
    def violations(self) -> dict[str, str]:
        return {v["field"]: v["description"] for v in self.detail("BadRequest")["fieldViolations"]}


@dataclass
class HttpClient:
    """Requests to one server as one caller (a bearer token, or none)."""

    base: str
    token: str | None = None
    #: Every (verb, path) sent, so tests can check which routes they exercised.
    sent: list[tuple[str, str]] = field(default_factory=list)

    async def call(
        self,
        verb: str,
        path: str,
        body: Any = None,
        *,
        raw: bytes | AsyncIterator[bytes] | None = None,
        headers: dict[str, str] | None = None,
        params: Any = None,
        ssl: Any = None,
    ) -> Answer:
        sent_headers = dict(headers or {})
        if self.token is not None:
            sent_headers.setdefault("Authorization", f"Bearer {self.token}")
        data = raw
        if body is not None:
            data = json.dumps(body).encode()
            sent_headers.setdefault("Content-Type", "application/json")
        if isinstance(data, bytes) and len(data) > 64 * 1024:
            data = io.BytesIO(data)  # type: ignore[assignment]  # aiohttp warns on big bytes
        self.sent.append((verb, path))
        timeout = aiohttp.ClientTimeout(total=30)
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.request(
                verb, self.base + path, data=data, headers=sent_headers, params=params, ssl=ssl
            ) as response,
        ):
            text = await response.text()
            try:
                parsed = json.loads(text) if text else None
            except ValueError:
                parsed = None
            remember(parsed)
            return Answer(response.status, parsed, dict(response.headers), text)

    async def get(self, path: str, **kwargs: Any) -> Answer:
        return await self.call("GET", path, **kwargs)

    async def post(self, path: str, body: Any = None, **kwargs: Any) -> Answer:
        return await self.call("POST", path, {} if body is None else body, **kwargs)

    async def delete(self, path: str, body: Any = None, **kwargs: Any) -> Answer:
        return await self.call("DELETE", path, body, **kwargs)

    async def patch(self, path: str, body: Any = None, **kwargs: Any) -> Answer:
        return await self.call("PATCH", path, body, **kwargs)

    async def put(self, path: str, body: Any = None, **kwargs: Any) -> Answer:
        return await self.call("PUT", path, body, **kwargs)
