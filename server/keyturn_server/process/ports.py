"""Listening ports: refused in one clear line when taken, shared on purpose by workers.

grpc sets ``SO_REUSEPORT`` by default, which let a second server bind the same port
silently and take half the connections. Keyturn turns it off (``grpc.so_reuseport`` 0)
except in ``--workers`` mode, where the serving processes share each port deliberately.
There the supervisor first checks that the port is free (a bind *without* SO_REUSEPORT,
which fails against any holder), then keeps a bound, non-listening SO_REUSEPORT socket on
it for its whole life: the workers join that port (a port 0 becomes a concrete one for all
of them), and another multi-worker server started later fails the same check instead of
joining the group.
"""

from __future__ import annotations

import contextlib
import errno
import socket

from keyturn_server.listeners import split_address


class PortUnavailable(OSError):
    """A listen address cannot be bound; the message says which and why, in one line."""


def _endpoints(address: str) -> list[tuple[int, tuple[str, int]]]:
    """(family, sockaddr) of each address ``HOST:PORT`` binds (both for localhost)."""
    host, port = split_address(address)
    try:
        found = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise PortUnavailable(f"cannot listen on {address}: {exc.strerror}") from None
    unique: dict[tuple[int, tuple[str, int]], None] = {}
    for family, _, _, _, sockaddr in found:
        if family in (socket.AF_INET, socket.AF_INET6):
            unique[(family, (str(sockaddr[0]), int(sockaddr[1])))] = None
    return list(unique)


def _socket(family: int, reuse_port: bool) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    # TIME_WAIT leftovers of a previous run must not count as "in use".
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 0 if reuse_port else 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    return sock


def _why(address: str, exc: OSError, flag: str = "--listen") -> PortUnavailable:
    if exc.errno == errno.EADDRINUSE:
        return PortUnavailable(
            f"cannot listen on {address}: the address is already in use (another server?); "
            f"stop it or choose another {flag}"
        )
    if exc.errno == errno.EADDRNOTAVAIL:
        return PortUnavailable(f"cannot listen on {address}: no such address on this host")
    if exc.errno == errno.EACCES:
        return PortUnavailable(f"cannot listen on {address}: permission denied")
    return PortUnavailable(f"cannot listen on {address}: {exc.strerror or exc}")


def check_free(address: str, flag: str = "--listen") -> None:
    """Raise PortUnavailable unless every endpoint of ``address`` can be bound now. A
    port 0 is always free. ``flag`` names the option that gave the address."""
    if split_address(address)[1] == 0:
        return
    for family, sockaddr in _endpoints(address):
        with _socket(family, reuse_port=False) as probe:
            try:
                probe.bind(sockaddr)
            except OSError as exc:
                raise _why(address, exc, flag) from None


class SharedPorts:
    """The supervisor's hold on the ports its workers share (see the module docstring)."""

    def __init__(self) -> None:
        self._held: list[socket.socket] = []

    def reserve(self, address: str, flag: str = "--listen") -> str:
        """Check ``address`` is free, hold it for sharing, and return it with its port
        made concrete (for a port 0)."""
        check_free(address, flag)
        host, port = split_address(address)
        for family, (ip, _) in _endpoints(address):
            sock = _socket(family, reuse_port=True)
            try:
                sock.bind((ip, port))
            except OSError as exc:
                sock.close()
                raise _why(address, exc, flag) from None
            self._held.append(sock)
            port = port or int(sock.getsockname()[1])
        shown = f"[{host}]" if ":" in host else host
        return f"{shown}:{port}"

    def close(self) -> None:
        for sock in self._held:
            with contextlib.suppress(OSError):
                sock.close()
        self._held.clear()
