"""Correcting a handoff's held action with a form built from the tool's input schema: fields, types
and required marks from the schema, the answers validated on the server against that schema with
an error next to each field; on SQLite and PostgreSQL."""

from __future__ import annotations

import html
import re

import pytest
from fastapi.testclient import TestClient

from conftest import Harness
from interlock._internal.operations.argument_form import form_fields, parse_form
from interlock._internal.server import create_app

WF = "support-triage"
CSRF_FIELD = re.compile(r'name="csrf" value="([^"]*)"')
UPDATE = {"ticket_id": "T-1001", "fields": {"priority": "low", "tags": ["login", "vip"]}}


@pytest.fixture
def olga(harness: Harness) -> TestClient:
    _, token = harness.il.operators.create("olga", roles=["owner"], workflows=[WF], actor="test")
    client = TestClient(create_app(interlock=harness.il), follow_redirects=False)
    form = client.get("/ui/login")
    found = CSRF_FIELD.search(form.text)
    assert found is not None
    assert client.post("/ui/login", data={"token": token, "csrf": found.group(1)}).status_code == 303
    return client


def unsure_update(h: Harness) -> tuple[str, str]:
    """A ticket update the agent is unsure of (confidence 0.2): the stop rule hands it to a person."""
    run = h.run()
    held = h.act(run, "tickets.update", UPDATE, confidence=0.2)
    assert held.status == "escalated"
    [handoff] = [x for x in h.il.handoffs.list(workflow=WF) if x.run_id == run]
    return run, handoff.id


def fields_of(page: str) -> dict[str, str]:
    """Each form field's name and the kind of input it is."""
    found = re.findall(r'<(input|select|textarea) id="arg-[^"]*" name="arg\.([^"]+)"', page)
    return {name: tag for tag, name in found}


def test_the_form_follows_the_tool_schema(harness: Harness) -> None:
    tool = harness.runtime.tool("tickets.update")
    fields = {f.name: f for f in form_fields(tool.spec.input_schema, UPDATE)}
    assert fields["ticket_id"].kind == "text"
    assert fields["ticket_id"].required
    assert fields["ticket_id"].value == "T-1001"
    assert "pattern ^T-[0-9]{1,8}$" in fields["ticket_id"].hint
    assert fields["fields"].kind == "group"
    assert fields["fields.priority"].kind == "choice"
    assert fields["fields.priority"].choices == ("low", "normal", "high", "urgent")
    assert fields["fields.priority"].value == "low"
    assert fields["fields.tags"].kind == "lines"
    assert fields["fields.tags"].value == "login\nvip"
    assert fields["fields.group"].value == ""
    assert not fields["fields.group"].required
    refund = {f.name: f for f in form_fields(harness.runtime.tool("payments.refund").spec.input_schema, {})}
    assert refund["amount"].kind == "number"
    assert "more than 0" in refund["amount"].hint
    assert refund["reason"].kind == "textarea"  # up to 1000 characters: a text area


def test_answers_are_typed_and_checked_against_the_schema(harness: Harness) -> None:
    refund = harness.runtime.tool("payments.refund")
    args, errors = parse_form(
        refund, {"ticket_id": "T-1003", "amount": "120.5", "currency": "EUR", "reason": "twice"}
    )
    assert errors == {}
    assert args == {"ticket_id": "T-1003", "amount": 120.5, "currency": "EUR", "reason": "twice"}
    args, errors = parse_form(refund, {"ticket_id": "T-1003", "amount": "lots", "currency": "EUR"})
    assert errors == {"amount": "Expected a number."}
    _, errors = parse_form(refund, {"ticket_id": "X-1", "amount": "-3", "currency": "GBP", "reason": ""})
    assert errors["currency"] == "Expected one of USD, EUR."
    _, errors = parse_form(refund, {"ticket_id": "X-1", "amount": "-3", "currency": "USD", "reason": ""})
    assert set(errors) == {"ticket_id", "amount", "reason"}
    assert "does not match" in errors["ticket_id"]
    assert "minimum" in errors["amount"] or "less than or equal" in errors["amount"]
    _, errors = parse_form(refund, {"amount": "3", "currency": "USD", "reason": "x"})
    assert errors == {"ticket_id": "Required."}

    update = harness.runtime.tool("tickets.update")
    args, errors = parse_form(
        update, {"ticket_id": "T-1", "fields.tags": "a\n\n b \n", "fields.priority": ""}
    )
    assert errors == {}
    assert args == {"ticket_id": "T-1", "fields": {"tags": ["a", "b"]}}
    _, errors = parse_form(update, {"ticket_id": "T-1"})
    assert list(errors) == ["fields"]  # required, and at least one change (minProperties)


def test_a_handoff_is_corrected_with_the_form(harness: Harness, olga: TestClient) -> None:
    run, handoff_id = unsure_update(harness)
    page = olga.get(f"/ui/handoffs/{handoff_id}").text
    assert fields_of(page) == {
        "ticket_id": "input",
        "fields.priority": "select",
        "fields.group": "input",
        "fields.status": "select",
        "fields.tags": "textarea",
    }
    assert '<option value="low" selected>' in page
    assert "Or edit the details as JSON" in page
    csrf = CSRF_FIELD.search(page)
    assert csrf is not None
    form = {
        "csrf": csrf.group(1),
        "action": "resume_with_arguments",
        "mode": "form",
        "comment": "urgent after all",
    }

    bad = olga.post(
        f"/ui/handoffs/{handoff_id}",
        data={**form, "arg.ticket_id": "1001", "arg.fields.priority": "urgent", "arg.fields.tags": "login"},
    )
    assert bad.status_code == 422
    text = html.unescape(bad.text)
    assert "1 field needs a correction" in text
    assert re.search(r'id="arg-ticket_id" name="arg.ticket_id" autofocus', bad.text)
    assert re.search(r'<p class="field-error" id="arg-ticket_id-error">[^<]*does not match', text)
    assert 'value="1001"' in bad.text  # what was typed stays
    assert '<option value="urgent" selected>' in bad.text
    assert 'aria-invalid="true"' in bad.text
    assert harness.il.handoffs.get(handoff_id).state == "open"

    done = olga.post(
        f"/ui/handoffs/{handoff_id}",
        data={
            **form,
            "arg.ticket_id": "T-1001",
            "arg.fields.priority": "urgent",
            "arg.fields.tags": "login\nvip",
        },
    )
    assert done.status_code == 303
    assert harness.il.handoffs.get(handoff_id).state == "resumed"
    last = harness.il.get_run(run).steps_detail[-1]
    assert last.tool == "tickets.update"
    assert last.arguments == {
        "ticket_id": "T-1001",
        "fields": {"priority": "urgent", "tags": ["login", "vip"]},
    }
    assert last.status == "executed"
