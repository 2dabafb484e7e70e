"""Property-based fuzzing of the HTTP listener from its own OpenAPI document
(schemathesis): valid and invalid requests to every non-streaming operation, /v1 and the
specification's routes, against a real server with authentication on. No answer may be a
server error: a client's mistake is a 4xx, whatever it sends."""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable

from keyturn_server.api.http import openapi
from tests.harness import SECRETS
from tests.process import ServerProcess

pytestmark = pytest.mark.slow

SCHEMA = schemathesis.openapi.from_path(str(Path(openapi.__file__).with_name(openapi.FILE)))
# Streams never end by themselves; test_http_sse.py covers them.
SCHEMA = SCHEMA.exclude(path_regex="watchExpiring")
# The token is ours (below); unauthenticated calls are tested route by route elsewhere.
SCHEMA.config.generation.update(with_security_parameters=False)


class Live:
    """The server under fuzz, and what the fuzz sent it (kept here, not in module globals:
    under xdist schemathesis may run the operations from another copy of this module)."""

    def __init__(self, base: str, token: str) -> None:
        self.base = base
        self.headers = {"Authorization": f"Bearer {token}"}
        self.tried: Counter[str] = Counter()
        self.server_errors: list[str] = []


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    server = ServerProcess(tmp_path_factory.mktemp("fuzz") / "data")
    base = server.start_http()
    try:
        token = server.token()
        SECRETS.add(token)
        yield Live(base, token)
    finally:
        server.terminate()
    assert '"level":"error"' not in server.log.read_text()


#: Examples per operation and generation mode (valid and invalid requests).
EXAMPLES = 20


def test_no_request_is_a_server_error(live: Live, record_property: Any) -> None:
    # Hypothesis is driven here, one operation at a time, rather than through
    # schemathesis' pytest plugin, whose per-operation subtests do not all run under xdist.
    operations = [result.ok() for result in SCHEMA.get_all_operations()]
    assert len(operations) >= 45
    for operation in operations:
        for mode in schemathesis.GenerationMode:

            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                database=None,
                derandomize=True,
                suppress_health_check=list(HealthCheck),
                phases=[Phase.explicit, Phase.generate],
            )
            @given(case=operation.as_strategy(generation_mode=mode))
            def call(case: Any) -> None:
                response = case.call(base_url=live.base, headers=live.headers, timeout=30)
                live.tried[f"{response.status_code // 100}xx"] += 1
                where = f"{case.method} {case.formatted_path}"
                if response.status_code >= 500:
                    live.server_errors.append(f"{where}: {response.text[:300]}")
                assert response.status_code < 500, f"{where}: {response.text}"
                if response.headers.get("Content-Type", "").startswith("application/json"):
                    response.json()  # every JSON answer parses

            # Unsatisfiable: no invalid request to make (an operation without parameters).
            with contextlib.suppress(Unsatisfiable):
                call()
    total = sum(live.tried.values())
    spread = ", ".join(f"{k} {v}" for k, v in sorted(live.tried.items()))
    record_property(
        "figures",
        f"http fuzz: {total} requests to {len(operations)} operations from openapi.json "
        f"({spread}), {len(live.server_errors)} server errors",
    )
    assert live.server_errors == []
