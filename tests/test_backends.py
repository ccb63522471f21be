"""FQDN rules and the enforcement backends' renderings (issue 14), against hand-written objects."""

from __future__ import annotations

import json
from typing import Any

import pytest

from sortie_egress.admission.mutate import judge, mutate_pod
from sortie_egress.admission.review import AdmissionRequest
from sortie_egress.backends import backend_problems
from sortie_egress.policy.traffic import port_set
from sortie_egress.controller.plan import enforced_for
from sortie_egress.policy.model import parse_policy
from sortie_egress.policy.destinations import parse_fqdn
from sortie_egress.render.networkpolicy import render_network_policy
from sortie_egress.render.session import Canary, DnsDestination
from sortie_egress.render.cilium import render_cilium_network_policy
from sortie_egress.render.clusternetworkpolicy import cluster_policy_name, render_cluster_network_policy
from sortie_egress.admission.session import session_pod
from tests.support import MODE_EXISTS


def _pod(policy: dict[str, Any] | None, session: str = "s-1", namespace: str = "team-a") -> dict[str, Any]:
    annotations = {} if policy is None else {"sortie.io/egress-policy": json.dumps(policy)}
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "desk-1", "namespace": namespace, "uid": "uid-1",
                         "labels": {"sortie.io/session-id": session, "sortie.io/app-id": "firefox"},
                         "annotations": annotations},
            "spec": {"containers": [{"name": "app", "image": "app:1"}]}}


def _parsed(policy: dict[str, Any]) -> Any:
    result = parse_policy(json.dumps(policy))
    assert result.ok, result.errors
    return result.policy


# --- FQDN rules in the annotation ---------------------------------------------------------------

@pytest.mark.parametrize(("text", "name"), [
    ("api.example.com", "api.example.com"),
    ("API.Example.COM.", "api.example.com"),
    ("*.example.com", "*.example.com"),
    ("a_b.example.com", "a_b.example.com"),
    ("xn--bcher-kva.example", "xn--bcher-kva.example"),
    ("a" * 63 + ".example.com", "a" * 63 + ".example.com"),
])
def test_fqdn_names_are_kept_lower_case_without_the_root_dot(text: str, name: str) -> None:
    assert parse_fqdn(text) == name


@pytest.mark.parametrize(("text", "message"), [
    ("localhost", '"localhost" is not a DNS name'),
    ("*.com", '"*.com": a wildcard needs two or more labels after "*."'),
    ("a.*.example.com", '"a.*.example.com": "*" is allowed only as the first label'),
    ("*example.com", '"*example.com": "*" is allowed only as the first label'),
    ("**.example.com", '"**.example.com": "*" is allowed only as the first label'),
    ("10.0.0.1", '"10.0.0.1" is an IP address, not a name; use cidr'),
    ("-bad.example.com", '"-bad.example.com" is not a DNS name'),
    ("bad-.example.com", '"bad-.example.com" is not a DNS name'),
    ("ex ample.com", '"ex ample.com" is not a DNS name'),
    ("_sip._tcp.example.com", "that begin and end with a letter or digit"),
    ("a..example.com", '"a..example.com" is not a DNS name'),
    ("a" * 64 + ".example.com", "is not a DNS name"),
    ("bücher.example", "is not a DNS name (ASCII only; write an internationalised name in its xn-- form)"),
    (("a" * 60 + ".") * 4 + "example.com", "characters; a DNS name has at most 253"),
])
def test_bad_fqdn_names_are_refused_with_the_reason(text: str, message: str) -> None:
    with pytest.raises(ValueError) as refused:
        parse_fqdn(text)
    assert message in str(refused.value)


def test_fqdn_rule_canonical_form_and_ports() -> None:
    result = parse_policy(json.dumps({"mode": "allowlist", "rules": [
        {"protocol": "tcp", "port": 443, "fqdn": "API.example.com."}, {"fqdn": "*.cdn.example.net"}]}))
    assert result.ok and result.warnings == ()
    assert result.canonical == ('{"mode": "allowlist", "rules": [{"fqdn": "api.example.com", "port": 443, '
                                '"protocol": "TCP"}, {"fqdn": "*.cdn.example.net"}]}')


@pytest.mark.parametrize(("rules", "expected"), [
    ([{"fqdn": "a.example.com", "cidr": "10.0.0.0/8"}],
     ["rules[0]: has both cidr and fqdn; a rule names its destination by one of them"]),
    ([{"port": 443}], ["rules[0].cidr: is required"]),
    ([{"fqdn": 7}], ["rules[0].fqdn: must be a string, got 7"]),
    ([{"fqdn": "a.example.com", "port": "443", "ports": [1]}],
     ['rules[0].port: must be an integer, got "443"',
      "rules[0].ports: unknown field (a rule has: cidr or fqdn, port, end_port, protocol)"]),
    ([{"fqdn": "a.example.com", "end_port": 90}], ["rules[0].end_port: needs a port > 0 to start the range"]),
    ([{"fqdn": "a.example.com", "protocol": "ICMP"}], ['rules[0].protocol: "ICMP" is not a protocol (TCP, UDP or SCTP)']),
])
def test_fqdn_rule_mistakes_are_each_reported(rules: list[Any], expected: list[str]) -> None:
    assert list(parse_policy(json.dumps({"mode": "allowlist", "rules": rules})).errors) == expected


def test_a_denylist_cannot_name_hosts() -> None:
    result = parse_policy(json.dumps({"mode": "denylist", "rules": [{"cidr": "10.0.0.0/8"}, {"fqdn": "x.example.com"}]}))
    assert result.errors == ("rules[1].fqdn: a denylist cannot name a host by DNS name (names are enforced by allowing "
                             "what a lookup returns, never by denying it); use cidr",)


# --- what each backend refuses ---------------------------------------------------------------------

FQDN_POLICY = {"mode": "allowlist", "rules": [{"cidr": "10.0.0.0/8"}, {"fqdn": "API.example.com.", "port": 443}]}


def test_networkpolicy_backend_refuses_fqdn_rules_and_names_the_backends_that_can() -> None:
    assert backend_problems(_parsed(FQDN_POLICY), "networkpolicy") == [
        "rules[1].fqdn: the networkpolicy backend cannot enforce DNS names; FQDN rules need the clusternetworkpolicy "
        "or cilium backend (the operator's --backend)"]
    assert backend_problems(_parsed(FQDN_POLICY), "clusternetworkpolicy") == []
    assert backend_problems(_parsed(FQDN_POLICY), "cilium") == []


def test_clusternetworkpolicy_backend_refuses_more_port_sets_than_one_object_holds() -> None:
    fits = {"mode": "allowlist", "rules": [{"cidr": f"10.{i}.0.0/16", "port": 1000 + i} for i in range(21)]
            + [{"cidr": "10.99.0.0/16", "port": 1000}]}  # 22 rules, 21 port sets
    assert backend_problems(_parsed(fits), "clusternetworkpolicy") == []
    over = {"mode": "denylist", "rules": [{"cidr": f"10.{i}.0.0/16", "port": 1000 + i} for i in range(22)]}
    assert backend_problems(_parsed(over), "clusternetworkpolicy") == [
        "rules: 22 different port sets (port, end_port and protocol); the clusternetworkpolicy backend renders one "
        "rule per port set and a ClusterNetworkPolicy holds 25 rules, 4 of them DNS, the enforcement canary and the "
        "final rule: at most 21 port sets"]
    assert backend_problems(_parsed(over), "cilium") == [] and backend_problems(_parsed(over), "networkpolicy") == []


def test_port_sets() -> None:
    rules = _parsed({"mode": "allowlist", "rules": [
        {"cidr": "10.0.0.0/8"}, {"cidr": "10.0.0.0/8", "protocol": "udp"}, {"cidr": "10.0.0.0/8", "port": 53},
        {"cidr": "10.0.0.0/8", "port": 80, "end_port": 90, "protocol": "SCTP"}]}).rules
    assert [port_set(rule) for rule in rules] == [
        (), (("UDP", 0, 0),), (("TCP", 53, 53), ("UDP", 53, 53)), (("SCTP", 80, 90),)]


def _request(pod: dict[str, Any]) -> AdmissionRequest:
    return AdmissionRequest(uid="u1", kind="Pod", operation="CREATE", namespace="team-a", name=None, username="broker",
                            obj=pod, old_obj=None, dry_run=False)


def test_admission_refuses_fqdn_on_networkpolicy_and_admits_it_on_the_backends_that_enforce_names() -> None:
    refused = mutate_pod(_request(_pod(FQDN_POLICY)), backend="networkpolicy")
    assert not refused.allowed and refused.code == 422
    assert "rules[1].fqdn: the networkpolicy backend cannot enforce DNS names" in (refused.message or "")
    for backend in ("clusternetworkpolicy", "cilium"):
        admitted = mutate_pod(_request(_pod(FQDN_POLICY)), backend=backend)
        assert admitted.allowed, admitted.message
        canonical = '{"mode": "allowlist", "rules": [{"cidr": "10.0.0.0/8"}, {"fqdn": "api.example.com", "port": 443}]}'
        assert {"op": "replace", "path": "/metadata/annotations/sortie.io~1egress-policy", "value": canonical} in admitted.patch


def test_check_judges_like_admission_for_the_backend() -> None:
    session = session_pod(_pod(FQDN_POLICY))
    assert session is not None
    assert judge(session, backend="cilium")[1] == []
    assert len(judge(session, backend="networkpolicy")[1]) == 1


def test_controller_fails_an_fqdn_pod_closed_on_the_networkpolicy_backend() -> None:
    enforced = enforced_for(_pod(FQDN_POLICY))
    assert enforced.policy is not None and enforced.policy.rules == () and enforced.policy.mode == "allowlist"
    assert enforced.invalid_reason == (
        "invalid egress policy, enforcing DNS only: rules[1].fqdn: the networkpolicy backend cannot enforce DNS names; "
        "FQDN rules need the clusternetworkpolicy or cilium backend (the operator's --backend)")


def test_networkpolicy_renderer_refuses_fqdn_rules_instead_of_writing_none() -> None:
    session = session_pod(_pod(FQDN_POLICY))
    assert session is not None
    with pytest.raises(ValueError, match="FQDN rules need the clusternetworkpolicy or cilium backend"):
        render_network_policy(session, _parsed(FQDN_POLICY), DnsDestination())


# --- the ClusterNetworkPolicy ---------------------------------------------------------------------

_SUBJECT = {"pods": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "team-a"}},
                     "podSelector": {"matchLabels": {"sortie.io/session-id": "s-1"}, "matchExpressions": MODE_EXISTS}}}
_CLUSTER_DNS_RULE = {"name": "dns", "action": "Accept",
                     "to": [{"pods": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
                                      "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}}],
                     "protocols": [{"udp": {"destinationPort": {"number": 53}}}, {"tcp": {"destinationPort": {"number": 53}}}]}


def test_cluster_policy_for_an_allowlist_with_networks_names_and_ports() -> None:
    policy = _parsed({"mode": "allowlist", "rules": [
        {"cidr": "10.20.0.0/16", "port": 443, "protocol": "TCP"},
        {"fqdn": "api.example.com", "port": 443, "protocol": "TCP"},
        {"cidr": "2001:db8::/32", "port": 8000, "end_port": 8100},
        {"fqdn": "*.cdn.example.net", "protocol": "UDP"},
        {"cidr": "192.0.2.0/24"},
    ]})
    session = session_pod(_pod({"mode": "allowlist"}))
    assert session is not None
    rendered = render_cluster_network_policy(session, policy, DnsDestination())
    assert rendered == {
        "apiVersion": "policy.networking.k8s.io/v1beta1",
        "kind": "ClusterNetworkPolicy",
        "metadata": {"name": "sortie-egress.team-a.s-1",
                     "labels": {"sortie.io/session-id": "s-1", "sortie.io/session-namespace": "team-a",
                                "sortie.io/app-id": "firefox", "sortie.io/egress-policy": "true",
                                "app.kubernetes.io/managed-by": "sortie-egress"}},
        # The rules that name hosts come before the DNS rule (Cilium's DNS proxy must see the lookups).
        "spec": {"tier": "Admin", "priority": 500, "subject": _SUBJECT, "egress": [
            {"name": "allowlist-1", "action": "Accept",
             "to": [{"networks": ["10.20.0.0/16"]}, {"domainNames": ["api.example.com"]}],
             "protocols": [{"tcp": {"destinationPort": {"number": 443}}}]},
            {"name": "allowlist-3", "action": "Accept", "to": [{"domainNames": ["*.cdn.example.net"]}],
             "protocols": [{"udp": {"destinationPort": {"range": {"start": 1, "end": 65535}}}}]},
            _CLUSTER_DNS_RULE,
            {"name": "allowlist-2", "action": "Accept", "to": [{"networks": ["2001:db8::/32"]}],
             "protocols": [{"tcp": {"destinationPort": {"range": {"start": 8000, "end": 8100}}}},
                           {"udp": {"destinationPort": {"range": {"start": 8000, "end": 8100}}}}]},
            {"name": "allowlist-4", "action": "Accept", "to": [{"networks": ["192.0.2.0/24"]}]},
            {"name": "everything-else", "action": "Deny", "to": [{"networks": ["0.0.0.0/0", "::/0"]},
                                                               {"pods": {"namespaceSelector": {}, "podSelector": {}}}]},
        ]},
    }


def test_cluster_policy_that_names_hosts_keeps_the_canary_first() -> None:
    """No name can open the canary's closed port: its rules come before the naming ones."""
    policy = _parsed({"mode": "allowlist", "rules": [{"cidr": "10.0.0.0/8"}, {"fqdn": "api.example.com", "port": 443}]})
    session = session_pod(_pod({"mode": "allowlist"}))
    assert session is not None
    canary = Canary(namespace="sortie-system", pod_labels=(("app", "canary"),), open_port=9445)
    egress = render_cluster_network_policy(session, policy, DnsDestination(), canary)["spec"]["egress"]
    assert [rule["name"] for rule in egress] == ["enforcement-canary-open", "enforcement-canary-rest", "allowlist-2", "dns",
                                                 "allowlist-1", "everything-else"]


def test_cluster_policy_for_a_denylist_honours_ports_and_accepts_the_rest() -> None:
    policy = _parsed({"mode": "denylist", "rules": [
        {"cidr": "10.0.0.0/8", "port": 22, "protocol": "TCP"}, {"cidr": "169.254.169.254"}, {"cidr": "fd00::/8"}]})
    session = session_pod(_pod({"mode": "denylist"}))
    assert session is not None
    egress = render_cluster_network_policy(session, policy, DnsDestination.parse("cluster,169.254.20.10"),
                                           version="v1alpha2", priority=7)
    assert egress["apiVersion"] == "policy.networking.k8s.io/v1alpha2" and egress["spec"]["priority"] == 7
    assert egress["spec"]["egress"] == [
        {**_CLUSTER_DNS_RULE, "to": [*_CLUSTER_DNS_RULE["to"], {"networks": ["169.254.20.10/32"]}]},
        {"name": "denylist-1", "action": "Deny", "to": [{"networks": ["10.0.0.0/8"]}],
         "protocols": [{"tcp": {"destinationPort": {"number": 22}}}]},
        {"name": "denylist-2", "action": "Deny", "to": [{"networks": ["169.254.169.254/32", "fd00::/8"]}]},
        {"name": "everything-else", "action": "Accept", "to": [{"networks": ["0.0.0.0/0", "::/0"]}]},
    ]


def test_cluster_policy_dns_any_canary_and_peer_chunks() -> None:
    policy = _parsed({"mode": "allowlist", "rules": [{"cidr": f"10.{i}.0.0/16"} for i in range(30)]})
    session = session_pod(_pod({"mode": "allowlist"}))
    assert session is not None
    canary = Canary(namespace="sortie-system", pod_labels=(("app", "sortie-egress-canary"),), open_port=9445)
    egress = render_cluster_network_policy(session, policy, DnsDestination.parse("any"), canary)["spec"]["egress"]
    canary_pods = [{"pods": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "sortie-system"}},
                             "podSelector": {"matchLabels": {"app": "sortie-egress-canary"}}}}]
    assert egress == [
        {**_CLUSTER_DNS_RULE, "to": [{"networks": ["0.0.0.0/0", "::/0"]}]},
        {"name": "enforcement-canary-open", "action": "Accept", "to": canary_pods,
         "protocols": [{"tcp": {"destinationPort": {"number": 9445}}}]},
        {"name": "enforcement-canary-rest", "action": "Deny", "to": canary_pods},
        {"name": "allowlist-1", "action": "Accept",
         "to": [{"networks": [f"10.{i}.0.0/16" for i in range(25)]}, {"networks": [f"10.{i}.0.0/16" for i in range(25, 30)]}]},
        {"name": "everything-else", "action": "Deny", "to": [{"networks": ["0.0.0.0/0", "::/0"]},
                                                               {"pods": {"namespaceSelector": {}, "podSelector": {}}}]},
    ]


def test_cluster_policy_names_do_not_collide_across_namespaces() -> None:
    assert cluster_policy_name("a", "b-c") == "sortie-egress.a.b-c"
    assert cluster_policy_name("a-b", "c") != cluster_policy_name("a", "b-c")


# --- the CiliumNetworkPolicy ----------------------------------------------------------------------

_CILIUM_DNS = {"toEndpoints": [{"matchLabels": {"k8s:io.kubernetes.pod.namespace": "kube-system", "k8s:k8s-app": "kube-dns"}}],
               "toPorts": [{"ports": [{"port": "53", "protocol": "UDP"}, {"port": "53", "protocol": "TCP"}]}]}
#: Every TCP, UDP and SCTP port but 53 of TCP and UDP, as Cilium deny ports.
ALL_BUT_53 = [{"ports": [{"port": "1", "endPort": 52, "protocol": "TCP"}, {"port": "54", "endPort": 65535, "protocol": "TCP"},
                         {"port": "1", "endPort": 52, "protocol": "UDP"}, {"port": "54", "endPort": 65535, "protocol": "UDP"},
                         {"port": "0", "protocol": "SCTP"}]}]
NAMESPACE = "k8s:io.kubernetes.pod.namespace"
#: An allowlist's deny of the cluster's own pods with cluster DNS and no canary: CoreDNS on every
#: port but 53; every other pod, written as "not in kube-system" or "in kube-system, not CoreDNS".
CLUSTER_PODS_DENY = [
    {"toEndpoints": [{"matchLabels": {NAMESPACE: "kube-system", "k8s:k8s-app": "kube-dns"}}], "toPorts": ALL_BUT_53},
    {"toEndpoints": [{"matchExpressions": [{"key": NAMESPACE, "operator": "NotIn", "values": ["kube-system"]}]},
                     {"matchLabels": {NAMESPACE: "kube-system"},
                      "matchExpressions": [{"key": "k8s:k8s-app", "operator": "NotIn", "values": ["kube-dns"]}]}]},
]


def test_cilium_policy_for_an_allowlist_with_names() -> None:
    policy = _parsed({"mode": "allowlist", "rules": [
        {"cidr": "10.20.0.0/16", "port": 443, "protocol": "TCP"}, {"fqdn": "api.example.com", "port": 443, "protocol": "TCP"},
        {"fqdn": "*.example.org"}, {"cidr": "192.0.2.0/24", "port": 5000, "end_port": 5010, "protocol": "UDP"}]})
    session = session_pod(_pod({"mode": "allowlist"}))
    assert session is not None
    proxied_dns = {**_CILIUM_DNS, "toPorts": [{**_CILIUM_DNS["toPorts"][0], "rules": {"dns": [{"matchPattern": "*"}]}}]}
    assert render_cilium_network_policy(session, policy, DnsDestination()) == {
        "apiVersion": "cilium.io/v2",
        "kind": "CiliumNetworkPolicy",
        "metadata": {"name": "sortie-egress-s-1", "namespace": "team-a",
                     "labels": {"sortie.io/session-id": "s-1", "sortie.io/app-id": "firefox",
                                "sortie.io/egress-policy": "true", "app.kubernetes.io/managed-by": "sortie-egress"},
                     "ownerReferences": [{"apiVersion": "v1", "kind": "Pod", "name": "desk-1", "uid": "uid-1",
                                          "controller": True, "blockOwnerDeletion": True}]},
        "spec": {"endpointSelector": {"matchLabels": {"sortie.io/session-id": "s-1"}, "matchExpressions": MODE_EXISTS}, "egress": [
            proxied_dns,
            {"toCIDRSet": [{"cidr": "10.20.0.0/16"}], "toPorts": [{"ports": [{"port": "443", "protocol": "TCP"}]}]},
            {"toFQDNs": [{"matchName": "api.example.com"}], "toPorts": [{"ports": [{"port": "443", "protocol": "TCP"}]}]},
            {"toFQDNs": [{"matchPattern": "**.example.org"}]},
            {"toCIDRSet": [{"cidr": "192.0.2.0/24"}],
             "toPorts": [{"ports": [{"port": "5000", "endPort": 5010, "protocol": "UDP"}]}]},
        ], "egressDeny": CLUSTER_PODS_DENY},
    }


def test_cilium_policy_for_a_denylist_denies_with_ports_and_keeps_the_named_resolvers() -> None:
    policy = _parsed({"mode": "denylist", "rules": [
        {"cidr": "10.0.0.0/8", "port": 22, "protocol": "TCP"}, {"cidr": "169.254.0.0/16"}, {"cidr": "::/0", "protocol": "UDP"}]})
    session = session_pod(_pod({"mode": "denylist"}))
    assert session is not None
    canary = Canary(namespace="sortie-system", pod_labels=(("app", "canary"),), open_port=9445)
    spec = render_cilium_network_policy(session, policy, DnsDestination.parse("cluster,169.254.20.10"), canary)["spec"]
    assert spec["egress"] == [
        _CILIUM_DNS,
        {"toCIDRSet": [{"cidr": "169.254.20.10/32"}], "toPorts": _CILIUM_DNS["toPorts"]},
        {"toEndpoints": [{"matchLabels": {"k8s:io.kubernetes.pod.namespace": "sortie-system", "k8s:app": "canary"}}],
         "toPorts": [{"ports": [{"port": "9445", "protocol": "TCP"}]}]},
        {"toCIDRSet": [{"cidr": "0.0.0.0/0"}, {"cidr": "::/0"}]},
    ]
    assert spec["egressDeny"] == [
        # The canary but its open port: its closed port is blocked by this policy, whatever others allow.
        {"toEndpoints": [{"matchLabels": {"k8s:io.kubernetes.pod.namespace": "sortie-system", "k8s:app": "canary"}}],
         "toPorts": [{"ports": [{"port": "1", "endPort": 9444, "protocol": "TCP"}, {"port": "9446", "endPort": 65535, "protocol": "TCP"},
                                {"port": "0", "protocol": "UDP"}, {"port": "0", "protocol": "SCTP"}]}]},
        {"toCIDRSet": [{"cidr": "10.0.0.0/8"}], "toPorts": [{"ports": [{"port": "22", "protocol": "TCP"}]}]},
        {"toCIDRSet": [{"cidr": "169.254.0.0/16", "except": ["169.254.20.10/32"]}]},
        {"toCIDRSet": [{"cidr": "::/0"}], "toPorts": [{"ports": [{"port": "0", "protocol": "UDP"}]}]},
    ]


def test_cilium_dns_any_is_port_53_to_every_destination() -> None:
    session = session_pod(_pod({"mode": "allowlist"}))
    assert session is not None
    spec = render_cilium_network_policy(session, _parsed({"mode": "allowlist"}), DnsDestination.parse("any"))["spec"]
    assert spec == {"endpointSelector": {"matchLabels": {"sortie.io/session-id": "s-1"}, "matchExpressions": MODE_EXISTS},
                    "egress": [{"toPorts": _CILIUM_DNS["toPorts"]}],
                    # An empty allowlist: every pod of the cluster, and everything outside it, but port 53.
                    "egressDeny": [{"toEndpoints": [{"matchExpressions": [{"key": NAMESPACE, "operator": "Exists"}]}],
                                    "toPorts": ALL_BUT_53},
                                   {"toCIDRSet": [{"cidr": "0.0.0.0/0"}], "toPorts": ALL_BUT_53},
                                   {"toCIDRSet": [{"cidr": "::/0"}], "toPorts": ALL_BUT_53}]}


def test_cilium_allowlist_of_networks_denies_everything_else_outside_the_cluster() -> None:
    """No other policy can widen it: what the allows leave closed is denied, region by region."""
    policy = _parsed({"mode": "allowlist", "rules": [
        {"cidr": "10.0.0.0/8", "port": 443, "protocol": "TCP"}, {"cidr": "10.1.0.0/16", "port": 8000, "end_port": 8080},
        {"cidr": "192.0.2.7/32"}]})
    session = session_pod(_pod({"mode": "allowlist"}))
    assert session is not None
    canary = Canary(namespace="sortie-system", pod_labels=(("app", "canary"),), open_port=1)
    spec = render_cilium_network_policy(session, policy, DnsDestination.parse("cluster,169.254.20.10"), canary)["spec"]
    canary_pods = [{"matchLabels": {"k8s:io.kubernetes.pod.namespace": "sortie-system", "k8s:app": "canary"}}]
    assert spec["egress"] == [
        _CILIUM_DNS,
        {"toCIDRSet": [{"cidr": "169.254.20.10/32"}], "toPorts": _CILIUM_DNS["toPorts"]},
        {"toEndpoints": canary_pods, "toPorts": [{"ports": [{"port": "1", "protocol": "TCP"}]}]},
        {"toCIDRSet": [{"cidr": "10.0.0.0/8"}], "toPorts": [{"ports": [{"port": "443", "protocol": "TCP"}]}]},
        {"toCIDRSet": [{"cidr": "10.1.0.0/16"}], "toPorts": [{"ports": [{"port": "8000", "endPort": 8080, "protocol": "TCP"},
                                                                       {"port": "8000", "endPort": 8080, "protocol": "UDP"}]}]},
        {"toCIDRSet": [{"cidr": "192.0.2.7/32"}]},
    ]
    assert spec["egressDeny"] == [
        # The canary but its open port (port 1: the TCP range below it is empty).
        {"toEndpoints": canary_pods, "toPorts": [{"ports": [{"port": "2", "endPort": 65535, "protocol": "TCP"},
                                                            {"port": "0", "protocol": "UDP"}, {"port": "0", "protocol": "SCTP"}]}]},
        # The cluster's pods: CoreDNS but port 53; all others but the canary's (its own rule above).
        CLUSTER_PODS_DENY[0],
        {"toEndpoints": [
            {"matchExpressions": [{"key": NAMESPACE, "operator": "NotIn", "values": ["kube-system", "sortie-system"]}]},
            {"matchLabels": {NAMESPACE: "kube-system"},
             "matchExpressions": [{"key": "k8s:k8s-app", "operator": "NotIn", "values": ["kube-dns"]}]},
            {"matchLabels": {NAMESPACE: "sortie-system"},
             "matchExpressions": [{"key": "k8s:app", "operator": "NotIn", "values": ["canary"]}]}]},
        # Everywhere else: everything (the named resolver's own region keeps port 53 below).
        {"toCIDRSet": [{"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8", "169.254.20.10/32", "192.0.2.7/32"]}]},
        # 10/8 but 10.1/16: TCP 443 only.
        {"toCIDRSet": [{"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}],
         "toPorts": [{"ports": [{"port": "1", "endPort": 442, "protocol": "TCP"}, {"port": "444", "endPort": 65535, "protocol": "TCP"},
                                {"port": "0", "protocol": "UDP"}, {"port": "0", "protocol": "SCTP"}]}]},
        # 10.1/16 inherits 10/8's TCP 443 and adds 8000-8080 TCP and UDP.
        {"toCIDRSet": [{"cidr": "10.1.0.0/16"}],
         "toPorts": [{"ports": [{"port": "1", "endPort": 442, "protocol": "TCP"}, {"port": "444", "endPort": 7999, "protocol": "TCP"},
                                {"port": "8081", "endPort": 65535, "protocol": "TCP"}, {"port": "1", "endPort": 7999, "protocol": "UDP"},
                                {"port": "8081", "endPort": 65535, "protocol": "UDP"}, {"port": "0", "protocol": "SCTP"}]}]},
        {"toCIDRSet": [{"cidr": "169.254.20.10/32"}],
         "toPorts": [{"ports": [{"port": "1", "endPort": 52, "protocol": "TCP"}, {"port": "54", "endPort": 65535, "protocol": "TCP"},
                                {"port": "1", "endPort": 52, "protocol": "UDP"}, {"port": "54", "endPort": 65535, "protocol": "UDP"},
                                {"port": "0", "protocol": "SCTP"}]}]},
        # 192.0.2.7 is open to all traffic: nothing to deny there. IPv6: nothing allowed.
        {"toCIDRSet": [{"cidr": "::/0"}]},
    ]


def test_cilium_allowlist_that_names_hosts_denies_only_the_clusters_pods() -> None:
    """A deny of the rest outside the cluster would also close what the names resolve to: left to
    the allows (and reported); the cluster's own pods are denied all the same."""
    policy = _parsed({"mode": "allowlist", "rules": [{"cidr": "10.0.0.0/8"}, {"fqdn": "api.example.com", "port": 443}]})
    session = session_pod(_pod({"mode": "allowlist"}))
    assert session is not None
    assert render_cilium_network_policy(session, policy, DnsDestination())["spec"]["egressDeny"] == CLUSTER_PODS_DENY


def test_cilium_canary_pods_sharing_a_namespace_with_dns_are_excepted_label_by_label() -> None:
    """Two exempt groups in one namespace: a pod is denied when it is neither (for each group, one
    of its labels differs), spelled as one selector per choice of labels."""
    session = session_pod(_pod({"mode": "allowlist"}))
    assert session is not None
    canary = Canary(namespace="kube-system", pod_labels=(("app", "canary"), ("tier", "x")), open_port=9445)
    deny = render_cilium_network_policy(session, _parsed({"mode": "allowlist", "rules": []}), DnsDestination(), canary)
    assert deny["spec"]["egressDeny"][2] == {"toEndpoints": [
        {"matchExpressions": [{"key": NAMESPACE, "operator": "NotIn", "values": ["kube-system"]}]},
        {"matchLabels": {NAMESPACE: "kube-system"}, "matchExpressions": [
            {"key": "k8s:k8s-app", "operator": "NotIn", "values": ["kube-dns"]},
            {"key": "k8s:app", "operator": "NotIn", "values": ["canary"]}]},
        {"matchLabels": {NAMESPACE: "kube-system"}, "matchExpressions": [
            {"key": "k8s:k8s-app", "operator": "NotIn", "values": ["kube-dns"]},
            {"key": "k8s:tier", "operator": "NotIn", "values": ["x"]}]}]}


def test_cilium_deny_ports_are_chunked_by_forty() -> None:
    rules = [{"cidr": "10.0.0.0/8", "port": port, "protocol": "TCP"} for port in range(100, 4100, 100)]  # 40 holes -> 41 ranges
    session = session_pod(_pod({"mode": "allowlist"}))
    assert session is not None
    deny = render_cilium_network_policy(session, _parsed({"mode": "allowlist", "rules": rules}), DnsDestination())["spec"]["egressDeny"]
    ten = [rule for rule in deny if "toCIDRSet" in rule and rule["toCIDRSet"][0]["cidr"] == "10.0.0.0/8"]
    assert [len(entry["ports"]) for entry in ten[0]["toPorts"]] == [40, 3]  # 41 TCP ranges, UDP, SCTP
    assert ten[0]["toPorts"][0]["ports"][:2] == [{"port": "1", "endPort": 99, "protocol": "TCP"},
                                                 {"port": "101", "endPort": 199, "protocol": "TCP"}]
    assert ten[0]["toPorts"][1]["ports"] == [{"port": "4001", "endPort": 65535, "protocol": "TCP"},
                                             {"port": "0", "protocol": "UDP"}, {"port": "0", "protocol": "SCTP"}]


# --- how the controller files cluster-scoped session policies ---------------------------------

def test_cluster_policies_are_filed_under_their_sessions_namespace() -> None:
    from sortie_egress.controller.reconciler import Reconciler
    from sortie_egress.kube.policy_objects import project_cluster_policy

    ours = {"metadata": {"name": "sortie-egress.team-a.s-1", "uid": "u",
                         "labels": {"sortie.io/session-id": "s-1", "sortie.io/session-namespace": "team-a",
                                    "app.kubernetes.io/managed-by": "sortie-egress"}},
            "spec": {"tier": "Admin"}}
    squatter = {"metadata": {"name": "sortie-egress.team-b.s.with.dots", "uid": "v"}, "spec": {}}
    stranger = {"metadata": {"name": "allow-dns", "uid": "w"}, "spec": {}}
    assert project_cluster_policy(ours)["metadata"]["namespace"] == "team-a"
    assert project_cluster_policy(squatter)["metadata"]["namespace"] == "team-b"
    assert project_cluster_policy(stranger)["metadata"]["namespace"] == ""
    assert Reconciler.key_for(project_cluster_policy(ours)) == ("team-a", "s-1")
    assert Reconciler.key_for(project_cluster_policy(squatter)) == ("team-b", "s.with.dots")
    assert Reconciler.key_for(project_cluster_policy(stranger)) is None
