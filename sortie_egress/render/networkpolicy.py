"""The per-session NetworkPolicy, rendered from a pod and its policy (CONTRACT §3).

What every kind shares (the DNS destination, the canary, the session's selector and labels) is in
render/session.py.

Pure: the controller creates exactly what ``sortie-egress render`` prints,
because both call :func:`render_network_policy`.
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache
from typing import Any

from sortie_egress.policy.model import EgressPolicy, Rule
from sortie_egress.policy.destinations import network_text
from sortie_egress.policy.traffic import protocols_of
from sortie_egress.admission.session import SessionPod
from sortie_egress.render.session import Canary, DnsDestination, pod_owner, session_labels, session_selector

_DNS_PORTS = ({"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53})
_WHOLE_FAMILY = {4: "0.0.0.0/0", 6: "::/0"}


def _dns_rule(dns: DnsDestination) -> dict[str, Any]:
    rule: dict[str, Any] = {"ports": [dict(port) for port in _DNS_PORTS]}
    peers = dns.peers()
    if peers is not None:
        rule["to"] = peers
    return rule


def _ports(rule: Rule) -> list[dict[str, Any]] | None:
    if rule.port == 0:
        return None if rule.protocol is None else [{"protocol": rule.protocol}]
    protocols = protocols_of(rule)
    ports = []
    for protocol in protocols:
        entry: dict[str, Any] = {"protocol": protocol, "port": rule.port}
        if rule.end_port is not None:
            entry["endPort"] = rule.end_port
        ports.append(entry)
    return ports


def _allow_rule(rule: Rule) -> dict[str, Any]:
    egress: dict[str, Any] = {"to": [{"ipBlock": {"cidr": network_text(rule.network)}}]}  # type: ignore[arg-type]
    ports = _ports(rule)
    if ports is not None:
        egress["ports"] = ports
    return egress


def _deny_rule(rules: tuple[Rule, ...]) -> dict[str, Any] | None:
    """Everything except the listed networks, one peer per address family.

    A family denied whole loses its peer (Kubernetes wants ``except`` strictly
    inside ``cidr``). When both go, no rule is emitted at all: an egress rule
    with no peers would allow *everything*, the opposite of the intent.
    """
    peers = []
    for version in (4, 6):
        family = [rule.network for rule in rules if rule.network is not None and rule.network.version == version]
        if any(network.prefixlen == 0 for network in family):
            continue
        block: dict[str, Any] = {"cidr": _WHOLE_FAMILY[version]}
        if family:
            block["except"] = list(dict.fromkeys(str(network) for network in family))
        peers.append({"ipBlock": block})
    return {"to": peers} if peers else None


@lru_cache(maxsize=4096)
def _holes(cidr: str, excepted: tuple[str, ...], addresses: tuple[str, ...]) -> tuple[str, ...] | None:
    """The host routes of ``addresses`` to add to the block's except list (empty: none falls in it
    outside its holes; None: the block is one of the addresses alone, so nothing of it may stay).

    Cached: a controller renders every session again on each resync (50,000 at the size issue 24
    measured), while the apps' blocks and the canary's addresses are few; parsing them each time was
    a third of a reconcile. Strings in, strings out, so a cached answer cannot be changed by a caller.
    """
    network = ipaddress.ip_network(cidr)
    holes = [ipaddress.ip_network(hole) for hole in excepted]
    added = []
    for text in addresses:
        address = ipaddress.ip_address(text)
        if address.version != network.version or address not in network:
            continue
        if any(address in hole for hole in holes):
            continue
        host = ipaddress.ip_network(f"{address}/{address.max_prefixlen}")
        if host == network:
            return None
        added.append(str(host))
    return tuple(added)


def _without(peer: dict[str, Any], addresses: tuple[str, ...]) -> dict[str, Any] | None:
    """An ipBlock peer with ``addresses`` cut out (None when nothing of it is left)."""
    block = peer.get("ipBlock")
    if block is None:
        return peer
    added = _holes(block["cidr"], tuple(block.get("except", [])), addresses)
    if added is None:
        return None  # the block is the canary's address alone: nothing of it may stay
    if not added:
        return peer
    return {"ipBlock": {"cidr": block["cidr"], "except": list(block.get("except", [])) + list(added)}}


def _cut_out(rules: list[dict[str, Any]], addresses: tuple[str, ...]) -> list[dict[str, Any]]:
    """The app's rules with the canary's addresses cut out. A rule whose every peer goes is
    dropped: a rule with no peers left would allow every destination."""
    result = []
    for rule in rules:
        if "to" not in rule:
            result.append(rule)  # none of ours: every app rule names its addresses
            continue
        peers = [kept for kept in (_without(peer, addresses) for peer in rule["to"]) if kept is not None]
        if peers:
            result.append({**rule, "to": peers})
    return result


def egress_rules(policy: EgressPolicy, dns: DnsDestination, canary: Canary | None = None) -> list[dict[str, Any]]:
    if policy.names_hosts:  # admission refuses these on this backend; the controller fails them closed
        raise ValueError("a NetworkPolicy cannot name hosts: FQDN rules need the clusternetworkpolicy or cilium backend")
    app_rules: list[dict[str, Any]] = []
    if policy.mode == "allowlist":
        app_rules.extend(_allow_rule(rule) for rule in policy.rules)
    else:
        deny = _deny_rule(policy.rules)
        if deny is not None:
            app_rules.append(deny)
    if canary is None:
        return [_dns_rule(dns), *app_rules]
    return [_dns_rule(dns), *_cut_out(app_rules, canary.addresses), canary.rule()]


def render_network_policy(pod: SessionPod, policy: EgressPolicy, dns: DnsDestination,
                          canary: Canary | None = None) -> dict[str, Any]:
    """The NetworkPolicy for ``pod``, owned by it so the garbage collector removes it with it."""
    labels = session_labels(pod)
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": pod.policy_name,
            "namespace": pod.namespace,
            "labels": labels,
            "ownerReferences": [pod_owner(pod)],
        },
        "spec": {
            "podSelector": session_selector(pod.session_id),
            "policyTypes": ["Egress"],
            "egress": egress_rules(policy, dns, canary),
        },
    }


__all__ = ["Canary", "DnsDestination", "egress_rules", "pod_owner", "render_network_policy", "session_labels",
           "session_selector"]
