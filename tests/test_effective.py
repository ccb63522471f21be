"""Effective egress (CONTRACT §4): which other policies widen a session. Expectations written by hand."""

from __future__ import annotations

from typing import Any

import pytest

from sortie_egress.effective.networkpolicy import selector_matches, widening, widenings
from tests.support import MODE_EXISTS

KUBE_DNS = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
            "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}
DNS_RULE = {"ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}], "to": [KUBE_DNS]}
# What the controller renders for {"mode": "allowlist", "rules": [{"cidr": "10.0.0.0/8", "port": 443, "protocol": "TCP"}]}
OWN_ALLOW_443 = {"podSelector": {"matchLabels": {"sortie.io/session-id": "s1"}, "matchExpressions": MODE_EXISTS}, "policyTypes": ["Egress"],
                 "egress": [DNS_RULE, {"to": [{"ipBlock": {"cidr": "10.0.0.0/8"}}],
                                       "ports": [{"protocol": "TCP", "port": 443}]}]}
LABELS = {"sortie.io/session-id": "s1", "sortie.io/egress-mode": "allowlist", "app.kubernetes.io/component": "session"}


def spec(*rules: dict[str, Any]) -> dict[str, Any]:
    return {"podSelector": {}, "policyTypes": ["Egress"], "egress": list(rules)}


def tcp(port: int, end: int | None = None) -> dict[str, Any]:
    entry: dict[str, Any] = {"protocol": "TCP", "port": port}
    if end is not None:
        entry["endPort"] = end
    return entry


def block(cidr: str, *excepted: str) -> dict[str, Any]:
    ip: dict[str, Any] = {"cidr": cidr}
    if excepted:
        ip["except"] = list(excepted)
    return {"ipBlock": ip}


def policy(name: str, body: dict[str, Any], namespace: str = "sessions") -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": namespace}, "spec": body}


def test_sortie_chart_session_isolation_widens_an_allowlist() -> None:
    chart_default = {"podSelector": {"matchLabels": {"app.kubernetes.io/component": "session"}}, "policyTypes": ["Egress"],
                     "egress": [{"to": [block("0.0.0.0/0")], "ports": [tcp(80), tcp(443)]}]}
    assert widening(chart_default, OWN_ALLOW_443) == ["egress[0] allows TCP 80, TCP 443 to 0.0.0.0/0"]


def test_the_dns_only_baseline_widens_nothing() -> None:
    baseline = {"podSelector": {"matchExpressions": [{"key": "sortie.io/egress-mode", "operator": "Exists"}]},
                "policyTypes": ["Egress"], "egress": [DNS_RULE]}
    assert widening(baseline, OWN_ALLOW_443) == []


def test_a_narrower_address_set_and_port_is_covered() -> None:
    assert widening(spec({"to": [block("10.1.0.0/16")], "ports": [tcp(443)]}), OWN_ALLOW_443) == []


def test_a_port_range_reaching_past_the_session_names_the_extra_ports() -> None:
    assert widening(spec({"to": [block("10.1.0.0/16")], "ports": [tcp(440, 444)]}), OWN_ALLOW_443) == [
        "egress[0] allows TCP 440-442, TCP 444 to 10.1.0.0/16"]


def test_coverage_by_a_union_of_session_rules() -> None:
    own = spec({"to": [block("10.0.0.0/9")], "ports": [tcp(1, 100)]},
               {"to": [block("10.128.0.0/9")], "ports": [tcp(1, 100)]},
               {"to": [block("10.0.0.0/8")], "ports": [tcp(101, 200)]})
    assert widening(spec({"to": [block("10.0.0.0/8")], "ports": [tcp(50, 150)]}), own) == []
    assert widening(spec({"to": [block("10.0.0.0/8")], "ports": [tcp(50, 201)]}), own) == [
        "egress[0] allows TCP 201 to 10.0.0.0/8"]


def test_except_holes_in_a_denylist() -> None:
    denylist = spec(DNS_RULE, {"to": [block("0.0.0.0/0", "10.0.0.0/8"), block("::/0")]})
    assert widening(spec({"to": [block("11.0.0.0/8")], "ports": [tcp(443)]}), denylist) == []
    assert widening(spec({"to": [block("10.1.2.0/24")], "ports": [tcp(443)]}), denylist) == [
        "egress[0] allows TCP 443 to 10.1.2.0/24"]
    # The other policy's own except keeps it inside the session's: covered.
    assert widening(spec({"to": [block("10.0.0.0/7", "10.0.0.0/8")]}), denylist) == []


def test_a_rule_without_ports_opens_portless_protocols_too() -> None:
    own = spec({"to": [block("10.0.0.0/8")], "ports": [{"protocol": "TCP"}, {"protocol": "UDP"}, {"protocol": "SCTP"}]})
    assert widening(spec({"to": [block("10.0.0.0/8")]}), own) == ["egress[0] allows other protocols to 10.0.0.0/8"]
    assert widening(spec({"to": [block("10.0.0.0/8")]}), spec({"to": [block("0.0.0.0/0")]})) == []


def test_selector_peers_are_covered_only_by_the_same_selector() -> None:
    same = spec({"to": [KUBE_DNS], "ports": [{"protocol": "UDP", "port": 53}]})
    assert widening(same, OWN_ALLOW_443) == []
    any_pod = spec({"to": [{"podSelector": {}}], "ports": [tcp(443)]})
    assert widening(any_pod, OWN_ALLOW_443) == ['egress[0] allows TCP 443 to pods selected by {"podSelector":{}}']
    # An ipBlock holding every address is not trusted to cover pods either...
    assert widening(any_pod, spec({"to": [block("0.0.0.0/0")]})) != []
    # ...but a rule to every destination is.
    assert widening(any_pod, spec({"ports": [tcp(443)]})) == []


def test_named_ports_count_as_every_port_of_their_protocol() -> None:
    named = spec({"to": [block("10.1.0.0/16")], "ports": [{"protocol": "TCP", "port": "https"}]})
    assert widening(named, OWN_ALLOW_443) == ["egress[0] allows TCP 1-442, TCP 444-65535 to 10.1.0.0/16"]
    assert widening(named, spec({"to": [block("10.0.0.0/8")], "ports": [{"protocol": "TCP"}]})) == []


def test_anywhere_on_port_53_against_each_dns_destination() -> None:
    dns_anywhere = spec({"ports": [{"protocol": "UDP", "port": 53}]})
    assert widening(dns_anywhere, OWN_ALLOW_443) == ["egress[0] allows UDP 53 to any destination"]
    own_dns_any = spec({"ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]})
    assert widening(dns_anywhere, own_dns_any) == []


def test_ipv6() -> None:
    own = spec({"to": [block("2001:db8::/32")], "ports": [tcp(443)]})
    assert widening(spec({"to": [block("2001:db8:1::/48")], "ports": [tcp(443)]}), own) == []
    assert widening(spec({"to": [block("2001:db9::/32")], "ports": [tcp(443)]}), own) == [
        "egress[0] allows TCP 443 to 2001:db9::/32"]


def test_empty_to_and_empty_ports_mean_everything() -> None:
    # Port 53 is open only to kube-dns, so "anywhere" leaves nothing covered.
    assert widening(spec({"to": [], "ports": []}), OWN_ALLOW_443) == [
        "egress[0] allows TCP (all ports), UDP (all ports), SCTP (all ports), other protocols to any destination"]


def test_allow_nothing_widens_nothing() -> None:
    assert widening(spec(), OWN_ALLOW_443) == []  # an egress policy without rules is a default deny


@pytest.mark.parametrize(("selector", "selected"), [
    ({}, True),
    ({"matchLabels": {"app.kubernetes.io/component": "session"}}, True),
    ({"matchLabels": {"app.kubernetes.io/component": "web"}}, False),
    ({"matchExpressions": [{"key": "sortie.io/egress-mode", "operator": "Exists"}]}, True),
    ({"matchExpressions": [{"key": "sortie.io/egress-mode", "operator": "DoesNotExist"}]}, False),
    ({"matchExpressions": [{"key": "sortie.io/session-id", "operator": "In", "values": ["s1", "s2"]}]}, True),
    ({"matchExpressions": [{"key": "sortie.io/session-id", "operator": "NotIn", "values": ["s1"]}]}, False),
    ({"matchExpressions": [{"key": "absent", "operator": "NotIn", "values": ["x"]}]}, True),
    ({"matchExpressions": [{"key": "absent", "operator": "Bogus"}]}, False),
])
def test_selector_matching(selector: dict[str, Any], selected: bool) -> None:
    assert selector_matches(selector, LABELS) is selected


def test_widenings_only_counts_egress_policies_that_select_the_pod() -> None:
    own = policy("sortie-egress-s1", OWN_ALLOW_443)
    everything = {"policyTypes": ["Egress"], "egress": [{}]}
    others = [
        own,
        policy("allow-all", {"podSelector": {}, **everything}),
        policy("other-app", {"podSelector": {"matchLabels": {"app": "web"}}, **everything}),
        policy("ingress-only", {"podSelector": {}, "policyTypes": ["Ingress"], "ingress": [{}]}),
        policy("elsewhere", {"podSelector": {}, **everything}, namespace="other"),
        policy("baseline", {"podSelector": {}, "policyTypes": ["Egress"], "egress": [DNS_RULE]}),
    ]
    found = widenings(own, others, "sessions", LABELS)
    assert [w.policy for w in found] == ["allow-all"]
    assert found[0].describe() == ("NetworkPolicy allow-all: egress[0] allows TCP (all ports), UDP (all ports), "
                                   "SCTP (all ports), other protocols to any destination")
