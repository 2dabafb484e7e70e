"""The usage example in examples/python runs against a real server and fails loudly."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from tests.harness import Harness

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "python" / "key_manager.py"


async def run_example(address: str, token: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(EXAMPLE),
        env={**os.environ, "KEYTURN_ADDRESS": address, "KEYTURN_TOKEN": token},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_the_example_generates_validates_and_reports(server: Harness) -> None:
    code, out, err = await run_example(server.address, server.admin_token)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("Generated key: key_")
    assert lines[1].startswith("Generated handle: hdl_")
    assert lines[2] == "Handle valid: True"
    assert lines[3].startswith('System health: {"status": "SERVING_STATUS_SERVING"')
    assert lines[4].startswith("Key statistics: ") and lines[5].startswith("Handle statistics: ")


async def test_the_example_exits_non_zero_when_a_call_fails(server: Harness) -> None:
    code, _, err = await run_example(server.address, "kt_not-a-token")
    assert code == 1 and err.startswith("Error: UNAUTHENTICATED")
