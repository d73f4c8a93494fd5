"""Default redaction: secrets and PII are masked before anything is stored."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from interlock._internal.telemetry.redaction import MASK, redact, redact_text


def test_secret_keys_are_masked_whatever_their_value() -> None:
    out = redact({"password": "hunter2", "api_key": 12345, "nested": {"client_secret": "x"}, "name": "Ada"})
    assert out == {"password": MASK, "api_key": MASK, "nested": {"client_secret": MASK}, "name": "Ada"}


def test_secret_patterns_in_text() -> None:
    text = (
        "card 4111 1111 1111 1111, key sk-abcdefghijklmnop1234, aws AKIAABCDEFGHIJKLMNOP, "
        "Authorization: Bearer abcdefghijklmnopqrstuvwxyz, ssn 123-45-6789, "
        "jwt eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJib3QifQ.c2lnbmF0dXJlc2lnbmF0dXJl"
    )
    red = redact_text(text)
    for secret in (
        "4111 1111",
        "sk-abcdef",
        "AKIAABCD",
        "abcdefghijklmnopqrstuvwxyz",
        "123-45-6789",
        "eyJhbGci",
    ):
        assert secret not in red


def test_card_like_numbers_failing_luhn_are_kept() -> None:
    assert redact_text("order 1234 5678 9012 3456 shipped") == "order 1234 5678 9012 3456 shipped"


def test_emails_keep_first_letter_and_domain() -> None:
    assert redact_text("write to jane.doe@example.com please") == "write to j***@example.com please"


def test_extra_secrets_are_masked_in_values_and_keys() -> None:
    out = redact(
        {"echo": "token=s3cr3t-value-1234", "s3cr3t-value-1234": 1}, extra_secrets=("s3cr3t-value-1234",)
    )
    assert "s3cr3t-value-1234" not in str(out)


def test_deep_nesting_is_cut_off() -> None:
    deep: object = "x"
    for _ in range(200):
        deep = [deep]
    assert "x" not in str(redact(deep)).replace("REDACTED", "")


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(),
        lambda c: st.lists(c) | st.dictionaries(st.text(), c),
        max_leaves=30,
    )
)
def test_redact_never_fails_on_json_like_values(value: object) -> None:
    redact(value, extra_secrets=("abc",))


def _redact_uncached(value: object, secrets: tuple[str, ...], depth: int = 0) -> object:
    """What redact did before keys were remembered: every key redacted anew."""
    from interlock._internal.telemetry.redaction import _MAX_DEPTH, _SECRET_KEYS, mask_secrets

    if depth > _MAX_DEPTH:
        return MASK
    if isinstance(value, str):
        return redact_text(mask_secrets(value, secrets))
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if isinstance(key, str) and _SECRET_KEYS.search(key) and isinstance(item, str | int | float):
                out[key] = MASK
                continue
            safe = _redact_uncached(key, secrets, depth + 1) if isinstance(key, str) else key
            out[safe] = _redact_uncached(item, secrets, depth + 1)
        return out
    if isinstance(value, list | tuple):
        return [_redact_uncached(v, secrets, depth + 1) for v in value]
    return value


_KEYS = st.sampled_from(
    ["ticket_id", "password", "jane.doe@example.com", "4111 1111 1111 1111", "s3cr3t-value", "ok", "x" * 300]
) | st.text(max_size=12)


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=30),
        lambda c: st.lists(c, max_size=3) | st.dictionaries(_KEYS, c, max_size=4),
        max_leaves=20,
    ),
    st.sampled_from([(), ("s3cr3t-value",), ("ticket",)]),
)
@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_remembered_keys_redact_as_keys_redacted_anew(value: object, secrets: tuple[str, ...]) -> None:
    # Twice: the second time every key is remembered.
    assert redact(value, extra_secrets=secrets) == _redact_uncached(value, secrets)
    assert redact(value, extra_secrets=secrets) == _redact_uncached(value, secrets)


def test_keys_past_the_depth_limit_are_masked() -> None:
    deep: object = {"ticket_id": 1}
    for _ in range(70):
        deep = {"k": deep}
    assert redact(deep) == _redact_uncached(deep, ())
