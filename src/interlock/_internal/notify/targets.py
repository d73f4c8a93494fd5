"""Where notices go and in what shape: a signed generic webhook, a Slack incoming-webhook message,
or an ITSM ticket created with a configurable REST call (a Jira or ServiceNow issue create)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from interlock._internal.approvals.webhooks import (
    DELIVERY_HEADER,
    EVENT_HEADER,
    SIGNATURE_HEADER,
    body_bytes,
    signature,
)
from interlock._internal.notify.messages import EVENTS, Notice
from interlock.exceptions import ConfigError

KINDS = ("webhook", "slack", "ticket")


@dataclass(frozen=True)
class Target:
    name: str
    kind: str
    url: str
    events: frozenset[str]
    secret: str | None = field(default=None, repr=False)
    method: str = "POST"
    headers: dict[str, str] = field(default_factory=dict)
    token: str | None = field(default=None, repr=False)
    auth_scheme: str = "Bearer"
    body: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"notification target {self.name}: url must be http(s) with a host")
        if parts.username or parts.password:
            raise ConfigError(f"notification target {self.name}: url must not carry credentials")
        if self.kind not in KINDS:
            raise ConfigError(f"notification target {self.name}: kind must be one of {', '.join(KINDS)}")
        if self.kind == "webhook" and (self.secret is None or len(self.secret) < 16):
            raise ConfigError(f"notification target {self.name}: a webhook needs a secret of 16+ characters")
        unknown = self.events - set(EVENTS)
        if unknown:
            raise ConfigError(
                f"notification target {self.name}: unknown events {', '.join(sorted(unknown))} "
                f"(known: {', '.join(sorted(EVENTS))})"
            )

    def wants(self, kind: str) -> bool:
        return not self.events or kind in self.events

    def request(
        self, notice: Notice, *, delivery: str, now: float | None = None
    ) -> tuple[bytes, dict[str, str]]:
        """The body and headers of one delivery attempt."""
        headers = {"Content-Type": "application/json", "User-Agent": "interlock-notifications"}
        if self.kind == "webhook":
            body = body_bytes({"delivery": delivery, **notice.as_dict()})
            assert self.secret is not None
            stamp = int(time.time() if now is None else now)
            headers.update(
                {
                    SIGNATURE_HEADER: signature(self.secret, body, timestamp=stamp),
                    EVENT_HEADER: notice.event,
                    DELIVERY_HEADER: delivery,
                }
            )
        elif self.kind == "slack":
            body = body_bytes(slack_message(notice))
        else:
            body = body_bytes(fill(self.body or _DEFAULT_TICKET, notice))
            headers[DELIVERY_HEADER] = delivery
        headers.update(self.headers)
        if self.token is not None:
            headers["Authorization"] = f"{self.auth_scheme} {self.token}"
        return body, headers


def slack_message(notice: Notice) -> dict[str, Any]:
    """A Slack incoming-webhook payload: fallback ``text`` plus blocks with a console button."""
    blocks: list[dict[str, Any]] = [
        {"type": "section", "text": {"type": "mrkdwn", "text": f"*{_esc(notice.title)}*"}},
        {"type": "section", "text": {"type": "mrkdwn", "text": _esc(notice.text)}},
    ]
    if notice.link:
        blocks.append(
            {
                "type": "actions",
                "elements": [
                    {
                        "type": "button",
                        "text": {"type": "plain_text", "text": "Open in Interlock"},
                        "url": notice.link,
                    }
                ],
            }
        )
    text = notice.title if not notice.link else f"{notice.title} <{notice.link}|open in Interlock>"
    return {"text": _esc(text) if not notice.link else text, "blocks": blocks}


def _esc(text: str) -> str:
    # Slack's mrkdwn: only &, < and > are control characters.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


_DEFAULT_TICKET: dict[str, Any] = {
    "summary": "{title}",
    "description": "{text}\n\n{link}",
    "labels": ["interlock", "{event}"],
}


def fill(template: Any, notice: Notice) -> Any:
    """The ticket body: every string of the JSON template with ``{title}``, ``{text}``, ``{link}``,
    ``{event}``, ``{workflow}``, ``{run_id}``, ``{severity}`` replaced (other braces stay)."""
    values = {
        "title": notice.title,
        "text": notice.text,
        "link": notice.link or "",
        "event": notice.event,
        "workflow": notice.workflow or "",
        "run_id": notice.run_id or "",
        "severity": notice.severity,
    }
    if isinstance(template, str):
        out = template
        for key, value in values.items():
            out = out.replace("{" + key + "}", value)
        return out
    if isinstance(template, list):
        return [fill(item, notice) for item in template]
    if isinstance(template, dict):
        return {key: fill(value, notice) for key, value in template.items()}
    return template


def ticket_reference(body: bytes) -> str | None:
    """The ticket id an ITSM answered with (Jira ``key``/``id``, ServiceNow ``result.number``)."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(data, dict):
        return None
    result = data.get("result")
    if isinstance(result, dict):
        for name in ("number", "sys_id"):
            if isinstance(result.get(name), str):
                return str(result[name])
    for name in ("key", "id", "number"):
        if isinstance(data.get(name), str | int):
            return str(data[name])
    return None


def targets_from_settings(settings: Any) -> list[Target]:
    found = []
    for item in settings.notifications.targets:
        found.append(
            Target(
                name=item.name,
                kind=item.kind,
                url=item.url,
                events=frozenset(item.events),
                secret=item.secret.get_secret_value() if item.secret is not None else None,
                method=item.method,
                headers=dict(item.headers),
                token=item.token.get_secret_value() if item.token is not None else None,
                auth_scheme=item.auth_scheme,
                body=item.body,
            )
        )
    names = [t.name for t in found]
    if len(set(names)) != len(names):
        raise ConfigError("notification target names must be unique")
    return found


__all__ = ["KINDS", "Target", "fill", "slack_message", "targets_from_settings", "ticket_reference"]
