"""CiliumNetworkPolicies judged for effective egress (CONTRACT §4, issue 22): a CiliumNetworkPolicy
that selects a session pod widens it as a NetworkPolicy would. Expectations written out by hand."""

from __future__ import annotations

from typing import Any

import pytest

from sortie_egress.effective.networkpolicy import Widening, widenings
from sortie_egress.effective.cilium import is_cilium_policy, selects
from tests.test_effective import LABELS, OWN_ALLOW_443

OWN = {"metadata": {"name": "sortie-egress-s1", "namespace": "sessions"}, "spec": OWN_ALLOW_443}
NAMESPACE = "k8s:io.kubernetes.pod.namespace"


def cnp(name: str, *egress: dict[str, Any], selector: dict[str, Any] | None = None,
        namespace: str = "sessions") -> dict[str, Any]:
    return {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"endpointSelector": {} if selector is None else selector, "egress": list(egress)}}


def judged(*policies: dict[str, Any]) -> list[str]:
    return [widening.describe() for widening in widenings(OWN, list(policies), "sessions", LABELS)]


def test_a_namespace_admins_allow_all_widens_the_session_to_everything() -> None:
    assert judged(cnp("allow-all", {"toEntities": ["all"]})) == [
        "CiliumNetworkPolicy allow-all: egress[0] allows TCP (all ports), UDP (all ports), SCTP (all ports), "
        "other protocols to any destination"]


def test_every_pod_of_the_namespace_is_a_widening_named_by_its_selector() -> None:
    """What the issue found on packets: a selector peer opened the cluster's pods, and nothing was told."""
    assert judged(cnp("same-namespace", {"toEndpoints": [{}]})) == [
        'CiliumNetworkPolicy same-namespace: egress[0] allows TCP (all ports), UDP (all ports), SCTP (all ports), '
        'other protocols to pods selected by {"podSelector":{}}']
    assert judged(cnp("every-namespace", {"toEndpoints": [{"matchExpressions": [{"key": NAMESPACE, "operator": "Exists"}]}],
                                          "toPorts": [{"ports": [{"port": "8080", "protocol": "TCP"}]}]})) == [
        'CiliumNetworkPolicy every-namespace: egress[0] allows TCP 8080 to pods selected by '
        '{"namespaceSelector":{"matchExpressions":[{"key":"kubernetes.io/metadata.name","operator":"Exists"}]},"podSelector":{}}']


def test_dns_to_the_cluster_resolvers_and_the_sessions_own_destination_widen_nothing() -> None:
    dns = {"toEndpoints": [{"matchLabels": {NAMESPACE: "kube-system", "k8s:k8s-app": "kube-dns"}}],
           "toPorts": [{"ports": [{"port": "53", "protocol": "UDP"}, {"port": "53", "protocol": "TCP"}],
                        "rules": {"dns": [{"matchPattern": "*"}]}}]}
    inside = {"toCIDRSet": [{"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}],
              "toPorts": [{"ports": [{"port": "443", "protocol": "TCP"}]}]}
    assert judged(cnp("dns-and-443", dns, inside)) == []


@pytest.mark.parametrize(("rule", "reason"), [
    ({"toCIDR": ["192.0.2.7/32"]}, "egress[0] allows TCP (all ports), UDP (all ports), SCTP (all ports), other protocols to 192.0.2.7/32"),
    ({"toEntities": ["world"], "toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}]}]},
     "egress[0] allows TCP 80 to 0.0.0.0/0, ::/0"),
    ({"toCIDRSet": [{"cidr": "10.0.0.0/8"}], "toPorts": [{"ports": [{"port": "0", "protocol": "ANY"}]}]},
     "egress[0] allows TCP 1-442, TCP 444-65535, UDP (all ports), SCTP (all ports) to 10.0.0.0/8"),
    ({"toCIDRSet": [{"cidr": "10.0.0.0/8"}], "toPorts": [{"ports": [{"port": "https", "protocol": "TCP"}]}]},
     "egress[0] allows TCP 1-442, TCP 444-65535 to 10.0.0.0/8"),
    ({"toCIDRSet": [{"cidr": "10.0.0.0/8"}], "icmps": [{"fields": [{"type": 8}]}]}, "egress[0] allows other protocols to 10.0.0.0/8"),
    ({"toFQDNs": [{"matchName": "example.com"}], "toPorts": [{"ports": [{"port": "443", "protocol": "TCP"}]}]},
     'egress[0] allows TCP 443 to toFQDNs [{"matchName": "example.com"}]'),
    ({"toEntities": ["host"], "toPorts": [{"ports": [{"port": "443", "protocol": "TCP"}]}]},
     "egress[0] allows TCP 443 to the Cilium entity host"),
    ({"toPorts": [{"ports": [{"port": "443", "protocol": "TCP"}]}]}, "egress[0] allows TCP 443 to any destination"),
])
def test_what_each_kind_of_destination_and_traffic_allows(rule: dict[str, Any], reason: str) -> None:
    assert judged(cnp("other", rule)) == [f"CiliumNetworkPolicy other: {reason}"]


def test_only_policies_that_select_the_pod_in_its_namespace_are_judged() -> None:
    everything = {"toEntities": ["all"]}
    assert judged(cnp("elsewhere", everything, namespace="other")) == []
    assert judged(cnp("other-pods", everything, selector={"matchLabels": {"k8s:app": "web"}})) == []
    assert judged(cnp("no-egress", selector={})) == []  # selects the pod, allows it nothing
    assert judged(cnp("by-label", everything, selector={"matchLabels": {"k8s:app.kubernetes.io/component": "session"}}))[0] \
        .startswith("CiliumNetworkPolicy by-label: ")
    assert judged(cnp("by-namespace-label", everything, selector={"matchLabels": {NAMESPACE: "sessions"}}))[0] \
        .startswith("CiliumNetworkPolicy by-namespace-label: ")
    assert judged(cnp("reserved", everything, selector={"matchLabels": {"reserved:host": ""}})) == []


def test_the_specs_list_is_read_too_and_both_kinds_are_told_apart() -> None:
    two = {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy", "metadata": {"name": "two", "namespace": "sessions"},
           "specs": [{"endpointSelector": {"matchLabels": {"k8s:app": "web"}}, "egress": [{"toEntities": ["all"]}]},
                     {"endpointSelector": {}, "egress": [{"toCIDR": ["192.0.2.7/32"],
                                                          "toPorts": [{"ports": [{"port": "22", "protocol": "TCP"}]}]}]}]}
    network_policy = {"metadata": {"name": "np", "namespace": "sessions"},
                      "spec": {"podSelector": {}, "policyTypes": ["Egress"], "egress": [{"to": [{"ipBlock": {"cidr": "192.0.2.8/32"}}],
                                                                                       "ports": [{"protocol": "TCP", "port": 22}]}]}}
    found = widenings(OWN, [network_policy, two], "sessions", LABELS)
    assert found == [Widening("two", ("egress[0] allows TCP 22 to 192.0.2.7/32",), "CiliumNetworkPolicy"),
                     Widening("np", ("egress[0] allows TCP 22 to 192.0.2.8/32",), "NetworkPolicy")]


def test_a_projection_without_its_kind_is_known_by_its_shape() -> None:
    projected = {"metadata": {"name": "x", "namespace": "sessions"}, "spec": {"endpointSelector": {}, "egress": []}}
    assert is_cilium_policy(projected) and not is_cilium_policy({"metadata": {}, "spec": {"podSelector": {}}})
    assert selects(projected, "sessions", LABELS)


def ccnp(name: str, *egress: dict[str, Any], selector: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"apiVersion": "cilium.io/v2", "kind": "CiliumClusterwideNetworkPolicy", "metadata": {"name": name},
            "spec": {"endpointSelector": {} if selector is None else selector, "egress": list(egress)}}


def test_a_clusterwide_policy_selects_in_every_namespace_unless_it_names_one() -> None:
    everything = {"toEntities": ["all"]}
    assert judged(ccnp("platform-allow-all", everything)) == [
        "CiliumClusterwideNetworkPolicy platform-allow-all: egress[0] allows TCP (all ports), UDP (all ports), "
        "SCTP (all ports), other protocols to any destination"]
    assert judged(ccnp("elsewhere", everything, selector={"matchLabels": {NAMESPACE: "other"}})) == []
    assert judged(ccnp("here", everything, selector={"matchLabels": {NAMESPACE: "sessions"}}))[0] \
        .startswith("CiliumClusterwideNetworkPolicy here: ")
    assert judged(ccnp("other-pods", everything, selector={"matchLabels": {"k8s:app": "web"}})) == []
    # A host policy selects nodes, not pods.
    host = {"apiVersion": "cilium.io/v2", "kind": "CiliumClusterwideNetworkPolicy", "metadata": {"name": "host"},
            "spec": {"nodeSelector": {}, "egress": [everything]}}
    assert judged(host) == []


def test_a_clusterwide_endpoint_peer_without_a_namespace_means_every_namespace() -> None:
    """In a namespaced policy ``toEndpoints: [{}]`` is the policy's own namespace's pods; in a
    clusterwide one, every pod of the cluster."""
    assert judged(ccnp("every-pod", {"toEndpoints": [{}], "toPorts": [{"ports": [{"port": "8080", "protocol": "TCP"}]}]})) == [
        'CiliumClusterwideNetworkPolicy every-pod: egress[0] allows TCP 8080 to pods selected by '
        '{"namespaceSelector":{},"podSelector":{}}']
