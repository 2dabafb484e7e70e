"""The specification's Python usage example ("Usage Examples": its KeyManager class),
rewritten on the Keyturn client: generate an encryption key, generate a workflow handle
with context, validate it with ip and user agent, then print health and key and handle
statistics.

Run it with KEYTURN_ADDRESS (host:port, default 127.0.0.1:50051) and KEYTURN_TOKEN (an
admin or service token). It exits non-zero when a call fails or the handle does not
validate.

Unlike the REST sketch, a handle is validated with its secret token (returned once by
GenerateHandle), not with its public id: the id names a handle, only the token proves it.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message

import keyturn
from keyturn.v1 import admin_pb2, handles_pb2, resources_pb2


def as_dict(message: Message) -> dict[str, Any]:
    found: dict[str, Any] = json_format.MessageToDict(message)
    return found


class KeyManager:
    def __init__(self, address: str | None = None, token: str | None = None) -> None:
        self.client = keyturn.Client(
            address or os.environ.get("KEYTURN_ADDRESS", keyturn.DEFAULT_ADDRESS),
            token=token or os.environ.get("KEYTURN_TOKEN"),
        )

    def close(self) -> None:
        self.client.close()

    def generate_encryption_key(self, user_id: str) -> resources_pb2.Key:
        """Generate a new encryption key"""
        response = self.client.generate_key(
            "encryption",
            metadata={"purpose": "data-encryption", "environment": "production"},
            user_id=user_id,
        )
        return response.key

    def generate_workflow_handle(
        self, user_id: str, context: dict[str, str]
    ) -> handles_pb2.GenerateHandleResponse:
        """Generate a workflow handle: the handle and its secret token, shown once"""
        return self.client.generate_handle(
            "workflow", context={**context, "environment": "production"}, user_id=user_id
        )

    def validate_handle(
        self, token: str, user_id: str, context: dict[str, str]
    ) -> handles_pb2.Validation:
        """Validate a handle"""
        response = self.client.validate_handle(
            token,
            context={"ip": context["ip"], "user_agent": context["userAgent"]},
            user_id=user_id,
        )
        return response.validation

    def get_health(self) -> admin_pb2.Health:
        """Get system health"""
        return self.client.get_health().health

    def get_statistics(self) -> dict[str, dict[str, Any]]:
        """Get system statistics"""
        key_stats = self.client.get_key_statistics().statistics
        handle_stats = self.client.get_handle_statistics().statistics
        return {"keys": as_dict(key_stats), "handles": as_dict(handle_stats)}


# Usage example
def example() -> int:
    key_manager = KeyManager()
    try:
        # Generate a key
        key = key_manager.generate_encryption_key("user123")
        print(f"Generated key: {key.id}")

        # Generate a handle
        issued = key_manager.generate_workflow_handle(
            "user123", {"workflow": "data-processing", "session": "session123"}
        )
        print(f"Generated handle: {issued.handle.id}")

        # Validate handle
        validation = key_manager.validate_handle(
            issued.token, "user123", {"ip": "192.168.1.100", "userAgent": "MyApp/1.0"}
        )
        print(f"Handle valid: {validation.valid}")

        # Get health status
        health = key_manager.get_health()
        print(f"System health: {json.dumps(as_dict(health))}")

        # Get statistics
        stats = key_manager.get_statistics()
        print(f"Key statistics: {json.dumps(stats['keys'])}")
        print(f"Handle statistics: {json.dumps(stats['handles'])}")
    except keyturn.KeyturnError as e:
        print(f"Error: {e}", file=sys.stderr)
        return 1
    finally:
        key_manager.close()

    serving = health.status == admin_pb2.SERVING_STATUS_SERVING
    if not (validation.valid and serving):
        print("Error: the handle did not validate or the server is not serving", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(example())
