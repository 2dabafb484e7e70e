"""The host's side of the container smoke test (scripts/test-container.sh), through the
Python client over the published port, with TLS verified against the test CA:

    python -m tests.container_smoke seed  ADDRESS CA STATE   key, ciphertext, handle
    python -m tests.container_smoke check ADDRESS CA STATE   all of them survived
    python -m tests.container_smoke https ADDRESS CA STATE   the key over HTTP/JSON
    python -m tests.container_smoke hardening                podman run flags, one a line

The admin token comes from KEYTURN_TOKEN. STATE (a JSON file) holds what ``check`` needs.
``hardening`` reads docker-compose.yml, so the smoke test confines the container exactly
as the compose file does.
"""

from __future__ import annotations

import base64
import json
import os
import ssl
import sys
import urllib.request
from pathlib import Path

import yaml

import keyturn

PLAINTEXT = b"survives a restart"
#: The name the test certificate carries (tests/pki.py); the address is a bare IP.
SERVER_NAME = "keyturn.test"
COMPOSE = Path(__file__).resolve().parent.parent / "docker-compose.yml"


def connect(address: str, ca: str) -> keyturn.Client:
    tls = keyturn.TLS.from_files(ca=ca, server_name=SERVER_NAME)
    return keyturn.Client(address, os.environ["KEYTURN_TOKEN"], tls)


def seed(client: keyturn.Client, state: Path) -> str:
    key = client.generate_key("encryption").key
    sealed = client.encrypt(key.id, PLAINTEXT).ciphertext
    issued = client.generate_handle("workflow")
    validation = client.validate_handle(issued.token).validation
    if not validation.valid:
        raise SystemExit(f"a fresh handle did not validate: {validation.reason}")
    state.write_text(
        json.dumps(
            {
                "key_id": key.id,
                "ciphertext": base64.b64encode(sealed).decode(),
                "handle_token": issued.token,
                "handle_id": issued.handle.id,
            }
        )
    )
    return f"key {key.id} and handle {issued.handle.id} created; the handle validates"


def check(client: keyturn.Client, state: Path) -> str:
    saved = json.loads(state.read_text())
    key = client.get_key(saved["key_id"])
    opened = client.decrypt(key.id, base64.b64decode(saved["ciphertext"])).plaintext
    if opened != PLAINTEXT:
        raise SystemExit("the ciphertext made before the restart no longer decrypts")
    validation = client.validate_handle(saved["handle_token"]).validation
    if not validation.valid or validation.handle_id != saved["handle_id"]:
        raise SystemExit(f"the handle no longer validates: {validation.reason}")
    handle = client.get_handle(saved["handle_id"])
    if handle.usage_count != 2:
        raise SystemExit(f"usage count {handle.usage_count} after two validations")
    return f"key {key.id} decrypts and handle {handle.id} validates after the restart"


def https(address: str, ca: str, state: Path) -> str:
    """The HTTP/JSON listener answers over TLS verified against the same CA."""
    key_id = json.loads(state.read_text())["key_id"]
    request = urllib.request.Request(
        f"https://{address}/v1/keys/{key_id}",
        headers={"Authorization": f"Bearer {os.environ['KEYTURN_TOKEN']}"},
    )
    context = ssl.create_default_context(cafile=ca)
    with urllib.request.urlopen(request, context=context, timeout=10) as answer:
        body = json.load(answer)
    if body.get("id") != key_id:
        raise SystemExit(f"GET /v1/keys/{key_id} over HTTPS answered {body}")
    return f"GET https://{address}/v1/keys/{key_id} answers the key"


def hardening(compose: Path = COMPOSE) -> list[str]:
    """The compose file's confinement as `podman run` flags."""
    service = yaml.safe_load(compose.read_text())["services"]["keyturn"]
    flags = ["--read-only"] if service.get("read_only") else []
    flags += [f"--tmpfs={mount}" for mount in service.get("tmpfs", [])]
    flags += [f"--cap-drop={cap}" for cap in service.get("cap_drop", [])]
    flags += [f"--security-opt={option}" for option in service.get("security_opt", [])]
    return flags


def main(argv: list[str]) -> int:
    if argv == ["hardening"]:
        print("\n".join(hardening()))
        return 0
    action, address, ca, state = argv
    if action == "https":
        print(https(address, ca, Path(state)))
        return 0
    with connect(address, ca) as client:
        print(seed(client, Path(state)) if action == "seed" else check(client, Path(state)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
