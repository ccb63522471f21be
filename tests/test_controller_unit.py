"""The controller's pure parts: desired state, drift checks, gate patches, the work queue, the stores."""

from __future__ import annotations

import copy
import random
import threading
import time

import pytest

from tests.support import session_pod
from webhook.controller.desired import desired_for, gate_removal_patch, is_active, policy_matches
from webhook.controller.informer import Store, project_pod
from webhook.controller.main import pod_session_key
from webhook.controller.queue import WorkQueue, backoff_delay
from webhook.patch import apply_patch
from webhook.render import DnsDestination

DNS = DnsDestination()
POLICY = {"mode": "allowlist", "rules": [{"cidr": "10.0.0.0/8", "port": 443}]}


def pod_with(policy: object, **kwargs: object) -> dict:
    pod = session_pod(session_id="s1", policy=policy, namespace="ns", **kwargs)
    pod["metadata"]["uid"] = "uid-1"
    return pod


def test_desired_policy_for_a_valid_pod() -> None:
    desired = desired_for(pod_with(POLICY), DNS)
    assert desired.invalid_reason is None
    assert desired.policy["metadata"]["name"] == "sortie-egress-s1"
    assert len(desired.policy["spec"]["egress"]) == 2


def test_invalid_pod_fails_closed_with_a_reason() -> None:
    desired = desired_for(pod_with('{"mode": "allowlist", "rules": [{"cidr": "nope"}]}'), DNS)
    assert desired.policy["spec"]["egress"] == desired_for(pod_with({"mode": "allowlist"}), DNS).policy["spec"]["egress"]
    assert desired.invalid_reason.startswith("invalid egress policy, enforcing DNS only: rules[0].cidr")


def test_no_policy_means_no_networkpolicy() -> None:
    assert desired_for(pod_with(None), DNS).policy is None
    assert desired_for(pod_with({"mode": ""}), DNS).policy is None


def test_unnameable_session_gets_nothing_and_a_reason() -> None:
    pod = session_pod(session_id="Bad_Id", policy=POLICY)
    desired = desired_for(pod, DNS)
    assert desired.policy is None and "cannot name a NetworkPolicy" in desired.invalid_reason


@pytest.mark.parametrize("change", [
    lambda p: p["spec"]["egress"].append({}),
    lambda p: p["spec"].__setitem__("policyTypes", ["Egress", "Ingress"]),
    lambda p: p["metadata"]["labels"].pop("sortie.io/session-id"),
    lambda p: p["metadata"]["labels"].__setitem__("app.kubernetes.io/managed-by", "someone"),
    lambda p: p["metadata"]["ownerReferences"][0].__setitem__("uid", "other"),
    lambda p: p["metadata"].pop("ownerReferences"),
])
def test_drift_is_detected(change: object) -> None:
    desired = desired_for(pod_with(POLICY), DNS).policy
    existing = copy.deepcopy(desired)
    assert policy_matches(existing, desired)
    change(existing)  # type: ignore[operator]
    assert not policy_matches(existing, desired)


def test_extra_labels_and_server_fields_are_not_drift() -> None:
    desired = desired_for(pod_with(POLICY), DNS).policy
    existing = copy.deepcopy(desired)
    existing["metadata"]["labels"]["team"] = "blue"
    existing["metadata"]["resourceVersion"] = "12"
    assert policy_matches(existing, desired)


def test_gate_removal_removes_only_ours() -> None:
    pod = pod_with(POLICY, gates=["a/b", "sortie.io/egress-policy", "c/d"])
    patch = gate_removal_patch(pod)
    assert patch[0] == {"op": "test", "path": "/spec/schedulingGates/1/name", "value": "sortie.io/egress-policy"}
    assert [g["name"] for g in apply_patch(pod, patch)["spec"]["schedulingGates"]] == ["a/b", "c/d"]
    assert gate_removal_patch(pod_with(POLICY, gates=["a/b"])) is None
    assert gate_removal_patch(pod_with(POLICY)) is None


def test_finished_and_deleting_pods_are_inactive() -> None:
    pod = pod_with(POLICY)
    assert is_active(pod)
    assert not is_active({**pod, "status": {"phase": "Succeeded"}})
    assert not is_active({**pod, "metadata": {**pod["metadata"], "deletionTimestamp": "2026-01-01T00:00:00Z"}})


def test_store_index_follows_updates_and_deletes() -> None:
    store = Store(index=pod_session_key)
    a = project_pod(session_pod(name="a", session_id="s", namespace="ns"))
    store.put(a)
    assert [p["metadata"]["name"] for p in store.by_index(("ns", "s"))] == ["a"]
    moved = copy.deepcopy(a)
    moved["metadata"]["labels"]["sortie.io/session-id"] = "t"
    store.put(moved)
    assert store.by_index(("ns", "s")) == [] and len(store.by_index(("ns", "t"))) == 1
    gone = store.replace([], "other-namespace")
    assert gone == [] and len(store) == 1
    assert [p["metadata"]["name"] for p in store.replace([], "ns")] == ["a"]
    assert store.by_index(("ns", "t")) == [] and len(store) == 0


def test_queue_deduplicates_and_reprocesses_a_key_added_while_working() -> None:
    queue: WorkQueue[str] = WorkQueue()
    for _ in range(3):
        queue.add("k")
    assert queue.depth() == 1
    assert queue.get(timeout=1) == "k"
    queue.add("k")  # while processing
    assert queue.get(timeout=0.05) is None  # not handed to a second worker
    queue.done("k")
    assert queue.get(timeout=1) == "k"
    queue.done("k")
    assert queue.get(timeout=0.05) is None


def test_backoff_grows_exponentially_with_jitter_and_a_cap() -> None:
    rand = random.Random(1)
    delays = [backoff_delay(n, 0.05, 10.0, rand) for n in range(1, 12)]
    for n, delay in enumerate(delays, start=1):
        ceiling = min(10.0, 0.05 * 2 ** (n - 1))
        assert ceiling / 2 <= delay <= ceiling
    assert len({round(d, 6) for d in delays}) == len(delays)


def test_retry_delays_the_key_and_forget_resets() -> None:
    queue: WorkQueue[str] = WorkQueue(base_delay=0.2, max_delay=1.0, seed=3)
    queue.add("k")
    queue.get()
    delay = queue.retry("k")
    queue.done("k")
    started = time.monotonic()
    assert queue.get(timeout=2) == "k"
    assert time.monotonic() - started >= delay * 0.9
    assert queue.failures("k") == 1
    queue.forget("k")
    assert queue.failures("k") == 0


def test_queue_hands_each_key_to_one_worker_at_a_time() -> None:
    queue: WorkQueue[int] = WorkQueue()
    active: set[int] = set()
    overlaps: list[int] = []
    lock = threading.Lock()

    def worker() -> None:
        while (key := queue.get(timeout=0.3)) is not None:
            with lock:
                if key in active:
                    overlaps.append(key)
                active.add(key)
            time.sleep(0.001)
            with lock:
                active.discard(key)
            queue.done(key)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for i in range(400):
        queue.add(i % 7)
    for thread in threads:
        thread.join()
    assert overlaps == []


def test_cached_projection_of_a_policy_is_judged_like_the_policy() -> None:
    from webhook.controller.informer import project_policy

    desired = desired_for(pod_with(POLICY), DNS).policy
    assert policy_matches(project_policy(copy.deepcopy(desired)), desired)
    drifted = copy.deepcopy(desired)
    drifted["spec"]["egress"][1]["ports"][0]["port"] = 444
    assert not policy_matches(project_policy(drifted), desired)
    assert "spec" not in project_policy(desired)
