"""The console's handoff pages and kill switches through FastAPI's TestClient, on SQLite and PostgreSQL."""

from __future__ import annotations

import html
import re
from typing import Any

import pytest
from fastapi.testclient import TestClient

from conftest import Harness
from interlock._internal.server import create_app

WF = "support-triage"
TICKET = {"ticket_id": "T-1001"}
CSRF_FIELD = re.compile(r'name="csrf" value="([^"]*)"')


class Console:
    def __init__(self, harness: Harness) -> None:
        self.h = harness
        self.app = create_app(interlock=harness.il)
        ops = harness.il.operators
        self.tokens = {
            "approver": ops.create("ana", roles=["approver"], workflows=[WF], actor="test")[1],
            "owner": ops.create("olga", roles=["owner"], workflows=[WF], actor="test")[1],
            "admin": ops.create("adam", roles=["admin"], workflows=None, actor="test")[1],
            "auditor": ops.create("audrey", roles=["auditor"], workflows=[WF], actor="test")[1],
            "stranger": ops.create(
                "sam", roles=["approver", "owner"], workflows=["other-flow"], actor="test"
            )[1],
        }

    def signed_in(self, who: str) -> TestClient:
        client = TestClient(self.app, follow_redirects=False)
        form = client.get("/ui/login")
        signed = client.post("/ui/login", data={"token": self.tokens[who], "csrf": csrf_of(form.text)})
        assert signed.status_code == 303
        return client

    def looped(self) -> tuple[str, str]:
        run = self.h.run()
        for _ in range(3):
            assert self.h.act(run, "tickets.get", TICKET).executed
        assert self.h.act(run, "tickets.get", TICKET).status == "escalated"
        [handoff] = [x for x in self.h.il.handoffs.list(workflow=WF) if x.run_id == run]
        return run, handoff.id


@pytest.fixture
def console(harness: Harness) -> Console:
    return Console(harness)


def csrf_of(page: str) -> str:
    found = CSRF_FIELD.search(page)
    assert found, "the page has no CSRF field"
    return found.group(1)


def resolve(client: TestClient, handoff_id: str, **form: str) -> Any:
    page = client.get(f"/ui/handoffs/{handoff_id}")
    assert page.status_code == 200
    return client.post(f"/ui/handoffs/{handoff_id}", data={"csrf": csrf_of(page.text), **form})


def test_the_handoffs_page_lists_open_items_in_plain_words(console: Console) -> None:
    run, handoff_id = console.looped()
    audrey = console.signed_in("auditor")
    page = audrey.get("/ui/handoffs")
    assert page.status_code == 200
    text = html.unescape(page.text)
    assert f'href="/ui/handoffs/{handoff_id}"' in page.text
    assert "The agent kept repeating the same call" in text
    assert "already ran 3 times" in text
    assert "Read ticket T-1001" in text
    assert f'href="/ui/runs/{run}"' in page.text
    assert 'aria-current="page">Handoffs</a>' in page.text  # the nav link
    assert "1 handoff open" in text

    one = audrey.get(f"/ui/handoffs/{handoff_id}")
    assert one.status_code == 200
    assert "triage-bot" in one.text
    assert "Waiting for a person" in one.text
    assert 'name="action"' not in one.text  # an auditor reads, never resolves
    assert "cannot resolve this handoff" in one.text
    refused = audrey.post(f"/ui/handoffs/{handoff_id}", data={"csrf": csrf_of(one.text), "action": "stop"})
    assert refused.status_code == 403
    assert console.h.il.handoffs.get(handoff_id).state == "open"

    stranger = console.signed_in("stranger")
    assert handoff_id not in stranger.get("/ui/handoffs").text
    assert stranger.get(f"/ui/handoffs/{handoff_id}").status_code == 404


def test_an_approver_stops_the_run_with_a_reason(console: Console) -> None:
    run, handoff_id = console.looped()
    ana = console.signed_in("approver")
    page = ana.get(f"/ui/handoffs/{handoff_id}")
    assert 'value="resume"' in page.text
    assert 'value="resume_with_arguments"' in page.text
    assert 'value="stop"' in page.text
    forged = ana.post(f"/ui/handoffs/{handoff_id}", data={"csrf": "guess", "action": "stop", "comment": "x"})
    assert forged.status_code == 403
    blank = resolve(ana, handoff_id, action="stop", comment="  ")
    assert blank.status_code == 422
    assert "Say why you stop the run" in blank.text
    assert console.h.il.handoffs.get(handoff_id).state == "open"
    unknown = resolve(ana, handoff_id, action="pause")
    assert unknown.status_code == 422

    done = resolve(ana, handoff_id, action="stop", comment="it keeps looping")
    assert done.status_code == 303
    assert done.headers["location"] == f"/ui/handoffs/{handoff_id}"
    assert console.h.il.get_run(run).state == "stopped"
    after = ana.get(f"/ui/handoffs/{handoff_id}").text
    assert "Stopped by" in after
    assert "operator:ana" in after
    assert "it keeps looping" in after
    assert 'name="action"' not in after
    assert handoff_id not in ana.get("/ui/handoffs").text  # no longer open
    assert handoff_id in ana.get("/ui/handoffs?state=stopped").text


def test_edited_arguments_resume_the_run_through_the_pipeline(console: Console) -> None:
    run, handoff_id = console.looped()
    olga = console.signed_in("owner")
    page = olga.get(f"/ui/handoffs/{handoff_id}")
    assert "&#34;ticket_id&#34;: &#34;T-1001&#34;" in page.text  # the stored arguments, to edit
    bad = resolve(olga, handoff_id, action="resume_with_arguments", arguments="{nope")
    assert bad.status_code == 422
    assert "not valid JSON" in bad.text
    assert "{nope" in bad.text  # what was typed is kept
    assert resolve(olga, handoff_id, action="resume_with_arguments", arguments="[1]").status_code == 422
    assert console.h.il.handoffs.get(handoff_id).state == "open"

    done = resolve(
        olga, handoff_id, action="resume_with_arguments", arguments='{"ticket_id": "T-1002"}', comment="other"
    )
    assert done.status_code == 303
    assert console.h.il.get_run(run).state == "running"
    after = html.unescape(olga.get(f"/ui/handoffs/{handoff_id}").text)
    assert "Resumed with edited arguments" in after
    assert "Read ticket T-1002" in after
    assert "Done" in after
    again = resolve(console.signed_in("approver"), handoff_id, action="resume")
    assert again.status_code == 409  # decided once; the page says so, without forms
    assert "already resumed" in again.text
    assert 'name="action"' not in again.text


def test_a_plain_resume_and_a_conflict(console: Console) -> None:
    run, handoff_id = console.looped()
    ana = console.signed_in("approver")
    olga = console.signed_in("owner")
    stale = olga.get(f"/ui/handoffs/{handoff_id}")
    assert resolve(ana, handoff_id, action="resume").status_code == 303
    assert console.h.il.get_run(run).state == "running"
    late = olga.post(
        f"/ui/handoffs/{handoff_id}", data={"csrf": csrf_of(stale.text), "action": "stop", "comment": "x"}
    )
    assert late.status_code == 409
    assert "already resumed" in late.text
    assert console.h.il.get_run(run).state == "running"


def test_the_run_timeline_links_to_its_handoffs(console: Console) -> None:
    run, handoff_id = console.looped()
    other_run, other_id = console.looped()
    ana = console.signed_in("approver")
    timeline = ana.get(f"/ui/runs/{run}").text
    link = f"/ui/handoffs?run={run}&amp;state=all"
    assert link in timeline
    listed = ana.get(html.unescape(link)).text
    assert handoff_id in listed
    assert other_id not in listed


def test_an_owner_pauses_and_resumes_an_agent(console: Console) -> None:
    run = console.h.run()
    olga = console.signed_in("owner")
    page = olga.get("/ui/handoffs")
    assert "Nothing is paused." in page.text
    assert 'Pause<span class="visually-hidden"> agent triage-bot' in page.text
    assert "environment production" not in page.text  # environments are for admins of everything
    form = {"csrf": csrf_of(page.text), "scope": "agent", "key": "triage-bot"}
    blank = olga.post("/ui/pauses", data={**form, "reason": " "})
    assert blank.status_code == 422
    done = olga.post("/ui/pauses", data={**form, "reason": "odd refunds"})
    assert done.status_code == 303
    assert done.headers["location"] == "/ui/handoffs#kill-switches"
    assert console.h.act(run, "tickets.get", TICKET).decision.reason_codes == ["agent_paused"]
    paused = olga.get("/ui/handoffs").text
    assert "odd refunds" in paused
    assert "operator:olga" in paused
    assert 'Resume<span class="visually-hidden"> agent triage-bot' in paused
    assert olga.post("/ui/pauses/resume", data=form).status_code == 303
    assert console.h.act(run, "tickets.get", TICKET).executed
    refused = olga.post(
        "/ui/pauses", data={**form, "scope": "environment", "key": "production", "reason": "x"}
    )
    assert refused.status_code == 403


def test_approvers_cannot_pause_agents_and_admins_pause_environments(console: Console) -> None:
    run = console.h.run()
    ana = console.signed_in("approver")
    page = ana.get("/ui/handoffs")
    assert "/ui/pauses" not in page.text
    form = {"csrf": csrf_of(page.text), "scope": "agent", "key": "triage-bot", "reason": "x"}
    assert ana.post("/ui/pauses", data=form).status_code == 403
    assert (
        ana.post("/ui/pauses", data={**form, "scope": "environment", "key": "production"}).status_code == 403
    )
    assert console.h.il.pauses() == []

    adam = console.signed_in("admin")
    admin_page = adam.get("/ui/handoffs")
    assert 'Pause<span class="visually-hidden"> environment production' in admin_page.text
    env = {"csrf": csrf_of(admin_page.text), "scope": "environment", "key": "production"}
    assert adam.post("/ui/pauses", data={**env, "reason": "incident"}).status_code == 303
    assert console.h.act(run, "tickets.get", TICKET).decision.reason_codes == ["environment_paused"]
    assert "incident" in ana.get("/ui/handoffs").text  # everyone sees an environment pause
    assert ana.post("/ui/pauses/resume", data={**env, "csrf": csrf_of(page.text)}).status_code == 403
    assert adam.post("/ui/pauses/resume", data=env).status_code == 303
    assert console.h.act(run, "tickets.get", TICKET).executed
    assert adam.post("/ui/pauses/resume", data={**env, "csrf": "guess"}).status_code == 403
