"""Hostile JSON in the annotation: a clear error every time, never a crash or a hang."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sortie_egress.policy.strict_json import JSONInputError, loads_strict, nesting_depth_exceeds


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ('{"mode": "allowlist", "mode": "denylist"}', 'duplicate key "mode"'),
        ('{"rules": [{"port": 1, "port": 2}]}', 'duplicate key "port"'),
        ("NaN", "NaN is not valid JSON"),
        ('{"port": Infinity}', "Infinity is not valid JSON"),
        ('{"port": -Infinity}', "-Infinity is not valid JSON"),
        ('{"port": 1e999}', "out of range"),
        ('{"port": ' + "9" * 5000 + "}", "too large"),
        ("[" * 33 + "]" * 33, "nested deeper than 32 levels"),
        ("[" * 100000, "nested deeper than 32 levels"),
        ('{"a": ' * 5000, "nested deeper than 32 levels"),
        ("{", "Expecting property name"),
        ('{"a": 1} trailing', "Extra data"),
        ("", "Expecting value"),
    ],
)
def test_hostile_documents_get_a_reason(text: str, reason: str) -> None:
    with pytest.raises(JSONInputError, match=None) as error:
        loads_strict(text)
    assert reason in str(error.value)


def test_brackets_inside_strings_do_not_count_as_nesting() -> None:
    text = '{"cidr": "' + "[" * 100 + '\\"]]]"}'
    assert not nesting_depth_exceeds(text, 3)
    assert loads_strict(text) == {"cidr": "[" * 100 + '"]]]'}


def test_depth_limit_is_exact() -> None:
    assert not nesting_depth_exceeds("[" * 32 + "]" * 32, 32)
    assert nesting_depth_exceeds("[" * 33 + "]" * 33, 32)
    assert nesting_depth_exceeds("{}" * 3 + "[" * 33 + "]" * 33, 32)


def test_few_brackets_pass_without_a_scan_and_many_shallow_ones_still_pass() -> None:
    assert not nesting_depth_exceeds("[" * 32 + "]" * 32, 32)  # exactly the limit's count of openers
    shallow = "[" + "[]," * 40 + "[]]"  # 42 openers, depth 2: the scan decides
    assert not nesting_depth_exceeds(shallow, 32)
    assert loads_strict(shallow) == [[]] * 41
    quoted = '["' + "{" * 40 + '"]'  # 41 openers, 40 of them quoted
    assert not nesting_depth_exceeds(quoted, 32)


def test_64k_of_brackets_is_checked_in_linear_time() -> None:
    worst = "[{" * 32768
    started = time.perf_counter()
    for _ in range(10):
        with pytest.raises(JSONInputError):
            loads_strict(worst)
    assert (time.perf_counter() - started) / 10 < 0.010


@given(st.recursive(st.none() | st.booleans() | st.integers(-(10**18), 10**18) | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                    max_leaves=30))
@settings(max_examples=300)
def test_ordinary_json_round_trips(value: object) -> None:
    import json

    assert loads_strict(json.dumps(value)) == value


@given(st.text(max_size=300))
@settings(max_examples=500)
def test_any_text_parses_or_raises_jsoninputerror(text: str) -> None:
    try:
        loads_strict(text)
    except JSONInputError as exc:
        assert str(exc)
