"""The token shape check and the keyed token digest, in both implementations: the Python
reference and the native extension (native/, when it is built). Every case runs against
each, and hypothesis checks that the two agree on arbitrary and mutated input.

The native side is skipped where the extension is not built (no Rust toolchain), except
under KEYTURN_REQUIRE_ALL, where its absence fails the run as CI expects it built."""

from __future__ import annotations

import hmac
import os
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keyturn_server.crypto import native
from keyturn_server.crypto.keyring import Keyring, KeyringData
from keyturn_server.domain import tokens

Parse = Callable[[str], tokens.ParsedToken | None]
IMPLEMENTATIONS = ("python", "native")


def _require_native() -> None:
    if native.api is not None:
        return
    if os.environ.get("KEYTURN_NATIVE", "").strip() == "0":
        pytest.skip("KEYTURN_NATIVE=0: this run checks the Python implementation only")
    if os.environ.get("KEYTURN_REQUIRE_ALL"):
        pytest.fail("the native extension is not built (make setup builds it with cargo)")
    pytest.skip("the native extension is not built here (no Rust toolchain)")


@pytest.fixture(params=IMPLEMENTATIONS)
def parse(request: pytest.FixtureRequest) -> Parse:
    if request.param == "native":
        _require_native()
        return tokens.parse_natively
    return tokens.parse_in_python


@pytest.fixture(params=IMPLEMENTATIONS)
def keyring(request: pytest.FixtureRequest) -> Keyring:
    if request.param == "native":
        _require_native()
    return Keyring(KeyringData.fresh(), use_native=request.param == "native")


def _with_checksum(head: str) -> str:
    return head + tokens._checksum(head)


GOOD = _with_checksum("kt_bench_" + "A1b2C3d4" * 5)


@pytest.mark.parametrize(
    ("token", "type_name"),
    [
        pytest.param(tokens.new_token("session", 32), "session", id="issued"),
        pytest.param(tokens.new_token("api-access", 32), "api-access", id="access-token"),
        pytest.param(_with_checksum("kt_a_1"), "a", id="shortest"),
        pytest.param(_with_checksum("kt_" + "t" * 32 + "_x"), "t" * 32, id="type-of-32"),
        pytest.param(_with_checksum("kt_v2-9_secret"), "v2-9", id="digits-and-dash"),
        pytest.param(GOOD, "bench", id="fixed"),
    ],
)
def test_a_well_formed_token_gives_its_type(parse: Parse, token: str, type_name: str) -> None:
    assert parse(token) == tokens.ParsedToken(type_name, token)


@pytest.mark.parametrize(
    "token",
    [
        pytest.param("", id="empty"),
        pytest.param("kt_", id="prefix-only"),
        pytest.param(GOOD[:-1] + ("B" if GOOD[-1] != "B" else "C"), id="wrong-checksum"),
        pytest.param(GOOD.replace("kt_", "kx_"), id="wrong-prefix"),
        pytest.param(_with_checksum("kt_Bench_secret"), id="uppercase-type"),
        pytest.param(_with_checksum("kt_9bench_secret"), id="type-starts-with-digit"),
        pytest.param(_with_checksum("kt_" + "t" * 33 + "_x"), id="type-of-33"),
        pytest.param(_with_checksum("kt__secret"), id="empty-type"),
        pytest.param(_with_checksum("kt_bench_"), id="no-secret"),
        pytest.param("kt_bench_" + "000000", id="checksum-only"),
        pytest.param(_with_checksum("kt_bench_sec_ret"), id="underscore-in-secret"),
        pytest.param(_with_checksum("kt_bench_sécret"), id="non-ascii"),
        pytest.param(GOOD + "\n", id="trailing-newline"),
        pytest.param(" " + GOOD, id="leading-space"),
        pytest.param(_with_checksum("kt_bench_" + "a" * 242), id="longer-than-256"),
        pytest.param("kt_bench_zzzzzzzzzzzz", id="checksum-above-2^32"),
    ],
)
def test_a_malformed_token_gives_none(parse: Parse, token: str) -> None:
    assert parse(token) is None


def test_the_longest_token_is_accepted(parse: Parse) -> None:
    token = _with_checksum("kt_bench_" + "a" * (tokens.MAX_TOKEN_LENGTH - 15))
    assert len(token) == tokens.MAX_TOKEN_LENGTH
    assert parse(token) == tokens.ParsedToken("bench", token)


_TOKEN_TEXT = st.text(
    alphabet=st.sampled_from("kt_-abczAZ09\x00é\n ") | st.characters(), max_size=80
)


@settings(max_examples=400, deadline=None)
@given(text=_TOKEN_TEXT)
def test_both_implementations_agree_on_any_text(text: str) -> None:
    if native.api is None:
        _require_native()
    assert tokens.parse_natively(text) == tokens.parse_in_python(text)


@settings(max_examples=400, deadline=None)
@given(
    type_name=st.from_regex(r"[a-z][a-z0-9-]{0,40}", fullmatch=True),
    secret=st.from_regex(r"[0-9A-Za-z_]{0,12}", fullmatch=True),
    position=st.integers(min_value=0, max_value=100),
    replacement=st.characters(),
    mutate=st.booleans(),
)
def test_both_implementations_agree_on_near_tokens(
    type_name: str, secret: str, position: int, replacement: str, mutate: bool
) -> None:
    """Tokens with a valid checksum (types too long, secrets too short, underscores), and
    the same with one character changed."""
    if native.api is None:
        _require_native()
    token = _with_checksum(f"kt_{type_name}_{secret}")
    if mutate:
        i = position % len(token)
        token = token[:i] + replacement + token[i + 1 :]
    assert tokens.parse_natively(token) == tokens.parse_in_python(token)


@pytest.mark.parametrize("algorithm", ["sha256", "sha384", "sha512"])
def test_the_digest_is_hmac_under_the_token_key(keyring: Keyring, algorithm: str) -> None:
    secret = tokens.new_token("bench", 32)
    expected = hmac.new(keyring.data.token_key, secret.encode(), algorithm).digest()
    assert keyring.digest(secret, algorithm) == expected
    assert keyring.digest(secret, algorithm) == expected  # the keyed state is reused intact
    assert keyring.digest(secret + "x", algorithm) != expected


def test_the_digest_of_a_non_ascii_secret_is_of_its_utf8(keyring: Keyring) -> None:
    expected = hmac.new(keyring.data.token_key, "clé".encode(), "sha256").digest()
    assert keyring.digest("clé") == expected


def test_an_unknown_digest_algorithm_is_refused(keyring: Keyring) -> None:
    with pytest.raises(KeyError):
        keyring.digest("kt_x_secret", "md5")


def test_a_reloaded_keyring_digests_under_its_new_key(keyring: Keyring) -> None:
    before = keyring.digest("kt_x_secret")
    fresh = KeyringData.fresh()
    keyring.load(fresh)
    assert keyring.digest("kt_x_secret") != before
    assert keyring.digest("kt_x_secret") == hmac.digest(fresh.token_key, b"kt_x_secret", "sha256")
