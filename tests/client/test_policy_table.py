"""The shared client-policy table (clients/policy/cases.json), run against the scripted
server every client's tests use: which calls are retried and how often, how long the
client waits (RetryInfo), the one deadline of a call, how watches reconnect and resume,
and the numbers every client must share."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

import keyturn
from keyturn import _policy
from keyturn._retry import Backoff, RetryPolicy
from keyturn._transport import DEFAULT_CHANNEL_OPTIONS, uses_tls
from keyturn.v1 import admin_pb2, events_pb2

ROOT = Path(__file__).resolve().parents[2]
TABLE: dict[str, Any] = json.loads((ROOT / "clients/policy/cases.json").read_text())
POLICY = TABLE["policy"]
TEST_BACKOFF = Backoff(
    TABLE["test_backoff"]["initial_ms"] / 1000,
    TABLE["test_backoff"]["max_ms"] / 1000,
    TABLE["test_backoff"]["multiplier"],
)

Call = Callable[[keyturn.AsyncClient, float | None], Awaitable[object]]

#: One call per method the table scripts, with a request the scripted server ignores.
CALLS: dict[str, Call] = {
    "keyturn.v1.KeyService/GetKey": lambda c, t: c.get_key("key_x", timeout=t),
    "keyturn.v1.KeyService/Encrypt": lambda c, t: c.encrypt("key_x", b"x", timeout=t),
    "keyturn.v1.KeyService/Decrypt": lambda c, t: c.decrypt("key_x", b"x", timeout=t),
    "keyturn.v1.KeyService/Sign": lambda c, t: c.sign("key_x", b"x", timeout=t),
    "keyturn.v1.KeyService/ComputeMac": lambda c, t: c.compute_mac("key_x", b"x", timeout=t),
    "keyturn.v1.KeyService/GenerateKey": lambda c, t: c.generate_key("encryption", timeout=t),
    "keyturn.v1.HandleService/ValidateHandle": lambda c, t: c.validate_handle("kt_x", timeout=t),
    "keyturn.v1.HandleService/RotateHandle": lambda c, t: c.rotate_handle("hdl_x", timeout=t),
    "keyturn.v1.AdminService/UpdateConfig": lambda c, t: c.update_config(
        admin_pb2.Config(), etag="", timeout=t
    ),
}


@pytest.fixture(scope="module")
def scripted() -> Iterator[dict[str, str]]:
    """The scripted server's variables (KEYTURN_POLICY_*): the one the test scripts
    started, or one started here."""
    if os.environ.get("KEYTURN_POLICY_ADDRESS"):
        yield {k: v for k, v in os.environ.items() if k.startswith("KEYTURN_POLICY_")}
        return
    env_file = Path(os.environ.get("TMPDIR", "/tmp")) / f"keyturn-policy-{uuid.uuid4().hex}.env"
    server = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "clients/policy/scripted_server.py"),
            "--env-file",
            str(env_file),
        ],
        stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while not env_file.exists():
            assert server.poll() is None, "the scripted server exited"
            assert time.monotonic() < deadline, "the scripted server did not start"
            time.sleep(0.05)
        lines = env_file.read_text().splitlines()
        yield dict(line.split("=", 1) for line in lines)
    finally:
        server.terminate()
        server.wait()
        env_file.unlink(missing_ok=True)


def run_of(scripted: dict[str, str], token: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{scripted['KEYTURN_POLICY_CONTROL']}/runs/{token}") as answer:
        found: dict[str, Any] = json.load(answer)
        return found


def check_run(expect: dict[str, Any], run: dict[str, Any]) -> None:
    """What the server saw against the case's expectations."""
    for index, least in enumerate(expect.get("min_waits_ms", [])):
        assert run["waits_ms"][index] >= least, f"wait {index} of {run['waits_ms']}"
    if "max_deadline_drift_ms" in expect:
        assert run["deadline_drift_ms"] is not None, "an attempt carried no deadline"
        assert run["deadline_drift_ms"] <= expect["max_deadline_drift_ms"], run
    if "granted_ms" in expect:
        low, high = expect["granted_ms"]
        assert run["granted_ms"][0] is not None and low <= run["granted_ms"][0] <= high, run
    if expect.get("no_deadline"):
        assert run["granted_ms"] == [None] * run["attempts"], run
    if expect.get("tls"):
        assert all(run["tls"]), run


def describe(event: events_pb2.ExpiryEvent) -> str:
    """An event in the table's notation: "snapshot", "complete@10", "heartbeat@20", "11"."""
    if event.snapshot:
        return "snapshot"
    if event.kind == events_pb2.EVENT_KIND_SNAPSHOT_COMPLETE:
        return f"complete@{event.latest_sequence}"
    if event.kind == events_pb2.EVENT_KIND_HEARTBEAT:
        return f"heartbeat@{event.latest_sequence}"
    return str(event.sequence)


def test_the_client_defaults_are_the_policy_numbers() -> None:
    call, watch = POLICY["call_backoff"], POLICY["watch_backoff"]
    assert Backoff() == Backoff(
        call["initial_ms"] / 1000, call["max_ms"] / 1000, call["multiplier"]
    )
    assert RetryPolicy().max_attempts == POLICY["max_attempts"]
    assert (
        Backoff(watch["initial_ms"] / 1000, watch["max_ms"] / 1000, watch["multiplier"])
        == keyturn.WATCH_BACKOFF
    )
    client = keyturn.AsyncClient  # the default of timeout=
    assert client.__init__.__kwdefaults__["timeout"] * 1000 == POLICY["default_timeout_ms"]
    options = dict(DEFAULT_CHANNEL_OPTIONS)  # what every channel is opened with
    keepalive = POLICY["keepalive"]
    assert options["grpc.keepalive_time_ms"] == keepalive["time_ms"]
    assert options["grpc.keepalive_timeout_ms"] == keepalive["timeout_ms"]
    silence = POLICY["watch_silence"]
    policy_silence = keyturn.Silence(silence["heartbeats"], silence["floor_ms"] / 1000)
    assert policy_silence == keyturn.WATCH_SILENCE


def test_every_rpc_is_retried_as_its_idempotency_level_says() -> None:
    levels = {
        f"{m.containing_service.full_name}/{m.name}": _policy.Level.Name(_policy.level(m))
        for m in _policy.methods()
    }
    assert levels == TABLE["methods"]
    for method in _policy.methods():
        expected = TABLE["methods"][f"{method.containing_service.full_name}/{method.name}"]
        assert _policy.retryable(method) == (expected != "IDEMPOTENCY_UNKNOWN"), method.name


def test_the_codes_that_end_a_watch_are_the_policy_ones() -> None:
    assert {c.name for c in _policy.WATCH_ENDS_ON} == set(POLICY["watch_ends_on"])
    assert not {c.name for c in _policy.WATCH_ENDS_ON} & set(POLICY["watch_reconnects_on"])


@pytest.mark.parametrize(
    "vector", TABLE["backoff"], ids=lambda v: f"{v['policy']}-retry{v['retry']}-draw{v['random']}"
)
def test_backoff(vector: dict[str, Any]) -> None:
    backoff = Backoff() if vector["policy"] == "call" else keyturn.WATCH_BACKOFF
    delay = backoff.delay(vector["retry"], vector["random"])
    delay = max(delay, vector.get("retry_info_ms", 0) / 1000)
    assert delay * 1000 == pytest.approx(vector["delay_ms"])


@pytest.mark.parametrize("vector", TABLE["loopback"], ids=lambda v: v["address"])
def test_loopback(vector: dict[str, Any]) -> None:
    """Loopback addresses are plaintext by default, every other one TLS."""
    assert _policy.is_loopback(vector["address"]) == vector["loopback"]
    assert uses_tls(vector["address"], None) == (not vector["loopback"])


@pytest.mark.parametrize(
    "index", range(len(TABLE["calls"])), ids=[c["name"] for c in TABLE["calls"]]
)
async def test_call(scripted: dict[str, str], index: int) -> None:
    case = TABLE["calls"][index]
    expect = case["expect"]
    token = f"call-{index}~{uuid.uuid4().hex}"
    if case.get("transport") == "tls":
        address = scripted["KEYTURN_POLICY_TLS_ADDRESS"]
        tls: keyturn.TLS | None = keyturn.TLS.from_files(
            ca=scripted["KEYTURN_POLICY_CA"], server_name="keyturn.test"
        )
    else:
        address, tls = scripted["KEYTURN_POLICY_ADDRESS"], None
    timeout = None if case["timeout_ms"] is None else case["timeout_ms"] / 1000
    retry = RetryPolicy(backoff=TEST_BACKOFF, max_attempts=case.get("max_attempts"))
    async with keyturn.AsyncClient(address, token=token, tls=tls, retry=retry) as client:
        started = time.monotonic()
        try:
            await CALLS[case["method"]](client, timeout)
            outcome = "OK"
        except keyturn.KeyturnError as error:
            outcome = error.code.name
        elapsed = time.monotonic() - started

    run = await asyncio.to_thread(run_of, scripted, token)
    assert outcome == expect["code"], run
    assert run["attempts"] == expect.get("attempts", run["attempts"]), run
    assert run["attempts"] >= expect.get("min_attempts", 1), run
    assert set(run["methods"]) == {case["method"]}
    check_run(expect, run)
    if "max_elapsed_ms" in expect:
        assert elapsed * 1000 <= expect["max_elapsed_ms"]


@pytest.mark.parametrize(
    "index", range(len(TABLE["watches"])), ids=[c["name"] for c in TABLE["watches"]]
)
async def test_watch(scripted: dict[str, str], index: int) -> None:
    case = TABLE["watches"][index]
    expect = case["expect"]
    token = f"watch-{index}~{uuid.uuid4().hex}"
    delivered: list[str] = []
    outcome = "ended without an error"
    async with keyturn.AsyncClient(scripted["KEYTURN_POLICY_ADDRESS"], token=token) as client:
        watch = client.watch_expiring(
            case["subject"], resume_after=case["resume_after"], backoff=TEST_BACKOFF
        )
        try:
            async with asyncio.timeout(20):
                async for event in watch:
                    delivered.append(describe(event))
        except keyturn.KeyturnError as error:
            outcome = error.code.name
        finally:
            await watch.aclose()

    run = await asyncio.to_thread(run_of, scripted, token)
    assert (delivered, outcome) == (expect["delivered"], expect["code"])
    assert run["resume_after"] == expect["resume_after"]
    check_run(expect, run)


def test_a_status_the_table_names_is_a_grpc_code() -> None:
    names = {a.get("code") for c in TABLE["calls"] for a in c["answers"]} - {None}
    names |= {c["end"]["code"] for w in TABLE["watches"] for c in w["connections"]}
    assert names <= {code.name for code in grpc.StatusCode}
