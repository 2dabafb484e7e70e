"""What the security suites share: an owner, a thief, and the owner's handle.

The thief is an ordinary `service` principal that holds a handle token it stole from
another service; it may know the handle's type, but not its bound context.
"""

from __future__ import annotations

from dataclasses import dataclass

from keyturn.v1 import handles_pb2 as R
from tests.harness import Client, Harness

#: The context the owner's handles are bound to at issuance.
CTX = {"ip": "192.168.1.100", "user_agent": "MyApp/1.0"}
#: What a thief sends without knowing it: another client's context.
WRONG = {"ip": "198.51.100.66", "user_agent": "curl/8.5"}


@dataclass
class Scene:
    owner: Client
    thief: Client
    issued: R.GenerateHandleResponse


async def scene(server: Harness, handle_type: str = "workflow") -> Scene:
    owner = await server.client_for("service", "owner-svc")
    thief = await server.client_for("service", "thief-svc")
    issued = await owner.handles.GenerateHandle(
        R.GenerateHandleRequest(type=handle_type, context=CTX, user_id="user123")
    )
    return Scene(owner, thief, issued)


async def validate(client: Client, token: str, context: dict[str, str]) -> R.Validation:
    answer = await client.handles.ValidateHandle(
        R.ValidateHandleRequest(token=token, context=context)
    )
    return answer.validation
