"""Admission decisions end to end through the pure pipeline: bytes in, AdmissionReview bytes out."""

from __future__ import annotations

import base64
import json

import pytest

from tests.support import session_pod
from sortie_egress.admission.mutate import mutate_pod
from sortie_egress.admission.response import encode_response
from sortie_egress.admission.review import ReviewError, decode_review
from sortie_egress.admission.patch import apply_patch

def review(obj: dict | None, operation: str = "CREATE", kind: str = "Pod", old: dict | None = None,
           user: str = "alice", dry_run: bool = False, namespace: str = "ns") -> bytes:
    return json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
        "uid": "u-1", "kind": {"group": "", "version": "v1", "kind": kind},
        "resource": {"group": "", "version": "v1", "resource": kind.lower() + "s"},
        "namespace": namespace, "name": "x", "operation": operation, "userInfo": {"username": user},
        "object": obj, "oldObject": old, "dryRun": dry_run}}).encode()


def mutate(pod: dict, **kwargs: object) -> dict:
    request = decode_review(review(pod, **kwargs))
    return json.loads(encode_response(request.uid, mutate_pod(request)))["response"]


def patched(pod: dict, response: dict) -> dict:
    return apply_patch(pod, json.loads(base64.b64decode(response["patch"])))


# --- decoding -------------------------------------------------------------------

ENVELOPE = b'{"kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1", '


@pytest.mark.parametrize(
    ("body", "reason"),
    [(b"", "body is not JSON"), (b"{", "body is not JSON"), (b"\xff\xfe", "body is not JSON"),
     (b'{"a": NaN}', "body is not JSON"),
     # fuzzer finding: msgspec < 0.23 raised UnicodeDecodeError (ours: "not UTF-8 JSON"), 0.23 a DecodeError
     (ENVELOPE + b'"request": {"uid": "\x9e", "operation": "CREATE"}}', "UTF-8"),
     (b"[]", "not an AdmissionReview: Expected `object`, got `array`"),
     (b'{"kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1beta1", "request": {"uid": "a", "operation": "CREATE"}}',
      "expected kind AdmissionReview, apiVersion admission.k8s.io/v1"),
     (ENVELOPE[:-2] + b"}", "missing required field `request`"),
     (ENVELOPE + b'"request": {"uid": "", "operation": "CREATE"}}', "request.uid must be a non-empty string"),
     (ENVELOPE + b'"request": {"uid": "a"}}', "missing required field `operation`"),
     (ENVELOPE + b'"request": {"uid": "a", "operation": "CREATE", "object": []}}', "at `$.request.object`"),
     (ENVELOPE + b'"request": {"uid": "a", "operation": "CREATE", "namespace": 1}}', "at `$.request.namespace`"),
     (ENVELOPE + b'"request": {"uid": "a", "operation": "CREATE", "object": {"metadata": {"labels": "x"}}}}',
      "at `$.request.object.metadata.labels`")],
)
def test_malformed_envelopes_are_review_errors(body: bytes, reason: str) -> None:
    with pytest.raises(ReviewError) as error:
        decode_review(body)
    assert reason in str(error.value)


# --- mutate ---------------------------------------------------------------------

def test_valid_policy_is_admitted_with_one_patch_and_warnings() -> None:
    pod = session_pod(policy={"mode": "allowlist", "rules": [{"cidr": "10.0.0.1/8", "port": 443, "protocol": "tcp"}]})
    response = mutate(pod)
    assert response["uid"] == "u-1" and response["allowed"] is True and response["patchType"] == "JSONPatch"
    assert response["warnings"] == ['rules[0].cidr: "10.0.0.1/8" has host bits set; using 10.0.0.0/8']
    result = patched(pod, response)
    assert result["metadata"]["annotations"]["sortie.io/egress-policy"] == (
        '{"mode": "allowlist", "rules": [{"cidr": "10.0.0.0/8", "port": 443, "protocol": "TCP"}]}')
    assert result["metadata"]["labels"]["sortie.io/egress-mode"] == "allowlist"
    assert result["spec"]["schedulingGates"] == [{"name": "sortie.io/egress-policy"}]


def test_already_mutated_pod_gets_no_patch() -> None:
    pod = session_pod(policy={"mode": "denylist", "rules": [{"cidr": "10.0.0.0/8"}]})
    once = patched(pod, mutate(pod))
    again = mutate(once)
    assert again["allowed"] is True and "patch" not in again


def test_dry_run_gets_the_identical_answer() -> None:
    pod = session_pod(session_id="same", policy={"mode": "allowlist"})
    assert mutate(pod, dry_run=True) == mutate(pod, dry_run=False)


def test_invalid_policy_is_denied_with_422_and_every_problem() -> None:
    pod = session_pod(session_id="Bad_Id", policy={"mode": "allowlist", "rules": [{"cidr": "10.0.0.300/8"}, {"cidr": "10.0.0.0/8", "port": 1.5}]})
    response = mutate(pod)
    assert response["allowed"] is False and "patch" not in response
    status = response["status"]
    assert status["code"] == 422 and status["reason"] == "Invalid"
    message = status["message"]
    assert 'rules[0].cidr: "10.0.0.300/8" is not an IP network' in message
    assert "rules[1].port: must be an integer, got 1.5" in message
    assert 'sortie.io/session-id: "Bad_Id" cannot name a NetworkPolicy' in message
    assert "Traceback" not in message


def test_bad_session_id_without_a_policy_is_admitted_unchanged() -> None:
    response = mutate(session_pod(session_id="Bad_Id"))
    assert response["allowed"] is True and "patch" not in response


def test_no_policy_and_empty_mode_are_admitted_unchanged() -> None:
    assert "patch" not in mutate(session_pod())
    response = mutate(session_pod(policy={"mode": "", "rules": [{"cidr": "10.0.0.0/8"}]}))
    assert response["allowed"] is True and "patch" not in response
    assert response["warnings"] == ['mode: "" means no per-app policy; 1 rules ignored, the cluster default applies']


def test_creator_set_mode_label_is_removed_without_a_policy() -> None:
    pod = session_pod(extra_labels={"sortie.io/egress-mode": "allowlist"})
    assert "sortie.io/egress-mode" not in patched(pod, mutate(pod))["metadata"]["labels"]


def test_non_session_pods_and_other_operations_pass_untouched() -> None:
    plain = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "labels": {"sortie.io/egress-mode": "x"}}, "spec": {}}
    assert mutate(plain) == {"uid": "u-1", "allowed": True}
    request = decode_review(review(session_pod(policy="garbage"), operation="UPDATE"))
    assert mutate_pod(request).allowed


# --- pods bound at creation ----------------------------------------------------------

def test_a_bound_pod_with_a_policy_is_refused_with_the_reason() -> None:
    pod = session_pod(policy={"mode": "allowlist", "rules": []})
    pod["spec"]["nodeName"] = "node-1"
    response = mutate(pod)
    assert response["allowed"] is False and response["status"]["code"] == 422
    assert "spec.nodeName is set" in response["status"]["message"]
    assert "leave spec.nodeName unset" in response["status"]["message"]


def test_a_bound_pod_without_a_policy_is_admitted() -> None:
    pod = session_pod()
    pod["spec"]["nodeName"] = "node-1"
    assert mutate(pod)["allowed"] is True


def test_an_empty_node_name_is_not_bound() -> None:
    pod = session_pod(policy={"mode": "allowlist", "rules": []})
    pod["spec"]["nodeName"] = ""
    assert mutate(pod)["allowed"] is True


# --- a re-applied manifest (pod UPDATE rewriting the annotation) ---------------------------

ADMITTED = '{"mode": "allowlist", "rules": [{"cidr": "10.0.0.0/8", "port": 443}]}'


def reapply(new_annotation: str | None) -> dict:
    old = session_pod(session_id="s1", policy=ADMITTED, extra_labels={"sortie.io/egress-mode": "allowlist"})
    new = json.loads(json.dumps(old))
    if new_annotation is None:
        del new["metadata"]["annotations"]["sortie.io/egress-policy"]
    else:
        new["metadata"]["annotations"]["sortie.io/egress-policy"] = new_annotation
    return mutate(new, operation="UPDATE", old=old)


def test_a_reapplied_manifest_keeps_the_canonical_annotation() -> None:
    response = reapply('{"rules":[{"port":443,"cidr":"10.0.0.1/8"}],"mode":"allowlist"}')
    assert response["allowed"] is True
    assert json.loads(base64.b64decode(response["patch"])) == [
        {"op": "replace", "path": "/metadata/annotations/sortie.io~1egress-policy", "value": ADMITTED}]
    assert response["warnings"] == ["sortie.io/egress-policy: kept as the canonical form the pod was admitted with "
                                    "(the new text states the same policy)"]


@pytest.mark.parametrize("annotation", [
    '{"mode": "allowlist", "rules": [{"cidr": "0.0.0.0/0"}]}',  # a different policy: the admission policy refuses it
    '{"mode": "allowlist", "rules": [{"cidr": "nope"}]}',  # invalid
    None,  # removed
    ADMITTED,  # unchanged (the API server would not even call)
])
def test_any_other_update_is_left_to_the_admission_policy(annotation: str | None) -> None:
    response = reapply(annotation)
    assert response == {"uid": "u-1", "allowed": True}
