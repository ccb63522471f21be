"""The controller's pure parts: session plans, drift checks, pod patches, the work queue, the stores.

Expected NetworkPolicies are written out here by hand, not produced by the renderer under test.
"""

from __future__ import annotations

import copy
import hashlib
import json
import random
import threading
import time
import types
from typing import Any

import pytest

from tests.support import MODE_EXISTS, session_pod
from sortie_egress.controller.plan import (
    ADOPTED,
    INVALID_POLICY,
    POLICY_CHANGED,
    POLICY_MISMATCH,
    gate_removal_patch,
    is_active,
    plan_session,
    pod_patch,
    policy_matches,
)
from sortie_egress.kube.projections import pod_session_key, project_policy, project_pod
from sortie_egress.controller.queue import WorkQueue, backoff_delay
from sortie_egress.kube.informer import Store
from sortie_egress.admission.patch import apply_patch
from sortie_egress.render.session import DnsDestination

DNS = DnsDestination()
POLICY = {"mode": "allowlist", "rules": [{"cidr": "10.0.0.0/8", "port": 443}]}
CANONICAL = '{"mode": "allowlist", "rules": [{"cidr": "10.0.0.0/8", "port": 443}]}'
DNS_ONLY_CANONICAL = '{"mode": "allowlist", "rules": []}'
DNS_RULE = {"ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
            "to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
                    "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}]}
RULE_443 = {"to": [{"ipBlock": {"cidr": "10.0.0.0/8"}}],
            "ports": [{"protocol": "TCP", "port": 443}, {"protocol": "UDP", "port": 443}]}


def sha(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def pod_with(policy: object, name: str = "p1", uid: str = "uid-1", created: str = "2026-11-29T10:00:00Z",
             gated: bool = True, mode: str | None = "allowlist", gates: list[str] | None = None, **kwargs: Any) -> dict:
    extra = {"sortie.io/egress-mode": mode} if mode else {}
    gates = (gates or []) + (["sortie.io/egress-policy"] if gated else [])
    pod = session_pod(name=name, session_id="s1", policy=policy, namespace="ns", extra_labels=extra,
                      gates=gates or None, **kwargs)
    pod["metadata"].update(uid=uid, creationTimestamp=created)
    return pod


def owner(name: str, uid: str, controller: bool) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "name": name, "uid": uid, "controller": controller,
            "blockOwnerDeletion": True}


def expected_policy(egress: list[dict], digest: str, owners: list[dict]) -> dict:
    return {
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "sortie-egress-s1", "namespace": "ns",
                     "labels": {"sortie.io/session-id": "s1", "sortie.io/app-id": "firefox",
                                "sortie.io/egress-policy": "true", "app.kubernetes.io/managed-by": "sortie-egress"},
                     "annotations": {"sortie.io/policy-digest": digest},
                     "ownerReferences": owners},
        "spec": {"podSelector": {"matchLabels": {"sortie.io/session-id": "s1"}, "matchExpressions": MODE_EXISTS}, "policyTypes": ["Egress"],
                 "egress": egress},
    }


def names(pods: list[dict]) -> list[str]:
    return [pod["metadata"]["name"] for pod in pods]


def reasons(plan: Any) -> list[tuple[str, str]]:
    return [(note.pod["metadata"]["name"], note.reason) for note in plan.notes]


def test_one_admitted_pod_gets_its_policy_then_its_gate_lifted() -> None:
    pod = pod_with(POLICY)
    plan = plan_session([pod], None, DNS)
    assert plan.policy == expected_policy([DNS_RULE, RULE_443], sha(CANONICAL), [owner("p1", "uid-1", True)])
    assert names(plan.release) == ["p1"] and plan.labels == [] and plan.notes == []
    assert not plan.adopt and not plan.delete and not plan.pin_violated


def test_an_invalid_annotation_fails_closed_labels_and_tells() -> None:
    pod = pod_with('{"mode": "allowlist", "rules": [{"cidr": "nope"}]}', mode=None)
    plan = plan_session([pod], None, DNS)
    assert plan.policy == expected_policy([DNS_RULE], sha(DNS_ONLY_CANONICAL), [owner("p1", "uid-1", True)])
    assert names(plan.release) == ["p1"]
    assert [(p["metadata"]["name"], mode) for p, mode in plan.labels] == [("p1", "allowlist")]
    assert reasons(plan) == [("p1", INVALID_POLICY)]
    assert plan.notes[0].message.startswith('invalid egress policy, enforcing DNS only: rules[0].cidr: "nope"')


def test_a_backfilled_pod_without_the_mode_label_gets_the_canonical_mode() -> None:
    pod = pod_with({"rules": [{"cidr": "192.0.2.0/24"}], "mode": "denylist"}, mode=None, gated=False)
    plan = plan_session([pod], None, DNS)
    assert [(p["metadata"]["name"], mode) for p, mode in plan.labels] == [("p1", "denylist")]
    assert plan.release == []


def test_no_policy_means_no_networkpolicy_and_a_creator_set_gate_is_lifted() -> None:
    plan = plan_session([pod_with(None, mode=None)], None, DNS)
    assert plan.policy is None and names(plan.release) == ["p1"] and plan.labels == []
    assert plan_session([pod_with({"mode": ""}, mode=None, gated=False)], None, DNS).release == []


def test_two_pods_of_one_session_share_one_policy_owned_by_both() -> None:
    young = pod_with(POLICY, name="young", uid="uid-b", created="2026-11-29T10:00:05Z")
    old = pod_with(POLICY, name="old", uid="uid-z", created="2026-11-29T10:00:00Z")
    plan = plan_session([young, old], None, DNS)
    assert plan.policy["metadata"]["ownerReferences"] == [owner("old", "uid-z", True), owner("young", "uid-b", False)]
    assert sorted(names(plan.release)) == ["old", "young"]


def test_ties_in_age_go_to_the_lower_uid() -> None:
    a = pod_with(POLICY, name="a", uid="uid-2")
    b = pod_with(POLICY, name="b", uid="uid-1")
    plan = plan_session([a, b], None, DNS)
    assert plan.policy["metadata"]["ownerReferences"][0] == owner("b", "uid-1", True)


def test_a_pod_with_another_policy_stays_gated_and_is_told() -> None:
    old = pod_with(POLICY, name="old", uid="uid-1")
    other = pod_with({"mode": "allowlist", "rules": [{"cidr": "0.0.0.0/0"}]}, name="other", uid="uid-2",
                     created="2026-11-29T10:00:09Z")
    plan = plan_session([old, other], None, DNS)
    assert plan.policy == expected_policy([DNS_RULE, RULE_443], sha(CANONICAL), [owner("old", "uid-1", True)])
    assert names(plan.release) == ["old"]
    assert reasons(plan) == [("other", POLICY_MISMATCH)]


def released(pod: dict) -> dict:
    pod = copy.deepcopy(pod)
    pod["spec"].pop("schedulingGates", None)
    return pod


def test_a_released_pod_whose_policy_changed_turns_the_session_dns_only() -> None:
    existing = expected_policy([DNS_RULE, RULE_443], sha(CANONICAL), [owner("p1", "uid-1", True)])
    tampered = released(pod_with({"mode": "allowlist", "rules": [{"cidr": "0.0.0.0/0"}]}))
    plan = plan_session([tampered], existing, DNS)
    assert plan.pin_violated
    # DNS only, and still pinned to what was admitted: the new policy is never rendered.
    assert plan.policy == expected_policy([DNS_RULE], sha(CANONICAL), [owner("p1", "uid-1", True)])
    assert reasons(plan) == [("p1", POLICY_CHANGED)] and plan.release == []


def test_a_removed_annotation_is_a_changed_policy_too() -> None:
    existing = expected_policy([DNS_RULE, RULE_443], sha(CANONICAL), [owner("p1", "uid-1", True)])
    plan = plan_session([released(pod_with(None))], existing, DNS)
    assert plan.pin_violated and plan.policy["spec"]["egress"] == [DNS_RULE] and not plan.delete


def test_a_pod_without_a_policy_joining_a_session_never_changes_it() -> None:
    """CONTRACT §7: a policy-less pod with a running session's id (not one of the pin's owners) is
    told and ignored: the session keeps its policy and its owners, nothing turns DNS only."""
    from sortie_egress.controller.plan import JOINED_WITHOUT_POLICY

    existing = expected_policy([DNS_RULE, RULE_443], sha(CANONICAL), [owner("p1", "uid-1", True)])
    victim = released(pod_with(POLICY))
    intruder = released(pod_with(None, name="intruder", uid="uid-0", created="2026-11-29T09:00:00Z", mode=None))
    plan = plan_session([victim, intruder], existing, DNS)
    assert not plan.pin_violated and not plan.delete
    assert plan.policy == existing
    assert reasons(plan) == [("intruder", JOINED_WITHOUT_POLICY)]
    # Older than a new session's first pod, it does not decide that session's policy either.
    newcomer = pod_with(POLICY)
    plan = plan_session([newcomer, intruder], None, DNS)
    assert plan.policy == expected_policy([DNS_RULE, RULE_443], sha(CANONICAL), [owner("p1", "uid-1", True)])
    assert names(plan.release) == ["p1"]


def test_a_pin_left_by_pods_that_are_gone_is_no_pin() -> None:
    stale = expected_policy([DNS_RULE], sha(DNS_ONLY_CANONICAL), [owner("gone", "uid-gone", True)])
    plan = plan_session([pod_with(POLICY)], stale, DNS)
    assert not plan.pin_violated
    assert plan.policy == expected_policy([DNS_RULE, RULE_443], sha(CANONICAL), [owner("p1", "uid-1", True)])


def test_a_policy_with_our_name_that_we_do_not_manage_is_adopted() -> None:
    squatter = {"metadata": {"name": "sortie-egress-s1", "namespace": "ns", "uid": "np-1",
                             "labels": {"sortie.io/egress-policy": "true"}},
                "spec": {"podSelector": {}, "policyTypes": ["Egress"], "egress": [{}]}}
    plan = plan_session([pod_with(POLICY)], squatter, DNS)
    assert plan.adopt and plan.policy["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "sortie-egress"
    assert reasons(plan) == [("p1", ADOPTED)]
    assert plan.notes[0].type == "Normal"
    assert "NetworkPolicy sortie-egress-s1 (uid np-1, sortie.io/egress-policy=true)" in plan.notes[0].message
    # ...but only to enforce a policy: a session without one leaves it alone.
    untouched = plan_session([pod_with(None, mode=None, gated=False)], squatter, DNS)
    assert not untouched.adopt and not untouched.delete and untouched.policy is None


def test_orphans_are_deleted_only_when_ours() -> None:
    ours = expected_policy([DNS_RULE], sha(DNS_ONLY_CANONICAL), [owner("gone", "uid-gone", True)])
    assert plan_session([], ours, DNS).delete
    theirs = copy.deepcopy(ours)
    del theirs["metadata"]["labels"]["app.kubernetes.io/managed-by"]
    assert not plan_session([], theirs, DNS).delete


def test_a_session_id_that_cannot_name_a_policy_gets_nothing_and_a_reason() -> None:
    pod = session_pod(session_id="Bad_Id", policy=POLICY)
    plan = plan_session([pod], None, DNS)
    assert plan.policy is None and plan.release == [] and "cannot name a NetworkPolicy" in plan.notes[0].message


def test_pods_on_their_way_out_are_left_to_the_garbage_collector() -> None:
    leaving = pod_with(POLICY)
    leaving["metadata"]["deletionTimestamp"] = "2026-11-29T11:00:00Z"
    plan = plan_session([leaving], None, DNS)
    assert plan.policy is None and not plan.delete and plan.release == []


def test_one_write_per_pod_for_label_and_gate() -> None:
    pod = pod_with(POLICY, mode=None, gates=["other/gate"])
    ops = pod_patch(pod, "allowlist", release=True)
    assert ops == [{"op": "add", "path": "/metadata/labels/sortie.io~1egress-mode", "value": "allowlist"},
                   {"op": "test", "path": "/spec/schedulingGates/1/name", "value": "sortie.io/egress-policy"},
                   {"op": "remove", "path": "/spec/schedulingGates/1"}]
    after = apply_patch(pod, ops)
    assert after["metadata"]["labels"]["sortie.io/egress-mode"] == "allowlist"
    assert after["spec"]["schedulingGates"] == [{"name": "other/gate"}]
    assert pod_patch(pod, None, release=False) == []


@pytest.mark.parametrize("change", [
    lambda p: p["spec"]["egress"].append({}),
    lambda p: p["spec"].__setitem__("policyTypes", ["Egress", "Ingress"]),
    lambda p: p["metadata"]["labels"].pop("sortie.io/session-id"),
    lambda p: p["metadata"]["labels"].__setitem__("app.kubernetes.io/managed-by", "someone"),
    lambda p: p["metadata"]["ownerReferences"][0].__setitem__("uid", "other"),
    lambda p: p["metadata"]["ownerReferences"].append(owner("extra", "uid-x", False)),
    lambda p: p["metadata"]["ownerReferences"][0].__setitem__("blockOwnerDeletion", False),
    lambda p: p["metadata"].pop("ownerReferences"),
    lambda p: p["metadata"]["annotations"].__setitem__("sortie.io/policy-digest", "sha256:0"),
    lambda p: p["metadata"].pop("annotations"),
])
def test_drift_is_detected(change: object) -> None:
    desired = expected_policy([DNS_RULE, RULE_443], sha(CANONICAL), [owner("p1", "uid-1", True)])
    existing = copy.deepcopy(desired)
    assert policy_matches(existing, desired)
    change(existing)  # type: ignore[operator]
    assert not policy_matches(existing, desired)


def test_extra_labels_server_fields_and_owner_order_are_not_drift() -> None:
    desired = expected_policy([DNS_RULE, RULE_443], sha(CANONICAL),
                              [owner("a", "uid-1", True), owner("b", "uid-2", False)])
    existing = copy.deepcopy(desired)
    existing["metadata"]["labels"]["team"] = "blue"
    existing["metadata"]["resourceVersion"] = "12"
    existing["metadata"]["ownerReferences"].reverse()
    assert policy_matches(existing, desired)


def test_gate_removal_removes_only_ours() -> None:
    pod = pod_with(POLICY, gates=["a/b", "sortie.io/egress-policy", "c/d"], gated=False)
    patch = gate_removal_patch(pod)
    assert patch[0] == {"op": "test", "path": "/spec/schedulingGates/1/name", "value": "sortie.io/egress-policy"}
    assert [g["name"] for g in apply_patch(pod, patch)["spec"]["schedulingGates"]] == ["a/b", "c/d"]
    assert gate_removal_patch(pod_with(POLICY, gates=["a/b"], gated=False)) is None
    assert gate_removal_patch(pod_with(POLICY, gated=False)) is None


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
    gone, moved = store.replace([], "other-namespace")
    assert gone == [] and moved == [] and len(store) == 1
    assert [p["metadata"]["name"] for p in store.replace([], "ns")[0]] == ["a"]
    assert store.by_index(("ns", "t")) == [] and len(store) == 0


def test_a_relist_reports_only_what_changed_while_nobody_watched() -> None:
    """After a broken watch the fresh list must not reconcile every session again (the relist
    storm at 50,000 sessions): only objects that are new, changed (resourceVersion) or gone."""
    store = Store()
    same = {"metadata": {"namespace": "ns", "name": "same", "resourceVersion": "10"}}
    bumped = {"metadata": {"namespace": "ns", "name": "bumped", "resourceVersion": "11"}, "status": {"phase": "Pending"}}
    changed = {"metadata": {"namespace": "ns", "name": "changed", "resourceVersion": "12"}, "status": {"phase": "Pending"}}
    gone = {"metadata": {"namespace": "ns", "name": "gone", "resourceVersion": "13"}}
    for obj in (same, bumped, changed, gone):
        store.put(obj)
    fresh = [dict(same),
             {**bumped, "metadata": {**bumped["metadata"], "resourceVersion": "20"}},  # written, nothing we keep moved
             {"metadata": {**changed["metadata"], "resourceVersion": "21"}, "status": {"phase": "Running"}},
             {"metadata": {"namespace": "ns", "name": "new", "resourceVersion": "22"}}]
    vanished, moved = store.replace(fresh, None)
    assert [o["metadata"]["name"] for o in vanished] == ["gone"]
    assert sorted(o["metadata"]["name"] for o in moved) == ["changed", "new"]
    assert store.get(("ns", "bumped"))["metadata"]["resourceVersion"] == "20"  # kept, for the next write's precondition


def test_a_watch_passes_on_only_events_that_change_what_is_kept() -> None:
    """A binding, a status write, our own write echoed back: the resourceVersion moves, nothing the
    controller keeps does. Passing those on reconciled every new session four times in a burst."""
    import threading

    from sortie_egress.kube.informer import Informer
    from sortie_egress.kube.projections import project_pod

    pod = session_pod(name="a", session_id="s", namespace="ns")
    pod["metadata"].update(uid="u1", resourceVersion="1")
    bound = copy.deepcopy(pod)
    bound["metadata"]["resourceVersion"] = "2"
    bound["spec"]["nodeName"] = "node-1"  # not projected
    released = copy.deepcopy(bound)
    released["metadata"]["resourceVersion"] = "3"
    released["spec"]["schedulingGates"] = []
    deleted = copy.deepcopy(released)
    deleted["metadata"]["resourceVersion"] = "4"
    events = [("ADDED", pod), ("MODIFIED", bound), ("MODIFIED", released), ("MODIFIED", released),
              ("BOOKMARK", {"metadata": {"resourceVersion": "3"}}), ("DELETED", deleted)]

    class Stream:
        def stream(self, *_: Any, **__: Any) -> Any:
            yield "".join(json.dumps({"type": kind, "object": obj}) + "\n" for kind, obj in events).encode()

        def release_conn(self) -> None:
            pass

    store, told = Store(index=pod_session_key), []
    informer = Informer("pods", lambda **_: Stream(), project_pod, store, lambda obj: told.append(obj["metadata"]["resourceVersion"]),
                        threading.Event())
    assert informer._watch("0") == "4"
    assert told == ["1", "3", "4"]  # added, released, deleted; not the binding, not the repeat
    assert len(store) == 0


def test_store_put_says_whether_more_than_the_resource_version_moved() -> None:
    store = Store()
    first = {"metadata": {"namespace": "ns", "name": "a", "resourceVersion": "1", "labels": {"x": "1"}}}
    assert store.put(first) is True
    assert store.put({"metadata": {**first["metadata"], "resourceVersion": "2"}}) is False
    assert store.get(("ns", "a"))["metadata"]["resourceVersion"] == "2"
    assert store.put({"metadata": {**first["metadata"], "resourceVersion": "3", "labels": {"x": "2"}}}) is True


def test_a_list_is_read_in_pages_and_a_stale_continue_token_starts_it_again() -> None:
    from kubernetes.client.exceptions import ApiException

    from sortie_egress.kube.informer import Expired, paginated

    items = [{"metadata": {"name": f"p{i}"}} for i in range(5)]
    calls: list[dict[str, Any]] = []

    class Reply:
        def __init__(self, document: dict[str, Any]) -> None:
            self.data = json.dumps(document).encode()

    def list_call(**kwargs: Any) -> Reply:
        calls.append(kwargs)
        start = int(kwargs.get("_continue") or 0)
        end = start + kwargs["limit"]
        more = {"continue": str(end)} if end < len(items) else {}
        return Reply({"metadata": {"resourceVersion": "99", **more}, "items": items[start:end]})

    objects, version = paginated(list_call, lambda obj: obj["metadata"]["name"], page_size=2, label_selector="x")
    assert (objects, version) == (["p0", "p1", "p2", "p3", "p4"], "99")
    assert [(c.get("_continue"), c["limit"], c["label_selector"]) for c in calls] == [
        (None, 2, "x"), ("2", 2, "x"), ("4", 2, "x")]

    def expiring(**kwargs: Any) -> Reply:
        if kwargs.get("_continue"):
            raise ApiException(status=410, reason="Expired")
        return Reply({"metadata": {"resourceVersion": "1", "continue": "2"}, "items": items[:2]})

    with pytest.raises(Expired, match="continue token expired"):
        paginated(expiring, page_size=2)


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
    desired = expected_policy([DNS_RULE, RULE_443], sha(CANONICAL), [owner("p1", "uid-1", True)])
    assert policy_matches(project_policy(copy.deepcopy(desired)), desired)
    drifted = copy.deepcopy(desired)
    drifted["spec"]["egress"][1]["ports"][0]["port"] = 444
    assert not policy_matches(project_policy(drifted), desired)
    assert "spec" not in project_policy(desired)  # ours: a digest is enough
    theirs = {"metadata": {"name": "allow-web", "namespace": "ns", "labels": {"team": "web"}},
              "spec": {"podSelector": {}, "egress": [{}]}}
    assert project_policy(theirs)["spec"] == theirs["spec"]  # someone else's: judged for effective egress


def test_pod_projection_keeps_every_label_and_only_our_annotation() -> None:
    pod = pod_with(POLICY)
    pod["metadata"]["labels"]["app.kubernetes.io/component"] = "session"
    pod["metadata"]["annotations"]["other.io/big"] = "x" * 1000
    projected = project_pod(pod)
    assert projected["metadata"]["labels"] == pod["metadata"]["labels"]
    assert list(projected["metadata"]["annotations"]) == ["sortie.io/egress-policy"]


def test_store_lists_by_namespace() -> None:
    store = Store()
    for namespace, name in (("a", "x"), ("a", "y"), ("b", "x")):
        store.put({"metadata": {"namespace": namespace, "name": name}})
    assert sorted(p["metadata"]["name"] for p in store.by_namespace("a")) == ["x", "y"]
    store.remove(("a", "x"))
    assert [p["metadata"]["name"] for p in store.by_namespace("a")] == ["y"]
    store.replace([], "a")
    assert store.by_namespace("a") == [] and len(store.by_namespace("b")) == 1


class _Discovery:
    """get_api_resources answering from a script: an exception to raise, or the resources' names."""

    def __init__(self, *script: Any) -> None:
        self.script, self.calls = list(script), 0

    def get_api_resources(self, group: str, version: str, _preload_content: bool = True) -> Any:
        self.calls += 1
        step = self.script.pop(0)
        if isinstance(step, BaseException):
            raise step
        return types.SimpleNamespace(data=json.dumps({"resources": [{"name": name} for name in step]}).encode())


def test_discovery_tries_again_through_a_flaky_api_server_and_answers_404_with_no() -> None:
    from kubernetes.client.exceptions import ApiException

    from sortie_egress.kube.policy_objects import _serves

    slept: list[float] = []
    flaky = _Discovery(ApiException(status=503), ConnectionResetError(), ApiException(status=429), ["ciliumnetworkpolicies"])
    assert _serves(flaky, "cilium.io", "v2", "ciliumnetworkpolicies", sleep=slept.append) is True
    assert (flaky.calls, slept) == (4, [0.25, 0.5, 1.0])
    assert _serves(_Discovery(ApiException(status=404)), "cilium.io", "v2", "x", sleep=slept.append) is False
    assert _serves(_Discovery(["other"]), "cilium.io", "v2", "x", sleep=slept.append) is False
    forbidden = _Discovery(ApiException(status=403))
    with pytest.raises(ApiException):
        _serves(forbidden, "cilium.io", "v2", "x", sleep=slept.append)
    assert forbidden.calls == 1
    down = _Discovery(*[ApiException(status=500)] * 8)
    with pytest.raises(ApiException):
        _serves(down, "cilium.io", "v2", "x", sleep=lambda _: None)
    assert down.calls == 8
