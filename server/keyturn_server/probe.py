"""`python -m keyturn_server.probe [HOST:PORT]`: exit 0 when the server's standard gRPC
health service says SERVING. Used by the container HEALTHCHECK; needs no token.

The probe reads the environment exactly as `keyturn serve` does, so in the container it
finds the mounted certificate (KEYTURN_TLS_DIR, or KEYTURN_TLS_CERT and KEYTURN_TLS_KEY)
and speaks TLS, trusting that certificate and nothing else; without one it speaks
plaintext. The address defaults to the first listen address (127.0.0.1, or $PORT).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from keyturn_server.flags import add_serve_arguments
from keyturn_server.settings import (
    SettingsError,
    certificate,
    listen_addresses,
)
from keyturn_server.tls import CertificateFiles, TlsError, probe_channel


def probe(
    address: str,
    service: str = "",
    timeout: float = 3.0,
    certificate: CertificateFiles | None = None,
) -> bool:
    channel = probe_channel(address, certificate) if certificate else grpc.insecure_channel(address)
    with channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout
            )
        except grpc.RpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m keyturn_server.probe")
    parser.add_argument("address", nargs="?", help="HOST:PORT (default: the listen address)")
    parser.add_argument("--service", default="", help="a service name to check (default: all)")
    args = parser.parse_args(argv)
    env = os.environ if env is None else env
    serve = argparse.ArgumentParser()
    add_serve_arguments(serve)
    nothing = serve.parse_args([])  # what `keyturn serve` reads from the environment alone
    address = args.address or listen_addresses(nothing, env)[0]
    try:
        healthy = probe(address, args.service, certificate=certificate(nothing, env))
    except (SettingsError, TlsError) as exc:
        print(f"keyturn probe: {exc}", file=sys.stderr)
        return 2
    if not healthy:
        print(f"keyturn probe: {address} is not serving", file=sys.stderr)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
