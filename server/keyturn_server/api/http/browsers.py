"""Requests a web page makes the browser send, refused while nothing else stops them.

With ``--insecure-no-auth`` the API answers anyone who reaches its loopback address, and
a web page the developer visits can make the browser reach it two ways:

- **cross-site requests**: a form, or a ``no-cors`` fetch, sent to 127.0.0.1. The page
  cannot read the answer, but what the request does is done (a key made, a handle
  revoked, the configuration changed);
- **DNS rebinding**: the page's own name is rebound to 127.0.0.1, so the page and the
  API share an origin and the page reads every answer, handle tokens included.

A browser marks both: a cross-site request carries ``Origin`` or ``Sec-Fetch-Site``
(anything but ``none``, a URL typed by the user), and a rebound request names the page's
site in ``Host``. curl, the generated clients and the specification's examples send none
of that, and reach a loopback listener by a loopback name. So in that mode such requests
are refused with 403 before any route runs, as ``kubectl proxy`` refuses hosts it does
not accept. With authentication (the default) none of this is needed: a page has no
token to send, and cannot add one without a CORS preflight this listener never grants.
"""

from __future__ import annotations

import ipaddress

from aiohttp import web
from google.rpc import code_pb2

from keyturn_server.api.http.responses import status_response

_LOOPBACK_NAMES = frozenset({"localhost", "localhost."})


def loopback_name(host: str) -> bool:
    """Whether a Host header's name (port removed) is a loopback name or address."""
    if host.startswith("["):  # [::1]:8080
        name = host[1 : host.find("]")]
    else:
        name = host.rpartition(":")[0] if host.count(":") == 1 else host
    name = name.lower()
    if name in _LOOPBACK_NAMES or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def refusal(request: web.BaseRequest) -> web.Response | None:
    """The answer to a request a web page sent, else None."""
    headers = request.headers
    host = headers.get("Host")
    if host is not None and not loopback_name(host):
        why = "the request names a host that is not this loopback listener (DNS rebinding)"
    elif "Origin" in headers or headers.get("Sec-Fetch-Site", "none") != "none":
        why = "the request was sent by a web page (cross-site)"
    else:
        return None
    return status_response(
        code_pb2.PERMISSION_DENIED,
        f"{why}; with --insecure-no-auth only local clients that are not browsers are served",
    )
