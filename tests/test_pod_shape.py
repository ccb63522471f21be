"""Pods a policy cannot hold (CONTRACT §7): host network, privileged, NET_RAW/NET_ADMIN.

Expectations are written out by hand; the admission cases go through the whole pure pipeline
(bytes in, AdmissionReview out), as the API server would call it.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.test_admission import mutate
from sortie_egress.admission.pod_shape import pod_shape_problems

POLICY = json.dumps({"mode": "allowlist", "rules": [{"cidr": "10.0.0.0/8", "port": 443, "protocol": "TCP"}]})


def pod(spec: dict[str, Any], policy: str | None = POLICY) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": "s1", "labels": {"sortie.io/session-id": "s1"}}
    if policy is not None:
        metadata["annotations"] = {"sortie.io/egress-policy": policy}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata,
            "spec": {"containers": [{"name": "app", "image": "registry.invalid/app:1"}], **spec}}


def app(context: dict[str, Any], name: str = "app") -> dict[str, Any]:
    return {"name": name, "image": "registry.invalid/app:1", "securityContext": context}


@pytest.mark.parametrize(("spec", "expected"), [
    ({}, []),
    ({"hostNetwork": False}, []),
    ({"containers": [app({"privileged": False, "capabilities": {"add": ["SYS_TIME", "CHOWN"], "drop": ["ALL"]}})]}, []),
    ({"containers": [app({"capabilities": {"drop": ["NET_RAW"]}})]}, []),
    ({"hostNetwork": True}, ["spec.hostNetwork is true"]),
    ({"nodeName": "node-1"}, ["spec.nodeName is set"]),
    ({"containers": [app({"privileged": True})]}, ["spec.containers[0] (app): securityContext.privileged is true"]),
    ({"containers": [app({}), app({"capabilities": {"add": ["NET_RAW"]}}, "second")]},
     ["spec.containers[1] (second): securityContext.capabilities.add has NET_RAW"]),
    # the runtime spells them either way, in any case; ALL holds both
    ({"containers": [app({"capabilities": {"add": ["cap_net_admin", "Net_Raw"]}})]},
     ["spec.containers[0] (app): securityContext.capabilities.add has NET_ADMIN, NET_RAW"]),
    ({"initContainers": [app({"capabilities": {"add": ["ALL"]}}, "setup")]},
     ["spec.initContainers[0] (setup): securityContext.capabilities.add has ALL"]),
    ({"ephemeralContainers": [app({"privileged": True}, "debug")]},
     ["spec.ephemeralContainers[0] (debug): securityContext.privileged is true"]),
    ({"hostNetwork": True, "containers": [app({"privileged": True, "capabilities": {"add": ["NET_ADMIN"]}})]},
     ["spec.hostNetwork is true", "spec.containers[0] (app): securityContext.privileged is true",
      "spec.containers[0] (app): securityContext.capabilities.add has NET_ADMIN"]),
    # not objects where objects belong: nothing to judge (the API server refuses such pods itself)
    ({"containers": ["app", {"name": "x", "securityContext": "no"}]}, []),
])
def test_each_shape_that_escapes_a_policy_is_named(spec: dict[str, Any], expected: list[str]) -> None:
    problems = pod_shape_problems(pod(spec))
    assert len(problems) == len(expected), problems
    for problem, start in zip(problems, expected):
        assert problem.startswith(start), (problem, start)


@pytest.mark.parametrize("spec", [
    {"hostNetwork": True},
    {"containers": [app({"privileged": True})]},
    {"containers": [app({"capabilities": {"add": ["NET_RAW"]}})]},
])
def test_a_session_pod_with_a_policy_and_such_a_shape_is_refused_with_the_reason(spec: dict[str, Any]) -> None:
    response = mutate(pod(spec))
    assert response["allowed"] is False and response["status"]["code"] == 422
    message = response["status"]["message"]
    assert message.startswith("sortie-egress refused the session pod")
    assert ("hostNetwork" in message) or ("privileged" in message) or ("NET_RAW" in message), message
    assert "patch" not in response


@pytest.mark.parametrize("policy", [None, "", json.dumps({"mode": ""})])
def test_a_session_pod_without_a_policy_keeps_its_shape(policy: str | None) -> None:
    """Without a policy nothing is enforced, so nothing is refused for it: the cluster default applies."""
    response = mutate(pod({"hostNetwork": True, "containers": [app({"privileged": True})]}, policy))
    assert response["allowed"] is True


def test_an_invalid_policy_gets_the_shape_problems_too() -> None:
    """Every mistake at once: the author fixes them in one round."""
    response = mutate(pod({"hostNetwork": True}, json.dumps({"mode": "allowlist", "rule": []})))
    message = response["status"]["message"]
    assert "rule" in message and "spec.hostNetwork is true" in message
