"""The webhook's memory is bounded whatever any pod sends to its port (issue 21, case 8).

Real sockets against ``sortie-egress serve``: many connections holding unfinished bodies of the
largest size a request may have, and many distinct large reviews. The process stays under the
shipped memory limit (manifests/base/webhook.yaml: 256 MiB), and a session pod's review is still
answered afterwards and meanwhile.
"""

from __future__ import annotations

import json
import ssl
from pathlib import Path

import pytest

from tests.support import WebhookProcess, generate_certs, session_pod
from tests.test_server import _raw_tls, request, review_body
from sortie_egress.admission import memo
from sortie_egress.admission.memo import mutation_key
from sortie_egress.admission.review import decode_request
from sortie_egress.constants import MAX_REVIEW_BYTES
from sortie_egress.server.budget import BodyBudget

SHIPPED_LIMIT = 256 * 1024 * 1024


def rss(server: WebhookProcess) -> int:
    assert server.process is not None
    for line in Path(f"/proc/{server.process.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_the_budget_reserves_only_what_fits() -> None:
    budget = BodyBudget(capacity=10)
    assert budget.take(6) and not budget.take(5) and budget.used == 6
    assert budget.take(4) and budget.used == 10
    budget.give_back(7)
    assert budget.used == 3
    budget.give_back(9)  # never below zero
    assert budget.used == 0


@pytest.fixture
def webhook(tmp_path: Path) -> WebhookProcess:
    generate_certs(tmp_path / "c")
    server = WebhookProcess(tmp_path / "c", tmp_path / "log", extra_args=("--request-timeout", "30")).start()
    yield server  # type: ignore[misc]
    server.stop()


@pytest.mark.parametrize("route", ["fast path", "ordinary route"])
def test_held_bodies_cannot_take_the_webhook_past_its_memory_limit(webhook: WebhookProcess, route: str) -> None:
    """70 connections each sending all but the last byte of a 3 MiB body (the attack that took a
    replica to 305 MiB): the ones past the budget are answered 503 and closed; the process stays
    under the limit, and a session pod is still admitted while the rest are held. ``Expect:
    100-continue`` sends a request down uvicorn's ordinary route on purpose: the same budget holds."""
    extra = b"Expect: 100-continue\r\n" if route == "ordinary route" else b""
    chunk = b"x" * (MAX_REVIEW_BYTES - 1)
    held: list[ssl.SSLSocket] = []
    refused = 0
    try:
        for _ in range(70):
            tls = _raw_tls(webhook)
            tls.sendall(b"POST /mutate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n%s"
                        b"Content-Length: %d\r\n\r\n" % (extra, MAX_REVIEW_BYTES))
            try:
                tls.sendall(chunk)
            except (ssl.SSLError, OSError):
                refused += 1  # closed on us mid-send: over the budget
            held.append(tls)
        for tls in held:  # whoever was answered got 503
            tls.settimeout(0.2)
            try:
                answer = tls.recv(256)
                if b"HTTP/1.1 100" in answer and b"HTTP/1.1 503" not in answer:
                    answer += tls.recv(256)
                if b"HTTP/1.1 503" in answer:
                    refused += 1
            except (ssl.SSLError, OSError, TimeoutError):
                pass
        assert refused >= 40, refused  # 64 MiB of budget holds at most 21 such bodies
        assert rss(webhook) < SHIPPED_LIMIT, rss(webhook)
        status, answer = request(webhook, "POST", "/mutate", review_body(session_pod(policy={"mode": "allowlist"})))
        assert status == 200 and json.loads(answer)["response"]["allowed"] is True
    finally:
        for tls in held:
            tls.close()
    # The bytes come back with the connections: full-size reviews are served again.
    status, _ = request(webhook, "POST", "/mutate", review_body(session_pod(policy={"mode": "allowlist"})))
    assert status == 200


def test_distinct_large_reviews_do_not_fill_the_memo(webhook: WebhookProcess) -> None:
    """60 distinct reviews of about 1.1 MiB of gate and init container names once left 73 MiB in the
    answer memo: keys that large are no longer memoised, and the process stays small."""
    before = rss(webhook)
    for index in range(60):
        pod = session_pod(policy={"mode": "allowlist"})
        pod["spec"]["schedulingGates"] = [{"name": f"example.com/g{index}-{n}-" + "a" * 40} for n in range(12_000)]
        status, _ = request(webhook, "POST", "/mutate", review_body(pod, uid=f"u{index}"))
        assert status == 200
    assert rss(webhook) - before < 40 * 1024 * 1024, (before, rss(webhook))
    status, answer = request(webhook, "POST", "/mutate", review_body(session_pod(policy={"mode": "allowlist"})))
    assert status == 200 and json.loads(answer)["response"]["allowed"] is True


def test_a_key_past_the_bound_is_not_memoised_and_a_small_one_is() -> None:
    def key_for(names: int) -> object:
        pod = session_pod(policy={"mode": "allowlist"})
        pod["spec"]["schedulingGates"] = [{"name": f"g{n}"} for n in range(names)]
        return mutation_key(decode_request(review_body(pod)))

    assert key_for(3) is not None
    assert key_for(2_000) is None  # 2,000 names of 3-5 characters: over MAX_MEMO_KEY (4,096)
    assert memo.MAX_MEMO_KEY == 4096
