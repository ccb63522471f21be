"""The admission policies' text decisions that can be checked without a server (sortie_egress/protection/authorship.py).

What they do in the API server is tested there (tests/test_cluster_trust_boundary.py); here the
one piece of logic CEL runs on text: which annotations are plainly "no policy". RE2 and Python's
``re`` agree on this pattern (no look-arounds, no back-references).
"""

from __future__ import annotations

import re

import pytest

from sortie_egress.protection.authorship import AUTHOR_KINDS, NO_POLICY_PATTERN, POD_CREATING_CONTROLLERS, pod_creation_policy

NONE = re.compile(NO_POLICY_PATTERN)


@pytest.mark.parametrize("text", ["", "   ", "\n", '{"mode": ""}', '{"mode":""}', ' { "mode" : "" } ',
                                  '{"mode": "", "rules": []}', '{"mode": "", "rules": [{"cidr": "10.0.0.0/8"}]}'])
def test_plainly_no_policy(text: str) -> None:
    assert NONE.match(text)


@pytest.mark.parametrize("text", [
    '{"mode": "allowlist"}', '{"mode": "denylist", "rules": []}', '{"rules": [], "mode": ""}',
    '{"mode": "", "extra": 1}', '{"\\u006dode": ""}', "not json", '{"mode": " "}',
])
def test_anything_else_counts_as_a_policy(text: str) -> None:
    assert not NONE.match(text)


def test_text_that_only_looks_like_none_is_not_valid_json_either() -> None:
    """The pattern can be fooled only by text no strict parser accepts (trailing data, duplicate
    keys): the controller enforces that as DNS only, never wider than no policy."""
    from sortie_egress.policy.model import parse_policy

    for text in ('{"mode": "", "rules": []} {"mode": "allowlist"}', '{"mode": "", "rules": [], "mode": "allowlist"}'):
        assert NONE.match(text)
        assert parse_policy(text).errors


def test_the_author_kinds_are_the_backends_kinds() -> None:
    assert AUTHOR_KINDS == {"networkpolicy": ("networking.k8s.io", "networkpolicies", True),
                            "cilium": ("cilium.io", "ciliumnetworkpolicies", True),
                            "clusternetworkpolicy": ("policy.networking.k8s.io", "clusternetworkpolicies", False)}


def test_only_kubernetes_pod_creating_controllers_skip_the_author_check() -> None:
    assert set(POD_CREATING_CONTROLLERS) == {
        "system:serviceaccount:kube-system:replicaset-controller",
        "system:serviceaccount:kube-system:statefulset-controller",
        "system:serviceaccount:kube-system:job-controller",
        "system:serviceaccount:kube-system:daemon-set-controller",
        "system:serviceaccount:kube-system:replication-controller",
        "system:kube-controller-manager"}
    policy = pod_creation_policy()
    assert "matchConditions" not in policy["spec"]  # every session pod create is judged
    assert policy["spec"]["matchConstraints"]["resourceRules"][0]["operations"] == ["CREATE"]
