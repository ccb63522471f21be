"""The reconciler's writes against the in-memory object API (tests/fake_api.py): create and
release, repair, adopt, retire, conflicts, holds and Events, in milliseconds. What the API server
itself does is proven by the control-plane tests; here, what the reconciler does with it. The
expected NetworkPolicy is written out by hand (test_controller_unit's helpers)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tests.fake_api import FakeCore, FakeObjects
from tests.test_controller_unit import CANONICAL, DNS_RULE, POLICY, RULE_443, expected_policy, owner, pod_with, sha
from sortie_egress.controller.metrics import ControllerMetrics
from sortie_egress.kube.projections import pod_session_key, policy_ownership_key, project_policy, project_pod
from sortie_egress.controller.reconciler import Conflict, Reconciler
from sortie_egress.kube.informer import Store
from sortie_egress.render.session import DnsDestination

KEY = ("ns", "s1")
NAME = "sortie-egress-s1"
OURS = expected_policy([DNS_RULE, RULE_443], sha(CANONICAL), [owner("p1", "uid-1", True)])


class World:
    """The fake API, the controller's stores fed from it as its informers would be, a reconciler."""

    def __init__(self, *pods: dict[str, Any]) -> None:
        self.core, self.policies_api = FakeCore(), FakeObjects()
        self.pods, self.policies = Store(index=pod_session_key), Store(index=policy_ownership_key)
        for pod in pods:
            self.pods.put(project_pod(self.core.pods.put(pod)))
        self.metrics = ControllerMetrics()
        self.reconciler = Reconciler(self.core, self.policies_api.session_objects(), self.pods, self.policies,
                                     DnsDestination(), self.metrics)

    def someone_stores(self, policy: dict[str, Any]) -> dict[str, Any]:
        """A write by someone else, seen by the policy informer."""
        stored = self.policies_api.put(policy)
        self.policies.put(project_policy(stored))
        return stored

    def policy(self) -> dict[str, Any] | None:
        found = self.policies_api.get("ns", NAME)
        if found is not None:
            for key in ("uid", "resourceVersion"):
                found["metadata"].pop(key)
        return found

    def gated(self, name: str = "p1") -> bool:
        pod = self.core.pods.get("ns", name)
        assert pod is not None
        return any(gate["name"] == "sortie.io/egress-policy" for gate in pod["spec"].get("schedulingGates") or [])

    def reasons(self) -> list[str]:
        return [event["reason"] for event in self.core.events]


def test_a_new_session_gets_its_policy_then_its_gate_lifted_in_two_writes() -> None:
    world = World(pod_with(POLICY))
    assert world.reconciler.reconcile(KEY) == "created+released"
    assert world.policy() == OURS
    assert not world.gated()
    assert world.policies_api.writes == [("create", "ns", NAME)] and world.core.pods.writes == [("patch", "ns", "p1")]
    # Written through to the stores: the reconcile its own writes trigger writes nothing.
    assert world.reconciler.reconcile(KEY) == "noop"
    assert len(world.policies_api.writes) == 1 and len(world.core.pods.writes) == 1


def test_a_policy_edited_behind_our_back_is_repaired_and_keeps_labels_others_added() -> None:
    world = World(pod_with(POLICY))
    world.reconciler.reconcile(KEY)
    edited = copy.deepcopy(world.policies_api.get("ns", NAME))
    assert edited is not None
    edited["spec"]["egress"].append({"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}]})  # widened
    edited["metadata"]["labels"]["team"] = "blue"
    world.someone_stores(edited)
    assert world.reconciler.reconcile(KEY) == "repaired"
    assert world.policy() == {**OURS, "metadata": {**OURS["metadata"], "labels": {**OURS["metadata"]["labels"], "team": "blue"}}}


def test_a_squatter_with_our_name_is_adopted_whole() -> None:
    world = World(pod_with(POLICY))
    world.someone_stores({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                          "metadata": {"name": NAME, "namespace": "ns", "labels": {"team": "blue"}},
                          "spec": {"podSelector": {}, "policyTypes": ["Egress"], "egress": [{}]}})
    assert world.reconciler.reconcile(KEY) == "adopted+released"
    assert world.policy() == OURS  # an adopted policy is ours alone: the squatter's labels go
    assert world.reasons() == ["Adopted"]


def test_a_session_whose_pods_are_gone_has_its_policy_retired_then_deleted() -> None:
    world = World(pod_with(POLICY))
    world.reconciler.reconcile(KEY)
    world.pods.remove(("ns", "p1"))
    assert world.reconciler.reconcile(KEY) == "deleted"
    # First the managed-by label off (an update the controller may make, guarded by the uid it
    # read), then the delete with that uid as its precondition.
    assert world.policies_api.writes[1:] == [("patch", "ns", NAME), ("delete", "ns", NAME)]
    assert world.policy() is None and world.policies.get(("ns", NAME)) is None


def test_a_policy_replaced_by_another_object_meanwhile_is_not_deleted() -> None:
    world = World(pod_with(POLICY))
    world.reconciler.reconcile(KEY)
    world.pods.remove(("ns", "p1"))
    stale = world.policies.get(("ns", NAME))
    assert stale is not None
    world.policies_api.objects.pop(("ns", NAME))  # deleted and created again under the same name
    world.policies_api.put({**OURS, "metadata": {**OURS["metadata"], "uid": "uid-new"}})
    with pytest.raises(Conflict):
        world.reconciler.reconcile(KEY)
    assert world.policies_api.get("ns", NAME) is not None


def test_a_write_on_a_stale_version_is_a_conflict_and_nothing_is_released() -> None:
    world = World(pod_with(POLICY))
    stored = world.someone_stores({**copy.deepcopy(OURS), "spec": {"podSelector": {}, "policyTypes": ["Egress"]}})
    world.policies_api.put(stored)  # changed again: the store's version is now behind
    with pytest.raises(Conflict):
        world.reconciler.reconcile(KEY)
    assert world.gated() and world.core.pods.writes == []  # the gate stays until the policy is right


def test_a_pod_that_changed_meanwhile_is_a_conflict() -> None:
    world = World(pod_with(POLICY))
    pod = world.core.pods.get("ns", "p1")
    assert pod is not None
    pod["spec"]["schedulingGates"] = []  # someone else lifted it; our test-guarded removal fails
    world.core.pods.put(pod)
    with pytest.raises(Conflict):
        world.reconciler.reconcile(KEY)


def test_a_hold_keeps_the_gate_with_the_policy_written_and_tells_once() -> None:
    world = World(pod_with(POLICY))
    seen: list[str | None] = []

    def hold(_pod: dict[str, Any], mode: str | None) -> tuple[str, str] | None:
        seen.append(mode)
        return ("NodeGuardMissing", "the guard is missing")

    world.reconciler.hold_release = hold
    assert world.reconciler.reconcile(KEY) == "created+held"
    assert world.reconciler.reconcile(KEY) == "held"
    assert world.policy() == OURS and world.gated()
    assert seen == ["allowlist", "allowlist"] and world.reasons() == ["NodeGuardMissing"]  # one Event, not two


def test_the_hold_sees_the_mode_a_backfilled_pod_is_about_to_get() -> None:
    world = World(pod_with(POLICY, mode=None))
    seen: list[str | None] = []
    world.reconciler.hold_release = lambda _pod, mode: seen.append(mode) or None
    world.reconciler.reconcile(KEY)
    assert seen == ["allowlist"]
    pod = world.core.pods.get("ns", "p1")
    assert pod is not None and pod["metadata"]["labels"]["sortie.io/egress-mode"] == "allowlist"


def test_a_refused_event_never_undoes_or_delays_enforcement() -> None:
    world = World(pod_with(POLICY))
    world.core.refuse_events = True
    world.someone_stores({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                          "metadata": {"name": NAME, "namespace": "ns"},
                          "spec": {"podSelector": {}, "policyTypes": ["Egress"]}})
    assert world.reconciler.reconcile(KEY) == "adopted+released"
    assert world.policy() == OURS and not world.gated()
    assert world.metrics.events_failed._value.get() == 1


def test_a_rollouts_canary_only_update_waits_for_its_slot_and_a_starting_pod_never_waits() -> None:
    """Issue 24: a controller rollout moves the canary's addresses, and every session policy whose
    networks hold them must cut the new ones out. For a session with no pod starting that update
    takes a slot of the write budget (spread, and one write); a starting session's is at once."""
    import time

    from sortie_egress.controller.reconciler import Deferred, WriteBudget
    from sortie_egress.render.session import Canary

    labels = (("app.kubernetes.io/component", "controller"), ("app.kubernetes.io/name", "sortie-egress"))
    old, new = Canary("sortie-system", labels, 9445, ("10.1.0.5",)), Canary("sortie-system", labels, 9445, ("10.1.0.9",))
    world = World(pod_with(POLICY, gated=False))  # created long ago, released: running
    world.reconciler.canary = old
    world.reconciler.reconcile(KEY)
    assert world.policy()["spec"]["egress"][1]["to"] == [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.5/32"]}}]
    writes_before = sum(sample.value for sample in world.metrics.writes.collect()[0].samples if sample.name.endswith("_total"))
    budget = WriteBudget(1000.0, clock=lambda: 0.0)  # frozen: what it hands out depends on calls alone
    assert [budget.reserve() for _ in range(1000)] == [0.0] * 1000  # a second's worth at once, then debt
    world.reconciler.canary_budget, world.reconciler.previous_canaries, world.reconciler.canary = budget, [old], new
    # Just after the change: a rollout's next replica may move the set again, so it waits for it to settle.
    world.reconciler.canary_changed_at = time.monotonic()
    with pytest.raises(Deferred) as deferred:
        world.reconciler.reconcile(KEY)
    assert 59 < deferred.value.delay <= 60
    world.reconciler.canary_changed_at = time.monotonic() - 60
    with pytest.raises(Deferred) as deferred:
        world.reconciler.reconcile(KEY)
    assert 0 < deferred.value.delay <= 0.002
    while True:  # its slot is due within 2 ms: until then it is deferred again, never written early
        try:
            world.reconciler.reconcile(KEY)
            break
        except Deferred:
            time.sleep(0.0005)
    assert world.policy()["spec"]["egress"][1]["to"] == [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.9/32"]}}]
    writes_after = sum(sample.value for sample in world.metrics.writes.collect()[0].samples if sample.name.endswith("_total"))
    assert writes_after - writes_before == 1

    # A starting session (gated) is not deferred, even with the budget spent.
    starting = World(pod_with(POLICY))
    starting.reconciler.canary = old
    starting.reconciler.reconcile(KEY)
    starting.core.pods.put(pod_with(POLICY))  # still gated: say, released was refused
    spent = WriteBudget(1.0, clock=lambda: 0.0)
    spent.reserve()
    starting.reconciler.canary_budget, starting.reconciler.previous_canaries, starting.reconciler.canary = spent, [old], new
    starting.pods.put(project_pod(pod_with(POLICY)))
    assert "repaired" in starting.reconciler.reconcile(KEY)

    # Released, but younger than STARTING_SECONDS (120 s): its wait may still be looking for the
    # canary, at the new addresses: not deferred either.
    import datetime as dt

    from sortie_egress.controller.reconciler import STARTING_SECONDS

    def released(seconds_old: float) -> dict[str, Any]:
        pod = pod_with(POLICY, gated=False)
        pod["metadata"]["creationTimestamp"] = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=seconds_old)
                                                ).strftime("%Y-%m-%dT%H:%M:%SZ")
        return pod

    assert STARTING_SECONDS == 120
    for seconds_old, expected in ((60, "repaired"), (300, None)):
        young = World(released(seconds_old))
        young.reconciler.canary = old
        young.reconciler.reconcile(KEY)
        spent = WriteBudget(1.0, clock=lambda: 0.0)
        spent.reserve()
        young.reconciler.canary_budget, young.reconciler.previous_canaries, young.reconciler.canary = spent, [old], new
        young.reconciler.canary_changed_at = time.monotonic() - 60
        if expected:
            assert young.reconciler.reconcile(KEY) == expected  # at once, the budget spent or not
        else:
            with pytest.raises(Deferred):  # the same pod four minutes older waits for its slot
                young.reconciler.reconcile(KEY)


def test_the_write_budget_hands_out_distinct_slots_at_its_rate() -> None:
    from sortie_egress.controller.reconciler import WriteBudget

    now = [100.0]
    budget = WriteBudget(10.0, clock=lambda: now[0])
    slots = [budget.reserve() for _ in range(13)]
    assert slots[:10] == [0.0] * 10 and slots[10:] == pytest.approx([0.1, 0.2, 0.3])
    now[0] += 1.0  # the debt (3) is paid after 0.3 s, then 7 tokens accrue
    assert [budget.reserve() for _ in range(8)][-2:] == [0.0, pytest.approx(0.1)]


def test_the_pace_lets_one_write_through_at_a_time_with_no_burst() -> None:
    """Slots spread sessions out; the pace holds each write to the rate even where the workers fell
    behind and many slots are due at once (the 5,000-session rollout's 120 writes in one second)."""
    from sortie_egress.controller.reconciler import WriteBudget

    now = [0.0]
    pace = WriteBudget(20.0, clock=lambda: now[0], burst=1.0)
    assert [pace.take() for _ in range(3)] == [0.0, pytest.approx(0.05), pytest.approx(0.05)]  # nothing taken when refused
    now[0] += 0.05
    assert pace.take() == 0.0 and pace.take() == pytest.approx(0.05)
    now[0] += 10.0  # idle for long: still one at a time
    assert [pace.take() for _ in range(2)] == [0.0, pytest.approx(0.05)]
