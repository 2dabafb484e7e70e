"""The validation rule itself: :func:`handles.decide`, a pure function of the handle, the
presented secret, what came with it, the time and the policies. One row per rule;
the end-to-end tests (test_handles.py) check the same rules over gRPC.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from keyturn_server.domain.anomalies import AnomalyAction, AnomalyKind
from keyturn_server.domain.handles import (
    Decision,
    Handle,
    HandleSchedule,
    HandleSecret,
    HandleState,
    Presentation,
    RateWindow,
    Reason,
    _decide_by_every_rule,
    _plain_use,
    decide,
)
from keyturn_server.domain.policy import SecurityPolicies

#: Thirty seconds into a minute: the sliding rate window weighs the previous minute half.
NOW = datetime(2031, 5, 17, 12, 0, 30, tzinfo=UTC)
MINUTE = NOW.replace(second=0)
CURRENT, PREVIOUS = 2, 1  # secret generations
FLAGGED, REVOKED = AnomalyAction.FLAGGED, AnomalyAction.REVOKED
K = AnomalyKind


def a_handle(**changes: object) -> Handle:
    handle = Handle(
        id="hdl_aaaaaaaaaaaaaaaa",
        type="workflow",
        algorithm="sha512",
        state=HandleState.ACTIVE,
        owner="svc",
        created_for="",
        context={},
        usage_count=0,
        max_usage=10,
        create_time=NOW - timedelta(minutes=40),
        rotate_time=NOW + timedelta(minutes=20),
        expire_time=NOW + timedelta(hours=3),
        warn_time=NOW + timedelta(minutes=15),
        schedule=HandleSchedule(*(timedelta(minutes=30),) * 3, timedelta(minutes=5)),
        generation=CURRENT,
        notify_time=NOW + timedelta(minutes=15),
    )
    return dataclasses.replace(handle, **changes)  # type: ignore[arg-type]


def a_secret(generation: int = CURRENT, grace_until: datetime | None = None) -> HandleSecret:
    superseded = NOW - timedelta(minutes=1) if generation < CURRENT else None
    return HandleSecret(b"d" * 32, "hdl_aaaaaaaaaaaaaaaa", generation, NOW, superseded, grace_until)


def seen(ip: str | None = None, user_agent: str | None = None) -> Presentation:
    return Presentation(ip, user_agent, peer="ipv4:10.0.0.9:5000")


@dataclass(frozen=True)
class Case:
    handle: Handle = field(default_factory=a_handle)
    secret: HandleSecret = field(default_factory=a_secret)
    seen: Presentation = field(default_factory=seen)
    policies: SecurityPolicies = field(default_factory=SecurityPolicies)


@dataclass(frozen=True)
class Outcome:
    valid: bool
    reason: Reason | None = None
    anomalies: tuple[tuple[AnomalyKind, AnomalyAction], ...] = ()
    transition: HandleState | None = None
    rotated: bool = False


def ok(**kw: object) -> Outcome:
    return Outcome(True, **kw)  # type: ignore[arg-type]


def refused(reason: Reason, *anomalies: tuple[AnomalyKind, AnomalyAction], **kw: object) -> Outcome:
    return Outcome(False, reason, anomalies, **kw)  # type: ignore[arg-type]


IN_GRACE = a_secret(PREVIOUS, grace_until=NOW + timedelta(seconds=1))
GRACE_OVER = a_secret(PREVIOUS, grace_until=NOW)  # the grace ends at its instant
FULL_MINUTE = RateWindow(MINUTE, previous=0, current=100)
BOUND = {"bound_ip": "10.0.0.1", "bound_user_agent": "wf/1.0"}
NO_REUSE_RULE = SecurityPolicies(prevent_reuse=False)
NO_DETECTION = SecurityPolicies(anomaly_detection=False)

RULES: dict[str, tuple[Case, Outcome]] = {
    # state and lifetime
    "valid": (Case(), ok()),
    "revoked: refused, use flagged": (
        Case(a_handle(state=HandleState.REVOKED, revoke_reason="removed")),
        refused(Reason.REVOKED, (K.USE_AFTER_REVOCATION, FLAGGED)),
    ),
    "revoked: flagged even where policy revokes that kind": (
        Case(
            a_handle(state=HandleState.REVOKED),
            policies=SecurityPolicies(revoke_on=frozenset({K.USE_AFTER_REVOCATION})),
        ),
        refused(Reason.REVOKED, (K.USE_AFTER_REVOCATION, FLAGGED)),
    ),
    "expired at its instant: becomes EXPIRED": (
        Case(a_handle(expire_time=NOW)),
        refused(Reason.EXPIRED, (K.USE_AFTER_EXPIRY, FLAGGED), transition=HandleState.EXPIRED),
    ),
    "a microsecond before expiry: valid": (
        Case(a_handle(expire_time=NOW + timedelta(microseconds=1))),
        ok(),
    ),
    "already expired: no second transition": (
        Case(a_handle(state=HandleState.EXPIRED)),
        refused(Reason.EXPIRED, (K.USE_AFTER_EXPIRY, FLAGGED)),
    ),
    "exhausted": (
        Case(a_handle(state=HandleState.EXHAUSTED, usage_count=10)),
        refused(Reason.EXHAUSTED, (K.USE_AFTER_EXHAUSTION, FLAGGED)),
    ),
    "exhausted and past its lifetime: expiry wins": (
        Case(a_handle(state=HandleState.EXHAUSTED, expire_time=NOW)),
        refused(Reason.EXPIRED, (K.USE_AFTER_EXPIRY, FLAGGED), transition=HandleState.EXPIRED),
    ),
    # usage
    "the last use is valid and exhausts": (
        Case(a_handle(usage_count=9)),
        ok(transition=HandleState.EXHAUSTED),
    ),
    "track_usage off: nothing is counted, nothing exhausts": (
        Case(a_handle(usage_count=9), policies=SecurityPolicies(track_usage=False)),
        ok(),
    ),
    # superseded secrets and grace
    "previous secret inside its grace: valid, rotated": (Case(secret=IN_GRACE), ok(rotated=True)),
    "previous secret at the end of its grace: reuse revokes": (
        Case(secret=GRACE_OVER),
        refused(Reason.SUPERSEDED, (K.TOKEN_REUSE, REVOKED), transition=HandleState.REVOKED),
    ),
    "previous secret never given a grace: reuse revokes": (
        Case(secret=a_secret(PREVIOUS)),
        refused(Reason.SUPERSEDED, (K.TOKEN_REUSE, REVOKED), transition=HandleState.REVOKED),
    ),
    "reuse revokes even with anomaly detection off": (
        Case(secret=GRACE_OVER, policies=NO_DETECTION),
        refused(Reason.SUPERSEDED, (K.TOKEN_REUSE, REVOKED), transition=HandleState.REVOKED),
    ),
    "prevent_reuse off: superseded, nothing more": (
        Case(secret=GRACE_OVER, policies=NO_REUSE_RULE),
        refused(Reason.SUPERSEDED),
    ),
    # rate limit
    "the 100th validation of a minute is valid": (
        Case(a_handle(rate=RateWindow(MINUTE, previous=0, current=99))),
        ok(),
    ),
    "over the rate limit: refused, burst flagged": (
        Case(a_handle(rate=FULL_MINUTE)),
        refused(Reason.RATE_LIMITED, (K.RATE_LIMIT_BURST, FLAGGED)),
    ),
    "over the rate limit again in that minute: no second anomaly": (
        Case(a_handle(rate=dataclasses.replace(FULL_MINUTE, flagged=MINUTE))),
        refused(Reason.RATE_LIMITED),
    ),
    "the previous minute counts half, thirty seconds in": (
        Case(a_handle(rate=RateWindow(MINUTE - timedelta(minutes=1), previous=0, current=200))),
        refused(Reason.RATE_LIMITED, (K.RATE_LIMIT_BURST, FLAGGED)),
    ),
    # context binding
    "the bound context: valid": (
        Case(a_handle(**BOUND), seen=seen("10.0.0.1", "wf/1.0")),
        ok(),
    ),
    "another ip: refused, drift flagged": (
        Case(a_handle(**BOUND), seen=seen("10.0.0.2", "wf/1.0")),
        refused(Reason.CONTEXT_MISMATCH, (K.CONTEXT_DRIFT, FLAGGED)),
    ),
    "another user agent: refused, drift flagged": (
        Case(a_handle(**BOUND), seen=seen("10.0.0.1", "curl/8")),
        refused(Reason.CONTEXT_MISMATCH, (K.CONTEXT_DRIFT, FLAGGED)),
    ),
    "a bound value missing from the request: refused, no evidence of drift": (
        Case(a_handle(**BOUND), seen=seen(None, "wf/1.0")),
        refused(Reason.CONTEXT_MISMATCH),
    ),
    "drift revokes where policy says so": (
        Case(
            a_handle(**BOUND),
            seen=seen("10.0.0.2", "wf/1.0"),
            policies=SecurityPolicies(revoke_on=frozenset({K.CONTEXT_DRIFT})),
        ),
        refused(
            Reason.CONTEXT_MISMATCH, (K.CONTEXT_DRIFT, REVOKED), transition=HandleState.REVOKED
        ),
    ),
    "anomaly detection off: drift refused, not reported": (
        Case(a_handle(**BOUND), seen=seen("10.0.0.2", "wf/1.0"), policies=NO_DETECTION),
        refused(Reason.CONTEXT_MISMATCH),
    ),
}


def _decide(case: Case) -> Decision:
    return decide(case.handle, case.secret, case.seen, NOW, case.policies)


@pytest.mark.parametrize(("case", "outcome"), RULES.values(), ids=RULES.keys())
def test_the_rule(case: Case, outcome: Outcome) -> None:
    decision = _decide(case)
    assert decision.valid is outcome.valid
    assert decision.reason is outcome.reason
    assert decision.rotated is outcome.rotated
    assert [(a.kind, a.action) for a in decision.anomalies] == list(outcome.anomalies)
    assert decision.transition is outcome.transition
    if outcome.transition is not None:
        assert decision.handle.state is outcome.transition
    assert decision.handle.anomaly_count == case.handle.anomaly_count + len(outcome.anomalies)
    for anomaly in decision.anomalies:
        assert anomaly.handle_id == case.handle.id and anomaly.time == NOW


@pytest.mark.parametrize(("case", "outcome"), RULES.values(), ids=RULES.keys())
def test_only_a_valid_use_counts_and_binds(case: Case, outcome: Outcome) -> None:
    before, after = case.handle, _decide(case).handle
    counted = outcome.valid and case.policies.track_usage
    assert after.usage_count == before.usage_count + (1 if counted else 0)
    assert after.last_used_time == (NOW if outcome.valid else before.last_used_time)
    if not outcome.valid:
        assert (after.bound_ip, after.bound_user_agent) == (
            before.bound_ip,
            before.bound_user_agent,
        )


def test_the_first_use_binds_the_context_it_brings() -> None:
    decision = _decide(Case(seen=seen("10.0.0.7", "wf/2.0")))
    assert (decision.handle.bound_ip, decision.handle.bound_user_agent) == ("10.0.0.7", "wf/2.0")
    only_ip = _decide(Case(seen=seen("10.0.0.7")))
    assert (only_ip.handle.bound_ip, only_ip.handle.bound_user_agent) == ("10.0.0.7", None)


@pytest.mark.parametrize(
    "presented",
    [seen("10.0.0.2", "wf/1.0"), seen(None, None)],
    ids=["another-context", "no-context"],
)
def test_an_attempt_with_the_wrong_context_does_not_count_towards_the_rate(
    presented: Presentation,
) -> None:
    # Only the owner's presentations (those that pass the binding) use up the rate: a
    # thief without the bound context cannot lock the owner out.
    case = Case(a_handle(**BOUND, rate=RateWindow(MINUTE, 0, 5)), seen=presented)
    assert _decide(case).handle.rate == case.handle.rate


def test_the_context_is_checked_before_the_rate_limit() -> None:
    case = Case(a_handle(**BOUND, rate=FULL_MINUTE), seen=seen("10.0.0.2", "wf/1.0"))
    assert _decide(case).reason is Reason.CONTEXT_MISMATCH


def test_a_presentation_that_is_not_a_use_counts_towards_the_rate_only() -> None:
    handle = a_handle(rate=RateWindow(MINUTE, 0, 5), usage_count=9)
    decision = decide(handle, a_secret(), seen(), NOW, SecurityPolicies(), use=False)
    assert decision.valid and decision.transition is None
    assert decision.handle.usage_count == 9 and decision.handle.last_used_time is None
    assert decision.handle.rate.current == 6


def test_a_refusal_over_the_rate_does_not_count_towards_it() -> None:
    assert _decide(Case(a_handle(rate=FULL_MINUTE))).handle.rate.current == 100


@pytest.mark.parametrize(
    ("stored", "now", "rolled"),
    [
        (RateWindow(MINUTE, 3, 5), NOW, RateWindow(MINUTE, 3, 5)),
        (
            RateWindow(MINUTE, 3, 5),
            NOW + timedelta(minutes=1),
            RateWindow(MINUTE.replace(minute=1), 5, 0),
        ),
        (
            RateWindow(MINUTE, 3, 5),
            NOW + timedelta(minutes=2),
            RateWindow(MINUTE.replace(minute=2), 0, 0),
        ),
        # A replica whose clock is behind the one that opened the minute counts into it.
        (RateWindow(MINUTE, 3, 5), NOW - timedelta(minutes=1), RateWindow(MINUTE, 3, 5)),
        (RateWindow(MINUTE, 3, 5), NOW - timedelta(seconds=31), RateWindow(MINUTE, 3, 5)),
    ],
    ids=["same-minute", "next-minute", "minutes-later", "a-minute-behind", "seconds-behind"],
)
def test_the_rate_window_rolls_forward_only(
    stored: RateWindow, now: datetime, rolled: RateWindow
) -> None:
    assert stored.roll(now) == rolled


def test_a_window_opened_by_a_clock_ahead_weighs_its_whole_previous_minute() -> None:
    assert RateWindow(MINUTE, 4, 5).estimate(MINUTE - timedelta(seconds=20)) == 9


def test_exhaustion_stops_the_expiring_warning() -> None:
    decision = _decide(Case(a_handle(usage_count=9)))
    assert decision.handle.notify_time is None


def test_drift_evidence_names_what_was_expected_and_what_was_seen() -> None:
    decision = _decide(Case(a_handle(**BOUND), seen=seen("10.0.0.2", "wf/1.0")))
    [anomaly] = decision.anomalies
    assert anomaly.evidence == {"expected_ip": "10.0.0.1", "seen_ip": "10.0.0.2"}


def test_an_address_bound_in_another_spelling_matches_its_canonical_form() -> None:
    # Bound before addresses were made canonical; the service presents canonical ones.
    case = Case(
        a_handle(bound_ip="2001:DB8:0::1", bound_user_agent="wf/1.0"),
        seen=seen("2001:db8::1", "wf/1.0"),
    )
    decision = _decide(case)
    assert decision.valid and not decision.anomalies


def test_a_revoking_anomaly_records_why() -> None:
    decision = _decide(Case(secret=GRACE_OVER))
    assert decision.handle.revoke_reason == "anomaly: TOKEN_REUSE"


# --- the plain-use shortcut ----------------------------------------------------------

# Weighted towards the plain use, so that both sides of the shortcut are drawn often.
_IPS = st.sampled_from([None, None, "", "10.0.0.1", "10.0.0.2"])
_AGENTS = st.sampled_from([None, None, "", "curl/8", "python/3"])
#: A handle binds only what a request brought: never an empty value.
_BOUND_IPS = st.sampled_from([None, None, None, "10.0.0.1"])
_BOUND_AGENTS = st.sampled_from([None, None, None, "curl/8"])
_STARTS = st.sampled_from(
    [MINUTE, MINUTE, MINUTE, None, MINUTE - timedelta(minutes=1), MINUTE + timedelta(seconds=7)]
)


@st.composite
def presentations(
    draw: st.DrawFn,
) -> tuple[Handle, HandleSecret, Presentation, datetime, SecurityPolicies, bool]:
    handle = a_handle(
        state=draw(st.sampled_from([HandleState.ACTIVE] * 4 + list(HandleState))),
        usage_count=draw(st.integers(0, 12)),
        max_usage=draw(st.integers(1, 30)),
        expire_time=NOW
        + draw(st.sampled_from([timedelta(hours=1)] * 3 + [timedelta(0), timedelta(hours=-1)])),
        bound_ip=draw(_BOUND_IPS),
        bound_user_agent=draw(_BOUND_AGENTS),
        rate=RateWindow(
            draw(_STARTS), draw(st.integers(0, 8)), draw(st.integers(0, 8)), draw(_STARTS)
        ),
    )
    secret = a_secret(
        draw(st.sampled_from([CURRENT, CURRENT, CURRENT, PREVIOUS])),
        draw(st.sampled_from([None, NOW + timedelta(minutes=1)])),
    )
    seen = Presentation(draw(_IPS), draw(_AGENTS), "peer")
    now = NOW + draw(st.sampled_from([timedelta(0), timedelta(seconds=29), timedelta(seconds=31)]))
    policies = SecurityPolicies(
        track_usage=draw(st.booleans()),
        anomaly_detection=draw(st.booleans()),
        rate_limit_per_handle=draw(st.integers(1, 30)),
    )
    return handle, secret, seen, now, policies, draw(st.booleans())


@settings(max_examples=2000, deadline=None)
@given(presentations())
def test_the_plain_use_shortcut_decides_as_every_rule_does(
    drawn: tuple[Handle, HandleSecret, Presentation, datetime, SecurityPolicies, bool],
) -> None:
    handle, secret, seen, now, policies, use = drawn
    shortcut = _plain_use(handle, secret, seen, now, policies, use)
    full = _decide_by_every_rule(handle, secret, seen, now, policies, use)
    event("shortcut" if shortcut is not None else "every rule")
    if shortcut is not None:
        assert shortcut == full
    elif full.valid and not full.rotated and full.transition is None:
        # What the shortcut leaves to the full rule, though valid: a rate window that
        # rolls, or a context to bind on this first use.
        rolls = handle.rate.start != now.replace(second=0, microsecond=0)
        binds = (handle.bound_ip is None and bool(seen.ip)) or (
            handle.bound_user_agent is None and bool(seen.user_agent)
        )
        assert rolls or binds
