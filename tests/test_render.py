"""Rendering against CONTRACT §3, the official 1.37 schema, and an independent evaluator."""

from __future__ import annotations

import ipaddress
import json

import kubernetes_validate
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.netpol_eval import Packet, egress_allows
from tests.test_policy import policies
from sortie_egress.policy.model import EgressPolicy, parse_policy
from sortie_egress.render.networkpolicy import render_network_policy
from sortie_egress.render.session import DnsDestination
from sortie_egress.admission.session import SessionPod
from tests.support import MODE_EXISTS

K8S_VERSION = "1.37.0"
POD = SessionPod(namespace="sessions", name="firefox-1", uid="uid-1", session_id="s1", app_id="firefox", annotation=None)
DNS_PORTS = [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]


def render(document: dict, dns: DnsDestination = DnsDestination(), pod: SessionPod = POD) -> dict:
    result = parse_policy(json.dumps(document))
    assert result.ok, result.errors
    return render_network_policy(pod, result.policy, dns)


def egress(document: dict, dns: DnsDestination = DnsDestination()) -> list[dict]:
    return render(document, dns)["spec"]["egress"]


def test_metadata_owner_and_selector() -> None:
    policy = render({"mode": "allowlist"})
    assert policy["metadata"] == {
        "name": "sortie-egress-s1",
        "namespace": "sessions",
        "labels": {"sortie.io/session-id": "s1", "sortie.io/app-id": "firefox", "sortie.io/egress-policy": "true",
                   "app.kubernetes.io/managed-by": "sortie-egress"},
        "ownerReferences": [{"apiVersion": "v1", "kind": "Pod", "name": "firefox-1", "uid": "uid-1",
                             "controller": True, "blockOwnerDeletion": True}],
    }
    assert policy["spec"]["podSelector"] == {"matchLabels": {"sortie.io/session-id": "s1"}, "matchExpressions": MODE_EXISTS}
    assert policy["spec"]["policyTypes"] == ["Egress"]


def test_app_label_only_when_the_pod_has_one() -> None:
    pod = SessionPod("ns", "p", "u", "s2", None, None)
    assert "sortie.io/app-id" not in render({"mode": "allowlist"}, pod=pod)["metadata"]["labels"]


def test_dns_cluster_default() -> None:
    assert egress({"mode": "allowlist"}) == [{"ports": DNS_PORTS, "to": [{
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
        "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}]}]


def test_dns_any_has_no_peers() -> None:
    assert egress({"mode": "allowlist"}, DnsDestination.parse("any")) == [{"ports": DNS_PORTS}]


def test_dns_cidrs() -> None:
    dns = DnsDestination.parse("169.254.20.10, fd00::10/128,169.254.20.10/32")
    assert egress({"mode": "allowlist"}, dns) == [{"ports": DNS_PORTS, "to": [
        {"ipBlock": {"cidr": "169.254.20.10/32"}}, {"ipBlock": {"cidr": "fd00::10/128"}}]}]


def test_dns_cluster_and_a_node_local_cache() -> None:
    dns = DnsDestination.parse("cluster, 169.254.20.10")
    assert str(dns) == "cluster,169.254.20.10/32"
    assert egress({"mode": "allowlist"}, dns) == [{"ports": DNS_PORTS, "to": [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
         "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}},
        {"ipBlock": {"cidr": "169.254.20.10/32"}}]}]


@pytest.mark.parametrize("text", ["cluster", "any", "10.0.0.0/8", "cluster,10.0.0.0/8"])
def test_dns_setting_reads_back_as_written(text: str) -> None:
    assert str(DnsDestination.parse(text)) == text


@pytest.mark.parametrize("text", ["", "clusters", "10.0.0.300", "10.0.0.0/8,nope", ",", "any,10.0.0.0/8",
                                  "10.0.0.0/8,cluster", "cluster,any", "cluster,cluster"])
def test_bad_dns_setting_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        DnsDestination.parse(text)


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        ({"cidr": "10.0.0.0/8", "port": 443, "protocol": "TCP"},
         {"to": [{"ipBlock": {"cidr": "10.0.0.0/8"}}], "ports": [{"protocol": "TCP", "port": 443}]}),
        ({"cidr": "10.0.0.0/8", "port": 443},
         {"to": [{"ipBlock": {"cidr": "10.0.0.0/8"}}], "ports": [{"protocol": "TCP", "port": 443}, {"protocol": "UDP", "port": 443}]}),
        ({"cidr": "10.0.0.0/8", "protocol": "SCTP"},
         {"to": [{"ipBlock": {"cidr": "10.0.0.0/8"}}], "ports": [{"protocol": "SCTP"}]}),
        ({"cidr": "10.0.0.0/8"}, {"to": [{"ipBlock": {"cidr": "10.0.0.0/8"}}]}),
        ({"cidr": "2001:db8::/32", "port": 8000, "end_port": 8100, "protocol": "udp"},
         {"to": [{"ipBlock": {"cidr": "2001:db8::/32"}}], "ports": [{"protocol": "UDP", "port": 8000, "endPort": 8100}]}),
        ({"cidr": "2001:db8::/32", "port": 8000, "end_port": 8100},
         {"to": [{"ipBlock": {"cidr": "2001:db8::/32"}}],
          "ports": [{"protocol": "TCP", "port": 8000, "endPort": 8100}, {"protocol": "UDP", "port": 8000, "endPort": 8100}]}),
    ],
)
def test_allowlist_rule_shapes(rule: dict, expected: dict) -> None:
    rendered = egress({"mode": "allowlist", "rules": [rule]})
    assert rendered[0]["ports"] == DNS_PORTS
    assert rendered[1:] == [expected]


def test_allowlist_keeps_input_order() -> None:
    cidrs = ["192.0.2.0/24", "10.0.0.0/8", "2001:db8::/32", "10.0.0.0/8"]
    rendered = egress({"mode": "allowlist", "rules": [{"cidr": c} for c in cidrs]})
    assert [rule["to"][0]["ipBlock"]["cidr"] for rule in rendered[1:]] == cidrs


def test_empty_allowlist_allows_dns_only() -> None:
    assert len(egress({"mode": "allowlist", "rules": []})) == 1


def test_denylist_splits_families() -> None:
    rendered = egress({"mode": "denylist", "rules": [{"cidr": "10.0.0.0/8"}, {"cidr": "2001:db8::/32"},
                                                    {"cidr": "192.168.0.0/16"}, {"cidr": "10.0.0.0/8"}]})
    assert rendered[1:] == [{"to": [
        {"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8", "192.168.0.0/16"]}},
        {"ipBlock": {"cidr": "::/0", "except": ["2001:db8::/32"]}},
    ]}]


def test_empty_denylist_allows_everything() -> None:
    assert egress({"mode": "denylist"})[1:] == [{"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}, {"ipBlock": {"cidr": "::/0"}}]}]


def test_denylisting_a_whole_family_drops_its_peer() -> None:
    rendered = egress({"mode": "denylist", "rules": [{"cidr": "0.0.0.0/0"}, {"cidr": "2001:db8::/32"}]})
    assert rendered[1:] == [{"to": [{"ipBlock": {"cidr": "::/0", "except": ["2001:db8::/32"]}}]}]


def test_denylisting_both_families_leaves_dns_only_never_an_open_rule() -> None:
    rendered = egress({"mode": "denylist", "rules": [{"cidr": "0.0.0.0/0"}, {"cidr": "::/0"}]})
    assert len(rendered) == 1 and rendered[0]["ports"] == DNS_PORTS


# --- the official schema and the evaluator -------------------------------------

dns_settings = st.sampled_from([DnsDestination(), DnsDestination.parse("any"), DnsDestination.parse("169.254.20.10,fd00::a"),
                                DnsDestination.parse("cluster,169.254.20.10")])


@given(policies, dns_settings)
@settings(max_examples=150, deadline=None)
def test_every_rendered_policy_is_valid_for_kubernetes_1_37(document: dict, dns: DnsDestination) -> None:
    kubernetes_validate.validate(render(document, dns), K8S_VERSION, strict=True)


def _intended(policy: EgressPolicy, dns: DnsDestination, packet: Packet) -> bool:
    """What the author asked for, straight from CONTRACT §1-3 (not from the renderer)."""
    if packet.port == 53 and packet.protocol in ("UDP", "TCP"):
        if dns.kind == "any" or (dns.kind == "cidrs" and any(
                packet.address.version == ipaddress.ip_network(c).version and packet.address in ipaddress.ip_network(c)
                for c in dns.cidrs)):
            return True
    inside = [rule for rule in policy.rules
              if rule.network.version == packet.address.version and packet.address in rule.network]
    if policy.mode == "denylist":
        return not inside
    for rule in inside:
        if rule.port == 0:
            if rule.protocol is None or rule.protocol == packet.protocol:
                return True
            continue
        protocols = (rule.protocol,) if rule.protocol else ("TCP", "UDP")
        if packet.protocol in protocols and rule.port <= packet.port <= (rule.end_port or rule.port):
            return True
    return False


@st.composite
def scenario(draw: st.DrawFn) -> tuple[EgressPolicy, DnsDestination, Packet]:
    """Packets aimed mostly at a rule's own network and port edges, where mistakes hide."""
    policy = parse_policy(json.dumps(draw(policies))).policy
    if policy.rules and draw(st.integers(0, 3)) > 0:
        rule = draw(st.sampled_from(policy.rules))
        address = rule.network.network_address + draw(st.integers(0, rule.network.num_addresses - 1))
        if rule.port:
            high = rule.end_port or rule.port
            port = draw(st.sampled_from(sorted({rule.port, high, max(rule.port - 1, 1), min(high + 1, 65535), 53})))
        else:
            port = draw(st.integers(1, 65535) | st.just(53))
    else:
        version = draw(st.sampled_from([4, 6]))
        address = ipaddress.ip_address(draw(st.integers(0, 2**32 - 1 if version == 4 else 2**128 - 1)))
        if version == 6:
            address = ipaddress.IPv6Address(int(address))
        port = draw(st.integers(1, 65535) | st.just(53))
    protocol = draw(st.sampled_from(["TCP", "UDP", "SCTP"]))
    return policy, draw(dns_settings), Packet(address, port, protocol)


@given(scenario())
@settings(max_examples=2000, deadline=None)
def test_rendered_policy_allows_exactly_what_the_policy_intends(case: tuple[EgressPolicy, DnsDestination, Packet]) -> None:
    policy, dns, packet = case
    rendered = render_network_policy(POD, policy, dns)
    assert egress_allows(rendered, packet) == _intended(policy, dns, packet)
