"""scripts/grpcurl-walkthrough.sh and docs/grpcurl.md show the same grpcurl calls, and the
walkthrough passes against a real server when grpcurl is at hand."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from pathlib import Path

import pytest

from tests.harness import Harness

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "grpcurl-walkthrough.sh"
DOC = ROOT / "docs" / "grpcurl.md"


def grpcurl_calls(text: str) -> list[str]:
    """Every grpcurl command line of a shell text, continuations joined, without the
    capture around it, whitespace collapsed."""
    joined = re.sub(r"\\\n\s*", " ", text)
    calls = []
    for line in joined.splitlines():
        start = line.find("grpcurl -")
        if start < 0:
            continue
        call = line[start:]
        call = re.sub(r"( 2>&1)?\)( \|\| status=\$\?)?$", "", call)
        calls.append(" ".join(call.split()))
    return calls


def test_the_doc_shows_every_call_the_walkthrough_makes() -> None:
    script = grpcurl_calls(SCRIPT.read_text())
    documented = grpcurl_calls(DOC.read_text())
    assert len(script) >= 14
    assert [call for call in script if call not in documented] == []
    assert [call for call in documented if call not in script] == []


def grpcurl() -> str | None:
    pinned = ROOT / "tools" / "bin" / "grpcurl"
    return str(pinned) if pinned.exists() else shutil.which("grpcurl")


@pytest.mark.skipif(grpcurl() is None, reason="grpcurl is not installed (tools/bin or PATH)")
async def test_the_walkthrough_passes_against_a_real_server(server: Harness) -> None:
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
