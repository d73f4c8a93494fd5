"""Default redaction: secrets and PII are masked before anything is stored."""

from __future__ import annotations

from hypothesis import given
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
