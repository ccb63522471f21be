"""The memoised mutation (sortie_egress/admission/memo.py) against the direct decision it stands for.

The oracle is the direct path itself: ``encode_response(uid, mutate_pod(request))``.
For random session pods, namespaces, users, uids and dryRun flags, the memoised
answer must be byte for byte what the direct path encodes. A memo key that
leaves out something the decision reads would make some pair of pods share an
answer they should not: the mutant tests at the end show that this comparison
finds such a key.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Hashable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sortie_egress.admission import memo
from sortie_egress.admission.memo import MAX_MEMO_ANNOTATION, memoised_mutation, mutation_key
from sortie_egress.admission.mutate import mutate_pod
from sortie_egress.admission.response import encode_response
from sortie_egress.admission.review import ReviewRequest, admission_request, decode_request
from sortie_egress.backends import BACKENDS
from sortie_egress.constants import EGRESS_MODE_LABEL, EGRESS_POLICY_ANNOTATION, SCHEDULING_GATE, SESSION_ID_LABEL
from sortie_egress.enforcement_wait.injection import INIT_CONTAINER_NAME, NO_TOKEN_VOLUME, EnforcementWait

WAIT = EnforcementWait("registry.invalid/sortie-egress:1", "sortie-egress-canary.sortie-system.svc")

VALID_POLICIES = [
    {"mode": "allowlist", "rules": [{"cidr": "10.0.0.0/8", "port": 443, "protocol": "TCP"}]},
    {"mode": "denylist", "rules": [{"cidr": "0.0.0.0/0"}, {"cidr": "::/0"}]},
    {"mode": "allowlist", "rules": [{"cidr": "2001:db8::/32", "port": 8000, "end_port": 8100}]},
    {"mode": "allowlist"},
    {"mode": "", "rules": [{"cidr": "10.0.0.0/8"}]},
    {"mode": "allowlist", "rules": [{"fqdn": "API.example.com.", "port": 443}]},  # refused on networkpolicy only
    {"mode": "denylist", "rules": [{"cidr": "10.0.0.0/8", "port": 22}]},  # a warning on networkpolicy only
]
INVALID_POLICIES = ["{", '{"mode": "sometimes"}', '{"mode": "allowlist", "rules": [{"cidr": "10.0.0.1/8"}]}', "[]", ""]

annotations = st.one_of(
    st.sampled_from([json.dumps(policy) for policy in VALID_POLICIES]),
    st.sampled_from([json.dumps(policy, indent=1, sort_keys=True) for policy in VALID_POLICIES]),  # canonicalised
    st.sampled_from(INVALID_POLICIES),
    st.none(),
)
label_values = st.one_of(st.none(), st.sampled_from(["allowlist", "denylist", "", "anything"]))
session_ids = st.one_of(st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?", fullmatch=True),
                        st.sampled_from(["UPPER", "-lead", "a" * 300, "dot.ted", "x"]))
gate_lists = st.one_of(
    st.none(),
    st.lists(st.one_of(st.sampled_from([SCHEDULING_GATE, "other.io/gate", "x"]).map(lambda name: {"name": name}),
                       st.just({})), max_size=4),  # a gate that is not an object is a 400 at decoding
)
MISSING = object()


@st.composite
def pods(draw: st.DrawFn) -> dict[str, Any]:
    labels: dict[str, Any] = {SESSION_ID_LABEL: draw(session_ids)}
    mode = draw(st.one_of(st.just(MISSING), label_values))
    if mode is not MISSING:
        labels[EGRESS_MODE_LABEL] = mode
    labels.update(draw(st.dictionaries(st.sampled_from(["sortie.io/user", "sortie.io/app-id", "team"]),
                                       st.text(max_size=8), max_size=2)))
    metadata: dict[str, Any] = {"labels": labels, "generateName": draw(st.sampled_from(["firefox-", "gimp-"]))}
    annotation = draw(st.one_of(st.just(MISSING), annotations))
    if annotation is not MISSING:
        metadata["annotations"] = {EGRESS_POLICY_ANNOTATION: annotation, "other": "x"}
    elif draw(st.booleans()):
        metadata["annotations"] = {"other": "y"}
    spec: dict[str, Any] = {"containers": [{"name": "app", "image": "registry.invalid/app:1"}]}
    gates = draw(gate_lists)
    if gates is not None:
        spec["schedulingGates"] = gates
    inits = draw(st.one_of(st.none(), st.lists(st.sampled_from(["setup", "istio-init", INIT_CONTAINER_NAME]),
                                                  max_size=3)))
    if inits is not None:
        spec["initContainers"] = [{"name": name, "image": "registry.invalid/init:1"} for name in inits]
    volumes = draw(st.one_of(st.none(), st.lists(st.sampled_from(["data", NO_TOKEN_VOLUME]), max_size=2)))
    if volumes is not None:
        spec["volumes"] = [{"name": name, "emptyDir": {}} for name in volumes]
    node = draw(st.sampled_from([MISSING, None, "", "node-1"]))
    if node is not MISSING:
        spec["nodeName"] = node
    host_network = draw(st.sampled_from([MISSING, False, True]))
    if host_network is not MISSING:
        spec["hostNetwork"] = host_network
    context = draw(st.sampled_from([MISSING, {}, {"privileged": False}, {"privileged": True},
                                    {"capabilities": {"add": ["NET_RAW"]}}, {"capabilities": {"add": ["SYS_TIME"]}},
                                    {"capabilities": {"drop": ["ALL"]}}, {"runAsNonRoot": True}]))
    if context is not MISSING:
        spec["containers"][0]["securityContext"] = context
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}


def review_bytes(pod: dict[str, Any], uid: str, namespace: str, user: str, dry_run: bool) -> bytes:
    return json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
        "uid": uid, "kind": {"group": "", "version": "v1", "kind": "Pod"}, "operation": "CREATE",
        "namespace": namespace, "userInfo": {"username": user}, "object": pod, "dryRun": dry_run}}).encode()


def disagreement(request: ReviewRequest, wait: EnforcementWait | None = None, backend: str = "networkpolicy") -> str | None:
    """Why the memo's answer differs from the direct one, or None (also when the memo does not apply)."""
    answer = memoised_mutation(request, wait, backend)
    if answer is None:
        return None
    plain = admission_request(request)
    expected = mutate_pod(plain, wait, backend)
    if answer.for_uid(request.uid) != encode_response(request.uid, expected):
        return f"answer bytes differ for {plain.obj}"
    if (answer.verdict, answer.warnings) != (expected.verdict, len(expected.warnings)):
        return "verdict or warning count differs"
    return None


@settings(max_examples=400, deadline=None)
@given(pods(), st.text(min_size=1, max_size=40), st.sampled_from(["sessions", "other"]),
       st.sampled_from(["system:serviceaccount:sortie:broker", "alice"]), st.booleans())
def test_the_memoised_answer_is_the_direct_answer(pod: dict, uid: str, namespace: str, user: str, dry_run: bool) -> None:
    request = decode_request(review_bytes(pod, uid, namespace, user, dry_run))
    assert disagreement(request) is None
    assert disagreement(request, WAIT) is None  # with the enforcement wait configured, too
    for backend in BACKENDS:  # one memo serves a process with one backend; each must agree with itself
        assert disagreement(request, WAIT, backend) is None


def test_the_backend_is_part_of_the_memo_key() -> None:
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"labels": {SESSION_ID_LABEL: "s"}, "annotations": {
        EGRESS_POLICY_ANNOTATION: json.dumps({"mode": "allowlist", "rules": [{"fqdn": "a.example.com"}]})}},
        "spec": {"containers": [{"name": "app", "image": "registry.invalid/app:1"}]}}
    request = decode_request(review_bytes(pod, "u", "sessions", "alice", False))
    verdicts = [memoised_mutation(request, None, backend).verdict  # type: ignore[union-attr]
                for backend in ("cilium", "networkpolicy", "clusternetworkpolicy")]
    assert verdicts == ["patched", "denied", "patched"]


def test_pods_that_differ_only_in_what_the_answer_ignores_share_one_entry() -> None:
    memo._answer_for.cache_clear()
    policy = json.dumps(VALID_POLICIES[0])
    for index in range(50):
        pod = {"metadata": {"name": f"p-{index}", "labels": {SESSION_ID_LABEL: f"s-{index}", "sortie.io/user": f"u{index}"},
                            "annotations": {EGRESS_POLICY_ANNOTATION: policy}},
               "spec": {"containers": [{"name": "app", "image": f"img:{index}"}]}}
        assert memoised_mutation(decode_request(review_bytes(pod, f"uid-{index}", f"ns-{index % 3}", "a", index % 2 == 0)))
    info = memo._answer_for.cache_info()
    assert (info.misses, info.hits) == (1, 49)


@pytest.mark.parametrize("pod", [
    {"metadata": {"labels": {SESSION_ID_LABEL: "UPPER"}}},  # the refusal names the session id: not shared
    {"metadata": {"labels": {"team": "x"}}},  # not a session pod
    {"metadata": {"labels": {SESSION_ID_LABEL: "s"}, "annotations": {EGRESS_POLICY_ANNOTATION: 7}}},
    {"metadata": {"labels": {SESSION_ID_LABEL: "s", EGRESS_MODE_LABEL: ["a"]}}},
    {"metadata": {"labels": {SESSION_ID_LABEL: "s"}}, "spec": {"schedulingGates": [{"name": {"x": 1}}]}},
    {"metadata": {"labels": {SESSION_ID_LABEL: "s"},
                  "annotations": {EGRESS_POLICY_ANNOTATION: json.dumps({"mode": "allowlist", "pad": "x" * MAX_MEMO_ANNOTATION})}}},
    {"metadata": {"labels": {SESSION_ID_LABEL: "s"}}, "spec": {"hostNetwork": False}},  # judged (pod_shape.py)
    {"metadata": {"labels": {SESSION_ID_LABEL: "s"}}, "spec": {"containers": [
        {"name": "app", "securityContext": {"capabilities": {"drop": ["ALL"]}}}]}},
    {"metadata": {"labels": {SESSION_ID_LABEL: "s"}}, "spec": {"ephemeralContainers": [
        {"name": "debug", "securityContext": {"privileged": False}}]}},
])
def test_what_the_memo_does_not_cover_is_decided_directly(pod: dict) -> None:
    assert mutation_key(decode_request(review_bytes(pod, "u", "n", "a", False))) is None


def test_only_pod_creates_are_memoised() -> None:
    pod = {"metadata": {"labels": {SESSION_ID_LABEL: "s"}}}
    update = decode_request(review_bytes(pod, "u", "n", "a", False).replace(b'"CREATE"', b'"UPDATE"'))
    assert mutation_key(update) is None


# --- the comparison above can fail: keys that leave out what the decision reads --------------

def _mutant(drop: int) -> Callable[[ReviewRequest], tuple[Hashable, ...] | None]:
    def key(request: ReviewRequest) -> tuple[Hashable, ...] | None:
        real = mutation_key(request)
        return None if real is None else tuple(None if index == drop else part for index, part in enumerate(real))
    return key


@pytest.mark.parametrize(("drop", "policy", "first", "second"), [
    (0, True, {"policy": VALID_POLICIES[1]}, {}),  # the annotation
    (2, True, {EGRESS_MODE_LABEL: "allowlist"}, {EGRESS_MODE_LABEL: "denylist"}),  # the mode label's value
    (3, False, {EGRESS_MODE_LABEL: None}, {}),  # whether the mode label is there at all
    (4, True, {"gates": [SCHEDULING_GATE]}, {}),  # the scheduling gates
    (5, True, {"node": "node-1"}, {}),  # whether the pod is bound to a node
    (6, True, {"inits": ["setup"]}, {}),  # the init containers (ours goes first)
    (7, True, {"volumes": ["data"]}, {}),  # whether there is a volume list (ours is appended to it)
])
def test_a_key_missing_a_field_the_decision_reads_is_caught(monkeypatch: pytest.MonkeyPatch, drop: int, policy: bool,
                                                             first: dict, second: dict) -> None:
    def pod(extra: dict) -> dict:
        labels: dict[str, Any] = {SESSION_ID_LABEL: "s"}
        labels.update({key: value for key, value in extra.items()
                       if key not in ("gates", "policy", "node", "inits", "volumes")})
        spec: dict[str, Any] = {"schedulingGates": [{"name": name} for name in extra["gates"]]} if extra.get("gates") else {}
        if extra.get("inits"):
            spec["initContainers"] = [{"name": name} for name in extra["inits"]]
        if extra.get("volumes"):
            spec["volumes"] = [{"name": name, "emptyDir": {}} for name in extra["volumes"]]
        if extra.get("node"):
            spec["nodeName"] = extra["node"]
        metadata: dict[str, Any] = {"labels": labels}
        if policy:
            metadata["annotations"] = {EGRESS_POLICY_ANNOTATION: json.dumps(extra.get("policy", VALID_POLICIES[0]))}
        return {"metadata": metadata, "spec": spec}

    memo._answer_for.cache_clear()
    monkeypatch.setattr(memo, "mutation_key", _mutant(drop))
    found = [disagreement(decode_request(review_bytes(pod(extra), "u", "n", "a", False)), WAIT)
             for extra in (first, second)]
    memo._answer_for.cache_clear()
    assert any(found), "a memo key without this field went unnoticed"
