"""Other ClusterNetworkPolicies judged for effective egress on the clusternetworkpolicy backend
(issue 22: "judge effective egress on every backend"): only an Admin-tier one that comes before the
session's (priority number <= ours) can widen it, by Accept or by Pass. Expectations by hand."""

from __future__ import annotations

from typing import Any

import pytest

from sortie_egress.effective.clusternetworkpolicy import cluster_widenings
from tests.test_effective import LABELS, OWN_ALLOW_443

OWN = {"metadata": {"name": "(the session's egress policy)", "namespace": "sessions"}, "spec": OWN_ALLOW_443}
SESSIONS = {"matchLabels": {"kubernetes.io/metadata.name": "sessions"}}
SSH_OUT = {"name": "let-ssh", "action": "Accept", "to": [{"networks": ["0.0.0.0/0"]}],
           "protocols": [{"tcp": {"destinationPort": {"number": 22}}}]}


def cnp(name: str, *egress: dict[str, Any], priority: int = 100, tier: str = "Admin",
        subject: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"apiVersion": "policy.networking.k8s.io/v1beta1", "kind": "ClusterNetworkPolicy", "metadata": {"name": name},
            "spec": {"tier": tier, "priority": priority, "subject": subject or {"namespaces": SESSIONS},
                     "egress": list(egress)}}


def judged(*policies: dict[str, Any]) -> list[str]:
    return [w.describe() for w in cluster_widenings(OWN, list(policies), "sessions", LABELS, priority=500)]


def test_an_accept_that_comes_first_widens_the_session() -> None:
    assert judged(cnp("guard", SSH_OUT)) == ["ClusterNetworkPolicy guard: egress let-ssh (Accept) allows TCP 22 to 0.0.0.0/0"]


def test_a_pass_skips_our_admin_rules_and_widens_as_much() -> None:
    hand_off = {"name": "hand-off", "action": "Pass", "to": [{"pods": {"namespaceSelector": {}, "podSelector": {}}}]}
    assert judged(cnp("delegate", hand_off)) == [
        'ClusterNetworkPolicy delegate: egress hand-off (Pass) allows TCP (all ports), UDP (all ports), SCTP (all ports), '
        'other protocols to pods selected by {"namespaceSelector":{},"podSelector":{}}']


@pytest.mark.parametrize(("priority", "tier", "told"), [(499, "Admin", True), (500, "Admin", True), (501, "Admin", False),
                                                        (0, "Baseline", False)])
def test_only_admin_policies_evaluated_no_later_than_ours_count(priority: int, tier: str, told: bool) -> None:
    assert bool(judged(cnp("p", SSH_OUT, priority=priority, tier=tier))) is told


def test_denies_and_what_the_session_allows_widen_nothing() -> None:
    dns = {"name": "dns", "action": "Accept",
           "to": [{"pods": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
                            "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}}],
           "protocols": [{"udp": {"destinationPort": {"number": 53}}}, {"tcp": {"destinationPort": {"number": 53}}}]}
    inside = {"name": "inside", "action": "Accept", "to": [{"networks": ["10.1.0.0/16"]}],
              "protocols": [{"tcp": {"destinationPort": {"range": {"start": 443, "end": 443}}}}]}
    metadata = {"name": "metadata", "action": "Deny", "to": [{"networks": ["169.254.169.254/32"]}]}
    assert judged(cnp("harmless", dns, inside, metadata)) == []


@pytest.mark.parametrize(("subject", "told"), [
    ({"namespaces": SESSIONS}, True),
    ({"namespaces": {"matchLabels": {"kubernetes.io/metadata.name": "other"}}}, False),
    ({"namespaces": {"matchLabels": {"env": "prod"}}}, True),  # a label we do not know: told, not missed
    ({"pods": {"namespaceSelector": {}, "podSelector": {"matchLabels": {"app.kubernetes.io/component": "session"}}}}, True),
    ({"pods": {"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": "web"}}}}, False),
])
def test_the_subject_decides_whose_pods_it_takes_in(subject: dict[str, Any], told: bool) -> None:
    assert bool(judged(cnp("p", SSH_OUT, subject=subject))) is told


def test_names_nodes_and_named_ports_are_never_covered() -> None:
    rules = [{"name": "names", "action": "Accept", "to": [{"domainNames": ["*.example.com"]}],
              "protocols": [{"tcp": {"destinationPort": {"number": 443}}}]},
             {"name": "nodes", "action": "Accept", "to": [{"nodes": {"matchLabels": {"role": "infra"}}}],
              "protocols": [{"destinationNamedPort": "metrics"}]}]
    assert judged(cnp("wide", *rules)) == [
        'ClusterNetworkPolicy wide: egress names (Accept) allows TCP 443 to domainNames ["*.example.com"]; '
        'egress nodes (Accept) allows TCP (all ports), UDP (all ports), SCTP (all ports) to nodes selected by '
        '{"matchLabels":{"role":"infra"}}']
