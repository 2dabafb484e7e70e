"""scripts/grpcurl-walkthrough.sh and docs/grpcurl.md show the same grpcurl calls, and the
walkthrough passes against a real server when grpcurl is at hand."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import pytest

from tests.harness import Harness
from tests.walkthrough import command_calls

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "grpcurl-walkthrough.sh"
DOC = ROOT / "docs" / "grpcurl.md"


def test_the_doc_shows_every_call_the_walkthrough_makes() -> None:
    script = command_calls(SCRIPT.read_text(), "grpcurl")
    documented = command_calls(DOC.read_text(), "grpcurl")
    assert len(script) >= 14
    assert [call for call in script if call not in documented] == []
    assert [call for call in documented if call not in script] == []


def grpcurl() -> str | None:
    pinned = ROOT / "tools" / "bin" / "grpcurl"
    return str(pinned) if pinned.exists() else shutil.which("grpcurl")


async def test_the_walkthrough_passes_against_a_real_server(server: Harness) -> None:
    if grpcurl() is None:  # scripts/services.sh builds it where go is (CI does)
        missing = "grpcurl is not installed (tools/bin or PATH)"
        if os.environ.get("KEYTURN_REQUIRE_ALL"):
            pytest.fail(f"{missing} (KEYTURN_REQUIRE_ALL is set)")
        pytest.skip(missing)
    process = await asyncio.create_subprocess_exec(
        str(SCRIPT),
        server.address,
        server.admin_token,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=dict(os.environ),
    )
    out, _ = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode == 0, out.decode()
    assert out.decode().rstrip().endswith("all calls answered as expected")
