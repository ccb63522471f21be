"""explain's pure parts: the destination grammar, and verdicts on views built by hand.

Every expectation is written out here from the semantics (NetworkPolicy's union of allows,
Cilium's deny-first and CIDRs that reach only outside the cluster, network-policy-api's tiers);
the node matrix then checks the same code against packets (tests/node_matrix.py)."""

from __future__ import annotations

from typing import Any

import pytest

from sortie_egress.explain.asked import parse_destination, read_destinations
from sortie_egress.explain.decide import judge, selecting
from sortie_egress.explain.report import as_data, as_table, explain
from sortie_egress.explain.view import ExplainView, Unresolvable, packets

SESSION_LABELS = {"sortie.io/session-id": "s1", "sortie.io/egress-mode": "allowlist"}


def _pod(name: str = "app", namespace: str = "team", labels: dict[str, str] | None = None, ip: str = "10.0.0.5",
         node: str = "node-1", phase: str = "Running", ports: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"kind": "Pod", "metadata": {"name": name, "namespace": namespace, "labels": dict(SESSION_LABELS if labels is None else labels)},
            "spec": {"nodeName": node, "containers": [{"name": "c", "ports": ports or []}]},
            "status": {"phase": phase, "podIP": ip, "podIPs": [{"ip": ip}]}}


def _np(name: str, egress: list[dict[str, Any]], selector: dict[str, Any] | None = None,
        namespace: str = "team") -> dict[str, Any]:
    return {"kind": "NetworkPolicy", "metadata": {"name": name, "namespace": namespace},
            "spec": {"podSelector": selector or {}, "policyTypes": ["Egress"], "egress": egress}}


NODE = {"metadata": {"name": "node-1", "labels": {"kubernetes.io/hostname": "node-1"}},
        "status": {"addresses": [{"type": "InternalIP", "address": "192.0.2.10"}]}}
DNS_POD = _pod("coredns-1", "kube-system", {"k8s-app": "kube-dns"}, "10.0.9.9",
               ports=[{"name": "dns", "containerPort": 53, "protocol": "UDP"}])
DNS_SERVICE = {"metadata": {"name": "kube-dns", "namespace": "kube-system"},
               "spec": {"clusterIP": "10.96.0.10", "selector": {"k8s-app": "kube-dns"},
                        "ports": [{"port": 53, "protocol": "UDP", "targetPort": "dns"}]}}
NAMESPACES = {"team": {"kubernetes.io/metadata.name": "team"}, "kube-system": {"kubernetes.io/metadata.name": "kube-system"},
              "other": {"kubernetes.io/metadata.name": "other", "tier": "backend"}}
ALLOW_443 = _np("sortie-egress-s1", [{"to": [{"ipBlock": {"cidr": "198.51.100.0/24"}}], "ports": [{"protocol": "TCP", "port": 443}]},
                                     {"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
                                              "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}],
                                      "ports": [{"protocol": "UDP", "port": 53}]}],
                {"matchLabels": {"sortie.io/session-id": "s1"}})


def _view(*, dataplane: str = "networkpolicy", nps: list[dict[str, Any]] = (), cilium: list[dict[str, Any]] = (),
          cluster: list[dict[str, Any]] = (), pods: list[dict[str, Any]] = (), pod: dict[str, Any] | None = None,
          services: list[dict[str, Any]] = ()) -> ExplainView:
    return ExplainView(pod or _pod(), dataplane, NAMESPACES, list(nps), list(cilium), list(cluster),
                       [DNS_POD, *pods], [DNS_SERVICE, *services], [NODE], session_object=("NetworkPolicy", "sortie-egress-s1"))


def _verdict(view: ExplainView, destination: str) -> tuple[str, list[str]]:
    found, _ = packets(view, parse_destination(destination))
    results = [judge(view, packet) for packet in found]
    assert len({r.verdict for r in results}) == 1, results
    return results[0].verdict, [said.describe() for said in results[0].deciding]


# --- the grammar -----------------------------------------------------------------------------

@pytest.mark.parametrize("text, where, host, port, protocol, namespace", [
    ("198.51.100.7:443", "address", "198.51.100.7", 443, "TCP", None),
    ("198.51.100.7:53/UDP", "address", "198.51.100.7", 53, "UDP", None),
    ("[2001:db8::1]:443", "address", "2001:db8::1", 443, "TCP", None),
    ("2001:db8::1/icmp", "address", "2001:db8::1", None, "ICMP", None),
    ("Example.COM.:443", "name", "example.com", 443, "TCP", None),
    ("pod/other/web:8080", "pod", "web", 8080, "TCP", "other"),
    ("po/web:8080/sctp", "pod", "web", 8080, "SCTP", None),
    ("svc/kube-system/kube-dns:53/udp", "service", "kube-dns", 53, "UDP", "kube-system"),
    ("node/node-1:10250", "node", "node-1", 10250, "TCP", None),
    ("dns", "service", "kube-dns", 53, "UDP", "kube-system"),
    ("dns/tcp", "service", "kube-dns", 53, "TCP", "kube-system"),
])
def test_destinations_parse(text: str, where: str, host: str, port: int | None, protocol: str, namespace: str | None) -> None:
    asked = parse_destination(text)
    assert (asked.where, asked.host, asked.port, asked.protocol, asked.namespace) == (where, host, port, protocol, namespace)


@pytest.mark.parametrize("text, message", [
    ("198.51.100.7", "which port? Add :PORT"),
    ("10.0.0.0/8:443", "one address, not a network"),
    ("198.51.100.7:0", "port 0 is out of range"),
    ("198.51.100.7:http", "the port must be a number"),
    ("198.51.100.7:80/gre", "unknown protocol 'gre'"),
    ("198.51.100.7:80/icmp", "ICMP has no ports"),
    ("pod/a/b/c:80", "say pod/[NAMESPACE/]NAME"),
    ("node/a/b:80", "say node/NAME"),
    ("under_score:80", "neither an address nor a host name"),
    ("[2001:db8::1:443", "closing ]"),
    ("", "an empty destination"),
])
def test_bad_destinations_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]").replace("?", r"\?")):
        parse_destination(text)


def test_a_destination_file_names_every_bad_line_at_once() -> None:
    with pytest.raises(ValueError) as caught:
        read_destinations(["# reach of app x", "198.51.100.7:443", "", "1.2.3.4", "dns  # lookups", "x_y:1"])
    assert str(caught.value).startswith("line 4: '1.2.3.4': which port?") and "line 6: 'x_y:1'" in str(caught.value)
    assert [a.text for a in read_destinations(["198.51.100.7:443  # web", "dns"])] == ["198.51.100.7:443", "dns"]
    with pytest.raises(ValueError, match="no destination in the file"):
        read_destinations(["# nothing", ""])


# --- NetworkPolicy: a union of allows -----------------------------------------------------------

def test_no_policy_selecting_the_pod_means_the_cluster_default() -> None:
    verdict, by = _verdict(_view(nps=[_np("elsewhere", [], {"matchLabels": {"app": "db"}})]), "198.51.100.7:443")
    assert (verdict, by) == ("allowed", [])


def test_the_sessions_own_policy_allows_and_isolates() -> None:
    view = _view(nps=[ALLOW_443])
    assert _verdict(view, "198.51.100.7:443") == ("allowed", ["NetworkPolicy team/sortie-egress-s1 egress[0] allows (the session's own)"])
    assert _verdict(view, "198.51.100.7:80") == ("denied", ["NetworkPolicy team/sortie-egress-s1 selects the pod (the session's own)"])
    assert _verdict(view, "198.51.100.7:443/udp")[0] == "denied"
    assert _verdict(view, "198.51.100.7/icmp")[0] == "denied"


def test_dns_goes_through_the_service_to_the_resolver_pods_named_port() -> None:
    view = _view(nps=[ALLOW_443])
    found, _ = packets(view, parse_destination("dns"))
    assert [(p.endpoint.name, p.port, p.via) for p in found] == [("coredns-1", 53, "Service kube-system/kube-dns port 53")]
    assert _verdict(view, "dns") == ("allowed", ["NetworkPolicy team/sortie-egress-s1 egress[1] allows (the session's own)"])
    assert _verdict(view, "10.96.0.10:53/udp")[0] == "allowed"  # the ClusterIP is the Service too
    answer = explain(view, [parse_destination("dns/tcp")])  # TCP 53 is not a port of this Service
    assert answer.answers[0].verdict == "unreachable" and "has no port 53/TCP (it has 53/UDP)" in answer.answers[0].notes[0]


def test_another_policy_widens_a_session_and_both_rules_are_named() -> None:
    view = _view(nps=[ALLOW_443, _np("allow-all", [{}])])
    assert _verdict(view, "198.51.100.7:443") == ("allowed", [
        "NetworkPolicy team/sortie-egress-s1 egress[0] allows (the session's own)", "NetworkPolicy team/allow-all egress[0] allows"])
    assert _verdict(view, "203.0.113.1:22") == ("allowed", ["NetworkPolicy team/allow-all egress[0] allows"])


def test_an_ipblock_matches_a_pod_address_by_address_but_not_on_cilium() -> None:
    inside = _pod("web", "other", {"app": "web"}, "198.51.100.20")
    allow_block = _np("sortie-egress-s1", [{"to": [{"ipBlock": {"cidr": "198.51.100.0/24", "except": ["198.51.100.128/25"]}}]}])
    assert _verdict(_view(nps=[allow_block], pods=[inside]), "198.51.100.20:8080")[0] == "allowed"
    assert _verdict(_view(nps=[allow_block], pods=[inside], dataplane="cilium"), "198.51.100.20:8080")[0] == "denied"
    assert _verdict(_view(nps=[allow_block]), "198.51.100.200:80")[0] == "denied"  # the except


def test_a_node_is_an_address_to_a_networkpolicy_dataplane_and_an_identity_to_cilium() -> None:
    everywhere = _np("sortie-egress-s1", [{"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}]}])
    assert _verdict(_view(nps=[everywhere]), "node/node-1:10250")[0] == "allowed"
    assert _verdict(_view(nps=[everywhere]), "192.0.2.10:10250")[0] == "allowed"
    assert _verdict(_view(nps=[everywhere], dataplane="cilium"), "node/node-1:10250")[0] == "denied"


def test_selector_peers_match_pods_by_namespace_and_labels() -> None:
    web = _pod("web", "other", {"app": "web"}, "10.0.3.3", ports=[{"name": "http", "containerPort": 8080}])
    policy = _np("p", [{"to": [{"namespaceSelector": {"matchLabels": {"tier": "backend"}}, "podSelector": {"matchLabels": {"app": "web"}}}],
                        "ports": [{"port": "http"}]}])
    view = _view(nps=[policy], pods=[web])
    assert _verdict(view, "pod/other/web:8080")[0] == "allowed"  # the named port is the pod's 8080
    assert _verdict(view, "pod/other/web:8081")[0] == "denied"
    same_namespace_only = _np("p", [{"to": [{"podSelector": {"matchLabels": {"app": "web"}}}]}])
    assert _verdict(_view(nps=[same_namespace_only], pods=[web]), "pod/other/web:8080")[0] == "denied"


def test_a_service_with_endpoints_that_differ_is_mixed() -> None:
    a, b = _pod("web-a", "other", {"app": "web", "v": "1"}, "10.0.3.1"), _pod("web-b", "other", {"app": "web", "v": "2"}, "10.0.3.2")
    service = {"metadata": {"name": "web", "namespace": "other"},
               "spec": {"clusterIP": "10.96.3.3", "selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]}}
    policy = _np("p", [{"to": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"v": "1"}}}], "ports": [{"port": 8080}]}])
    answer = explain(_view(nps=[policy], pods=[a, b], services=[service]), [parse_destination("svc/other/web:80")]).answers[0]
    assert answer.verdict == "mixed"
    assert [(p.packet.endpoint.name, p.packet.port, p.verdict) for p in answer.packets] == [
        ("web-a", 8080, "allowed"), ("web-b", 8080, "denied")]


def test_an_absent_object_is_an_error_not_a_verdict() -> None:
    with pytest.raises(Unresolvable, match="no pod team/ghost"):
        packets(_view(), parse_destination("pod/ghost:80"))
    answer = explain(_view(), [parse_destination("node/nope:1"), parse_destination("svc/none:1")])
    assert [(a.verdict, a.notes) for a in answer.answers] == [("error", ("no node nope",)), ("error", ("no Service team/none",))]


# --- Cilium: deny first, identities ---------------------------------------------------------------

def _cnp(name: str, spec: dict[str, Any], kind: str = "CiliumNetworkPolicy", namespace: str | None = "team") -> dict[str, Any]:
    metadata = {"name": name, **({"namespace": namespace} if namespace else {})}
    return {"kind": kind, "metadata": metadata, "spec": spec}


def test_a_cilium_deny_wins_over_an_allow_all_networkpolicy() -> None:
    session = _cnp("sortie-egress-s1", {"endpointSelector": {"matchLabels": {"sortie.io/session-id": "s1"}},
                                        "egress": [{"toCIDR": ["198.51.100.0/24"], "toPorts": [{"ports": [{"port": "443", "protocol": "TCP"}]}]}],
                                        "egressDeny": [{"toCIDRSet": [{"cidr": "0.0.0.0/0", "except": ["198.51.100.0/24"]}]}]})
    view = _view(dataplane="cilium", nps=[_np("allow-all", [{}])], cilium=[session])
    assert _verdict(view, "203.0.113.1:443") == ("denied", ["CiliumNetworkPolicy team/sortie-egress-s1 egressDeny[0] denies"])
    assert _verdict(view, "198.51.100.7:80") == ("allowed", ["NetworkPolicy team/allow-all egress[0] allows"])
    # Not Cilium: its kinds are not enforced, only the NetworkPolicy is.
    assert _verdict(_view(nps=[_np("allow-all", [{}])], cilium=[session]), "203.0.113.1:443")[0] == "allowed"


def test_the_node_guard_denies_the_node_without_isolating_the_pod() -> None:
    guard = _cnp("sortie-egress-node-guard", {"endpointSelector": {"matchLabels": {"k8s:sortie.io/egress-mode": "allowlist"}},
                                              "egressDeny": [{"toEntities": ["host", "remote-node", "health"]}],
                                              "enableDefaultDeny": {"egress": False, "ingress": False}},
                 "CiliumClusterwideNetworkPolicy", None)
    view = _view(dataplane="cilium", cilium=[guard])
    assert _verdict(view, "node/node-1:10250") == ("denied", [
        "CiliumClusterwideNetworkPolicy sortie-egress-node-guard egressDeny[0] denies (the node guard)"])
    assert _verdict(view, "203.0.113.1:443")[0] == "allowed"  # the guard only takes away
    assert [s.describe() for s in selecting(view)] == [
        "CiliumClusterwideNetworkPolicy sortie-egress-node-guard (does not isolate, the node guard)"]


def test_cilium_endpoint_selectors_stay_in_a_namespaced_policys_namespace() -> None:
    here, there = _pod("db", "team", {"app": "db"}, "10.0.4.4"), _pod("db", "other", {"app": "db"}, "10.0.4.5")
    policy = _cnp("p", {"endpointSelector": {}, "egress": [{"toEndpoints": [{"matchLabels": {"app": "db"}}]}]})
    view = _view(dataplane="cilium", cilium=[policy], pods=[here, there])
    assert _verdict(view, "pod/team/db:5432")[0] == "allowed"
    assert _verdict(view, "pod/other/db:5432")[0] == "denied"
    everywhere = _cnp("p", {"endpointSelector": {}, "egress": [{"toEndpoints": [
        {"matchExpressions": [{"key": "k8s:io.kubernetes.pod.namespace", "operator": "Exists"}]}]}]})
    view = _view(dataplane="cilium", cilium=[everywhere], pods=[here, there])
    assert _verdict(view, "pod/other/db:5432")[0] == "allowed"
    assert _verdict(view, "node/node-1:22")[0] == "denied"  # a pod selector never matches a node


@pytest.mark.parametrize("entity, node, world, pod", [
    ("all", "allowed", "allowed", "allowed"), ("world", "denied", "allowed", "denied"),
    ("cluster", "allowed", "denied", "allowed"), ("host", "allowed", "denied", "denied"),
    ("remote-node", "denied", "denied", "denied"),
])
def test_cilium_entities(entity: str, node: str, world: str, pod: str) -> None:
    other = _pod("web", "other", {"app": "web"}, "10.0.3.3")
    view = _view(dataplane="cilium", pods=[other], cilium=[_cnp("p", {"endpointSelector": {}, "egress": [{"toEntities": [entity]}]})])
    assert (_verdict(view, "node/node-1:22")[0], _verdict(view, "203.0.113.9:22")[0], _verdict(view, "pod/other/web:80")[0]) == (
        node, world, pod)


def test_a_name_is_allowed_by_a_name_rule_and_unknown_to_address_rules() -> None:
    by_name = _cnp("sortie-egress-s1", {"endpointSelector": {}, "egress": [
        {"toFQDNs": [{"matchPattern": "**.example.com"}], "toPorts": [{"ports": [{"port": "443", "protocol": "TCP"}]}]}]})
    view = _view(dataplane="cilium", cilium=[by_name])
    assert _verdict(view, "api.eu.example.com:443")[0] == "allowed"
    assert _verdict(view, "example.com:443")[0] == "denied"  # ** needs at least one label before
    assert _verdict(view, "api.example.com:80")[0] == "denied"
    by_address = _view(nps=[ALLOW_443])
    answer = explain(by_address, [parse_destination("example.org:443")]).answers[0]
    assert answer.verdict == "unknown" and "its addresses are known only once resolved" in answer.notes[-1]
    assert [s.describe() for s in answer.packets[0].uncertain] == ["NetworkPolicy team/sortie-egress-s1 egress[0] may allow (the session's own)"]


# --- ClusterNetworkPolicy: tiers, priorities, Pass ----------------------------------------------

def _cluster(name: str, priority: int, rules: list[dict[str, Any]], tier: str = "Admin") -> dict[str, Any]:
    return {"kind": "ClusterNetworkPolicy", "metadata": {"name": name},
            "spec": {"tier": tier, "priority": priority, "subject": {"namespaces": {"matchLabels": {"kubernetes.io/metadata.name": "team"}}},
                     "egress": rules}}


def test_the_admin_tier_decides_by_priority_before_any_networkpolicy() -> None:
    ours = _cluster("sortie-egress.team.s1", 500, [
        {"name": "app", "action": "Accept", "to": [{"networks": ["198.51.100.0/24"]}], "protocols": [{"tcp": {"destinationPort": {"number": 443}}}]},
        {"name": "rest", "action": "Deny", "to": [{"networks": ["0.0.0.0/0"]}]}])
    guardrail = _cluster("no-metadata", 10, [{"action": "Deny", "to": [{"networks": ["198.51.100.254/32"]}]}])
    view = _view(nps=[_np("allow-all", [{}])], cluster=[ours, guardrail])
    assert _verdict(view, "198.51.100.7:443") == ("allowed", ["ClusterNetworkPolicy sortie-egress.team.s1 egress[0] app accepts"])
    assert _verdict(view, "198.51.100.254:443") == ("denied", ["ClusterNetworkPolicy no-metadata egress[0] denies"])
    assert _verdict(view, "203.0.113.1:80") == ("denied", ["ClusterNetworkPolicy sortie-egress.team.s1 egress[1] rest denies"])


def test_pass_hands_the_packet_to_the_networkpolicies_then_the_baseline_tier() -> None:
    passing = _cluster("pass-web", 100, [{"action": "Pass", "to": [{"networks": ["0.0.0.0/0"]}],
                                          "protocols": [{"tcp": {"destinationPort": {"number": 80}}}]}])
    baseline = _cluster("default-deny", 10, [{"action": "Deny", "to": [{"networks": ["0.0.0.0/0"]}]}], tier="Baseline")
    view = _view(cluster=[passing, baseline])
    verdict = judge(view, packets(view, parse_destination("203.0.113.1:80"))[0][0])
    assert verdict.verdict == "denied" and verdict.reason == "the Baseline tier decides: ClusterNetworkPolicy default-deny egress[0] denies"
    view = _view(cluster=[passing, baseline], nps=[_np("web", [{"ports": [{"port": 80}]}])])
    assert _verdict(view, "203.0.113.1:80") == ("allowed", ["ClusterNetworkPolicy pass-web egress[0] passes", "NetworkPolicy team/web egress[0] allows"])
    assert _verdict(view, "203.0.113.1:81")[0] == "denied"  # the NetworkPolicy isolates; the Baseline is not reached


# --- the answer ---------------------------------------------------------------------------------

def test_a_gated_pod_is_said_to_send_nothing_yet_and_the_table_names_the_rule() -> None:
    pod = _pod(phase="Pending")
    pod["spec"]["schedulingGates"] = [{"name": "sortie.io/egress-policy"}]
    explanation = explain(_view(nps=[ALLOW_443], pod=pod), [parse_destination("198.51.100.7:443"), parse_destination("dns")],
                          "networkpolicy")
    assert any("not released yet (scheduling gates: sortie.io/egress-policy)" in note for note in explanation.notes)
    table = as_table(explanation).splitlines()
    assert table[0] == "pod: team/app    dataplane: networkpolicy    backend: networkpolicy"
    assert table[-2].split() == ["198.51.100.7:443", "allowed", "NetworkPolicy", "team/sortie-egress-s1", "egress[0]", "allows",
                                 "(the", "session's", "own)"]
    data = as_data(explanation)
    assert data["answers"][1]["packets"][0]["to"] == {"identity": "pod", "address": "10.0.9.9", "namespace": "kube-system",
                                                      "name": "coredns-1"}
    assert data["answers"][1]["packets"][0]["decidedBy"][0]["rule"] == "egress[1]"
