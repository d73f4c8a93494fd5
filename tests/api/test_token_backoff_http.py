"""/oauth/token backs off per client id: 429 with Retry-After, counted in /metrics, shared by
replicas through the database. Two servers on one database, over real HTTP, on SQLite and
PostgreSQL."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import SUPPORT_TRIAGE, Harness
from interlock import Interlock, Settings
from interlock._internal.server import create_app
from servers import LiveServer

SERVER = {"token_failures_allowed": 3, "token_backoff_s": 1.0, "token_backoff_max_s": 60.0}


@pytest.fixture
def replicas(db_url: str) -> Iterator[tuple[Harness, httpx.Client, httpx.Client]]:
    harness = Harness(db_url, server=SERVER)
    other = Interlock(Settings(database={"url": db_url}, server=SERVER))  # type: ignore[arg-type]
    other.load_workflow(SUPPORT_TRIAGE)
    try:
        with (
            LiveServer(create_app(interlock=harness.il)) as a_url,
            LiveServer(create_app(interlock=other)) as b_url,
            httpx.Client(base_url=a_url, timeout=30) as a,
            httpx.Client(base_url=b_url, timeout=30) as b,
        ):
            yield harness, a, b
    finally:
        other.close()
        harness.close()


def _token(http: httpx.Client, secret: str, client_id: str = "triage-bot") -> httpx.Response:
    form = {"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret}
    return http.post("/oauth/token", data=form)


def _failures(http: httpx.Client) -> dict[str, float]:
    text = http.get("/metrics").text
    return {
        s.labels["reason"]: s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "interlock_http_token_failures_total"
    }


def test_wrong_secrets_back_off_on_every_replica_and_the_right_one_works_after(
    replicas: tuple[Harness, httpx.Client, httpx.Client],
) -> None:
    harness, a, b = replicas
    secret = harness.secrets["triage-bot"]
    # Failures spread over both replicas count together.
    assert _token(a, "ilsk_wrong").status_code == 401
    assert _token(b, "ilsk_wrong").status_code == 401
    third = _token(a, "ilsk_wrong")
    assert third.status_code == 429
    assert third.json()["error"] == "invalid_client"
    assert third.headers["Retry-After"] == "1"
    assert third.headers["Cache-Control"] == "no-store"
    # Blocked on the other replica too, even with the right secret, which is not even checked.
    refused = _token(b, secret)
    assert refused.status_code == 429
    assert int(refused.headers["Retry-After"]) >= 1
    # Another client id is not affected.
    assert _token(b, harness.secrets["reporter"], client_id="reporter").status_code == 200
    time.sleep(1.1)
    assert _token(b, secret).status_code == 200
    # The success cleared the record: the next wrong secret is a plain 401 again.
    assert _token(a, "ilsk_wrong").status_code == 401
    # /metrics counts the failures each replica saw.
    assert _failures(a) == {"invalid_client": 3.0}
    assert _failures(b) == {"invalid_client": 1.0, "backoff": 1.0}


def test_the_block_doubles_with_each_failure_after_it(
    replicas: tuple[Harness, httpx.Client, httpx.Client],
) -> None:
    _harness, a, b = replicas
    for _ in range(3):
        last = _token(a, "ilsk_wrong")
    assert last.status_code == 429
    time.sleep(1.1)
    again = _token(b, "ilsk_wrong")  # the fourth failure blocks for two seconds
    assert again.status_code == 429
    assert again.headers["Retry-After"] == "2"
    assert _token(a, "ilsk_wrong").headers["Retry-After"] in ("1", "2")
