"""scripts/curl-walkthrough.sh, docs/curl.md and the README's curl tour show the same curl
calls, and the walkthrough passes against a real server's HTTP listener."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import pytest

from tests.harness import Harness
from tests.walkthrough import command_calls

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "curl-walkthrough.sh"
DOC = ROOT / "docs" / "curl.md"
README = ROOT / "README.md"


def test_the_doc_shows_every_call_the_walkthrough_makes() -> None:
    script = command_calls(SCRIPT.read_text(), "curl")
    documented = command_calls(DOC.read_text(), "curl")
    assert len(script) >= 20
    assert [call for call in script if call not in documented] == []
    assert [call for call in documented if call not in script] == []


def test_the_readme_tour_is_part_of_the_walkthrough() -> None:
    tour = README.read_text().split("## A tour with curl", 1)[1].split("\n## ", 1)[0]
    shown = command_calls(tour, "curl")
    assert len(shown) >= 4
    assert [call for call in shown if call not in command_calls(SCRIPT.read_text(), "curl")] == []


async def test_the_walkthrough_passes_against_a_real_server(server: Harness) -> None:
    if shutil.which("curl") is None:
        if os.environ.get("KEYTURN_REQUIRE_ALL"):
            pytest.fail("curl is not installed (KEYTURN_REQUIRE_ALL is set)")
        pytest.skip("curl is not installed")
    process = await asyncio.create_subprocess_exec(
        str(SCRIPT),
        server.http_url,
        server.admin_token,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=dict(os.environ),
    )
    out, _ = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode == 0, out.decode()
    assert out.decode().rstrip().endswith("all calls answered as expected")
