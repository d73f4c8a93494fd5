"""Canonical JSON: the fast path (orjson) writes exactly the bytes of RFC 8785 and of the
standard library's compact, key-sorted encoder, for every value it takes."""

from __future__ import annotations

import json
from typing import Any

import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from interlock._internal.audit.canonical import (
    _plain,
    canonical_json,
    hash_value,
    plain_canonical_text,
    sha256_hex,
)

_keys = st.text(st.characters(exclude_categories=("Cs",)), max_size=6)
_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53) + 1, max_value=2**53 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(exclude_categories=("Cs",)), max_size=12)
)
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_keys, inner, max_size=4),
    max_leaves=20,
)


def _stdlib(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


@settings(max_examples=400, deadline=None)
@given(_values)
def test_the_fast_path_writes_the_rfc8785_and_standard_library_bytes(value: Any) -> None:
    encoded = canonical_json(value)
    assert encoded == rfc8785.dumps(value)
    if _plain(value):
        assert encoded == _stdlib(value).encode("utf-8")
        assert plain_canonical_text(value) == encoded.decode("utf-8")
    else:
        assert plain_canonical_text(value) is None
    assert hash_value(value) == sha256_hex(encoded)


def test_every_character_is_escaped_as_rfc8785_escapes_it() -> None:
    text = "".join(chr(c) for c in range(0x2100) if not 0xD800 <= c <= 0xDFFF)
    value = {text: [text, "\u2028\u2029\U0001f600\ufeff"]}
    assert canonical_json(value) == rfc8785.dumps(value) == _stdlib(value).encode("utf-8")


def test_what_orjson_refuses_is_written_or_refused_as_before() -> None:
    deep: Any = "leaf"
    for _ in range(300):  # past orjson's nesting limit
        deep = [deep]
    assert canonical_json(deep) == _stdlib(deep).encode("utf-8")
    assert plain_canonical_text(deep) == _stdlib(deep)
    lone = {"k": "\ud800"}  # a lone surrogate: text to hash as written, no UTF-8 bytes
    assert plain_canonical_text(lone) == _stdlib(lone)
    try:
        canonical_json(lone)
    except ValueError:
        pass
    else:  # pragma: no cover
        raise AssertionError("a lone surrogate has no UTF-8 form")
