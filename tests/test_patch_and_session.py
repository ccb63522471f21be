"""JSONPatch building and session facts: pure functions, checked against hand-written expectations."""

from __future__ import annotations

import pytest

from tests.support import session_pod
from sortie_egress.admission.patch import apply_patch, enforce_patch, no_policy_patch, pointer
from sortie_egress.admission.session import session_id_problem, session_pod as read_session

CANONICAL = '{"mode": "allowlist", "rules": []}'


@pytest.mark.parametrize(
    ("parts", "expected"),
    [(("metadata", "labels", "sortie.io/egress-mode"), "/metadata/labels/sortie.io~1egress-mode"),
     (("a~b", "c/d~/e"), "/a~0b/c~1d~0~1e"),
     (("spec", "schedulingGates", 3), "/spec/schedulingGates/3"),
     (("x", "-"), "/x/-")],
)
def test_pointer_escapes_tilde_before_slash(parts: tuple, expected: str) -> None:
    assert pointer(*parts) == expected


def test_enforce_patch_on_a_fresh_pod() -> None:
    pod = session_pod(session_id="s1", policy='{"mode":"allowlist"}')
    assert enforce_patch(pod, CANONICAL, "allowlist") == [
        {"op": "replace", "path": "/metadata/annotations/sortie.io~1egress-policy", "value": CANONICAL},
        {"op": "add", "path": "/metadata/labels/sortie.io~1egress-mode", "value": "allowlist"},
        {"op": "add", "path": "/spec/schedulingGates", "value": [{"name": "sortie.io/egress-policy"}]},
    ]


def test_gate_goes_after_existing_gates() -> None:
    pod = session_pod(policy=CANONICAL, gates=["a.example/one", "b.example/two"])
    ops = enforce_patch(pod, CANONICAL, "allowlist")
    assert ops[-1] == {"op": "add", "path": "/spec/schedulingGates/-", "value": {"name": "sortie.io/egress-policy"}}
    patched = apply_patch(pod, ops)
    assert [g["name"] for g in patched["spec"]["schedulingGates"]] == ["a.example/one", "b.example/two", "sortie.io/egress-policy"]


def test_null_gates_are_replaced_by_a_list() -> None:
    pod = session_pod(policy=CANONICAL)
    pod["spec"]["schedulingGates"] = None
    assert apply_patch(pod, enforce_patch(pod, CANONICAL, "denylist"))["spec"]["schedulingGates"] == [{"name": "sortie.io/egress-policy"}]


def test_enforce_patch_is_idempotent() -> None:
    pod = session_pod(policy='{"rules": [], "mode": "allowlist"}', gates=["x/y"], extra_labels={"sortie.io/egress-mode": "denylist"})
    once = apply_patch(pod, enforce_patch(pod, CANONICAL, "allowlist"))
    assert once["metadata"]["labels"]["sortie.io/egress-mode"] == "allowlist"
    assert enforce_patch(once, CANONICAL, "allowlist") == []


def test_no_policy_patch_removes_lying_label_and_our_gate_only() -> None:
    pod = session_pod(gates=["a/b", "sortie.io/egress-policy", "c/d", "sortie.io/egress-policy"],
                      extra_labels={"sortie.io/egress-mode": "allowlist"})
    patched = apply_patch(pod, no_policy_patch(pod))
    assert "sortie.io/egress-mode" not in patched["metadata"]["labels"]
    assert [g["name"] for g in patched["spec"]["schedulingGates"]] == ["a/b", "c/d"]
    assert no_policy_patch(patched) == []


def test_apply_patch_does_not_touch_its_input() -> None:
    pod = session_pod(policy=CANONICAL)
    before = repr(pod)
    apply_patch(pod, enforce_patch(pod, CANONICAL, "allowlist"))
    assert repr(pod) == before


@pytest.mark.parametrize("session_id", ["abc", "7f3a2b1c-aaaa-bbbb-cccc-0123456789ab", "a.b.c", "0", "a" * 239])
def test_valid_session_ids(session_id: str) -> None:
    assert session_id_problem(session_id) is None


@pytest.mark.parametrize("session_id", ["", "ABC", "a_b", "a..b", "a-", "a.", "-", ".a", "a b", "é", "a" * 240])
def test_session_ids_that_cannot_name_a_policy(session_id: str) -> None:
    problem = session_id_problem(session_id)
    assert problem is not None and problem.startswith("sortie.io/session-id: ")


def test_session_facts_from_a_manifest() -> None:
    pod = session_pod(name="p", session_id="s9", policy="{}", namespace="ns1", app_id="gimp")
    facts = read_session(pod)
    assert (facts.namespace, facts.name, facts.session_id, facts.app_id, facts.annotation, facts.policy_name) == (
        "ns1", "p", "s9", "gimp", "{}", "sortie-egress-s9")
    assert read_session(pod, namespace="from-request").namespace == "from-request"
    assert read_session({"metadata": {"labels": {"other": "x"}}}) is None
    assert read_session({"metadata": {"labels": {"sortie.io/session-id": 5}}}) is None
    assert read_session({"metadata": None}) is None
