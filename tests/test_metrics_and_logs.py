"""Lock-free admission metrics and per-loop-turn log batching, without a server."""

from __future__ import annotations

import asyncio
import io
import json
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from sortie_egress import logs
from sortie_egress.server.metrics import LATENCY_BUCKETS, WebhookMetrics


def samples(text: str, prefix: str) -> dict[str, float]:
    found = {}
    for line in text.splitlines():
        if line.startswith(prefix):
            name, value = line.rsplit(" ", 1)
            found[name] = float(value)
    return found


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.sampled_from(LATENCY_BUCKETS), st.floats(0, 3, allow_nan=False)), max_size=60))
def test_latency_histogram_matches_prometheus_clients_own(values: list[float]) -> None:
    """prometheus_client's Histogram is the oracle for bucket edges ("le" is inclusive), counts and sum."""
    ours = WebhookMetrics()
    registry = CollectorRegistry()
    oracle = Histogram("sortie_egress_admission_duration_seconds", "x", ("endpoint",), buckets=LATENCY_BUCKETS,
                       registry=registry)
    for value in values:
        ours.observe("mutate", "patched", value)
        oracle.labels("mutate").observe(value)
    prefix = "sortie_egress_admission_duration_seconds_"
    expected = samples(generate_latest(registry).decode(), prefix)
    got = samples(ours.render().decode(), prefix)
    if not values:
        assert got == {}
        return
    expected_sum = expected.pop(prefix + 'sum{endpoint="mutate"}')
    assert got.pop(prefix + 'sum{endpoint="mutate"}') == pytest.approx(expected_sum)
    expected = {name: value for name, value in expected.items() if "_created" not in name}
    assert got == expected


def test_admissions_are_counted_by_endpoint_and_decision() -> None:
    metrics = WebhookMetrics()
    for endpoint, decision in [("mutate", "patched")] * 3 + [("mutate", "denied"), ("validate", "allowed")]:
        metrics.observe(endpoint, decision, 0.0002)
    counts = samples(metrics.render().decode(), "sortie_egress_admissions_total")
    assert counts == {
        'sortie_egress_admissions_total{decision="denied",endpoint="mutate"}': 1.0,
        'sortie_egress_admissions_total{decision="patched",endpoint="mutate"}': 3.0,
        'sortie_egress_admissions_total{decision="allowed",endpoint="validate"}': 1.0,
    }


@pytest.fixture
def stream(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every write that reaches the log stream, as it was made."""
    writes: list[str] = []

    class Recorder(io.StringIO):
        def write(self, text: str) -> int:
            writes.append(text)
            return len(text)

    monkeypatch.setattr(logs, "_stream", lambda: Recorder())
    return writes


def test_lines_of_one_loop_turn_are_written_together_before_the_loop_waits(stream: list[str]) -> None:
    async def scenario() -> list[int]:
        loop = asyncio.get_running_loop()
        seen_between_turns: list[int] = []
        with logs.batched_per_loop_turn(loop):
            for index in range(5):  # one turn: five admissions answered by one callback
                logs.event("admission", uid=f"u{index}")
            assert stream == []  # nothing written yet inside the turn
            await asyncio.sleep(0)  # the turn ends
            seen_between_turns.append(len(stream))
            logs.event("admission", uid="later")
            await asyncio.sleep(0)
            seen_between_turns.append(len(stream))
            logs.event("admission", uid="at-exit")  # flushed by leaving the block
        return seen_between_turns

    assert asyncio.run(scenario()) == [1, 2]
    assert len(stream) == 3
    first = [json.loads(line) for line in stream[0].splitlines()]
    assert [line["uid"] for line in first] == ["u0", "u1", "u2", "u3", "u4"]
    assert json.loads(stream[2])["uid"] == "at-exit"


def test_lines_from_other_threads_are_written_at_once(stream: list[str]) -> None:
    async def scenario() -> None:
        with logs.batched_per_loop_turn(asyncio.get_running_loop()):
            worker = threading.Thread(target=logs.event, args=("certificate",), kwargs={"result": "ok"})
            worker.start()
            worker.join()
            assert len(stream) == 1  # not waiting for a loop turn it does not belong to

    asyncio.run(scenario())


def test_outside_a_loop_every_line_is_written_at_once(stream: list[str]) -> None:
    logs.event("starting", component="webhook")
    logs.emit(logs.AdmissionLine(ts=logs.now(), endpoint="mutate", uid="u", operation="CREATE", kind="Pod",
                                 namespace=None, name="p", user="a", dry_run=False, decision="patched", warnings=0,
                                 duration_ms=0.042))
    assert len(stream) == 2
    line = json.loads(stream[1])
    assert list(line)[:3] == ["ts", "level", "event"] and line["event"] == "admission" and line["namespace"] is None


def test_odd_values_still_make_one_json_line(stream: list[str]) -> None:
    logs.event("odd", value=float("nan"), key={(1, 2): b"x"})
    assert len(stream) == 1 and stream[0].endswith("\n")
    assert json.loads(stream[0])["value"] is None


def test_a_failing_log_stream_never_fails_the_caller(monkeypatch: pytest.MonkeyPatch) -> None:
    class Broken(io.StringIO):
        def write(self, text: str) -> int:
            raise OSError("disk full")

    monkeypatch.setattr(logs, "_stream", lambda: Broken())
    logs.event("admission", uid="u")

    async def in_a_loop() -> None:
        with logs.batched_per_loop_turn(asyncio.get_running_loop()):
            logs.event("admission", uid="v")
            await asyncio.sleep(0)

    asyncio.run(in_a_loop())
