"""Stored JSON text (``store/json_text.py``) is written by orjson but means what the standard
library's text meant: the same value read back, keys sorted, the same refusals, NaN kept."""

from __future__ import annotations

import datetime
import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from interlock._internal.store import json_text


def _std(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _same(a: Any, b: Any) -> bool:
    """Equal, with NaN equal to NaN."""
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text()
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8) | st.integers(), inner, max_size=5)
    ),
    max_leaves=25,
)


@settings(max_examples=400, deadline=None)
@given(values)
def test_what_is_read_back_is_what_the_standard_library_would_read_back(value: Any) -> None:
    try:
        expected = json.loads(_std(value))
    except (TypeError, ValueError) as exc:  # refused before: refused now, the same way
        with pytest.raises(type(exc)):
            json_text.dumps(value)
        return
    stored = json_text.dumps(value)
    assert _same(json_text.loads(stored), expected)
    assert _same(json.loads(stored), expected)  # any reader of the column reads the same


def test_keys_sorted_compact_and_utf8() -> None:
    assert json_text.dumps({"b": 1, "a": ["é", None, True]}) == '{"a":["é",null,true],"b":1}'


def test_nan_and_infinity_are_kept_not_turned_into_null() -> None:
    stored = json_text.dumps({"x": [float("nan"), float("inf"), None]})
    assert stored == '{"x":[NaN,Infinity,null]}'
    got = json_text.loads(stored)
    assert math.isnan(got["x"][0])
    assert got["x"][1] == math.inf
    assert got["x"][2] is None


def test_values_json_refuses_are_refused() -> None:
    for value in (datetime.datetime(2026, 1, 1), {1, 2}, {"when": datetime.date(2026, 1, 1)}, b"x"):
        with pytest.raises(TypeError):
            json_text.dumps(value)


def test_non_string_keys_and_big_integers_as_before() -> None:
    for value in ({1: "a", 2: 2.5}, {"n": 2**80}, [-(2**70)], -(2**63) - 1):
        assert json_text.dumps(value) == _std(value)
        assert json_text.loads(json_text.dumps(value)) == json.loads(_std(value))
