"""Effective egress, part three: which other ClusterNetworkPolicy can widen a session on the
clusternetworkpolicy backend.

A session's ClusterNetworkPolicy sits in the Admin tier, which is evaluated before every
NetworkPolicy, so no NetworkPolicy can widen it. Another Admin-tier ClusterNetworkPolicy can, when
it comes first: a lower priority number (an equal one is in an order the API leaves to the
implementation, so it counts too). Its ``Accept`` rules let traffic out before ours is consulted,
and its ``Pass`` rules hand traffic to the NetworkPolicies, skipping the rest of the Admin tier,
ours included. Both are read as allows and compared with the session's own policy by
effective/networkpolicy.py (a ``Deny`` before them would narrow them: left out, in the direction of telling).
The Baseline tier comes after the NetworkPolicies and never widens ours. Pure, like effective/networkpolicy.py.

Which namespaces a ``namespaceSelector`` selects depends on labels the controller does not keep:
only ``kubernetes.io/metadata.name`` is known, so a selector on any other namespace label is taken
to select the session's namespace (told, rather than missed).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Final

from sortie_egress.effective.networkpolicy import PORT_PROTOCOLS, Addresses, Allowance, Peer, Traffic, Widening, all_traffic, selector_matches, widening_by

_NAME_LABEL: Final = "kubernetes.io/metadata.name"
_WIDENING_ACTIONS: Final = ("Accept", "Pass")


def is_cluster_policy(policy: Mapping[str, Any]) -> bool:
    spec = policy.get("spec") or {}
    return policy.get("kind") == "ClusterNetworkPolicy" or ("subject" in spec and "tier" in spec)


def _namespace_selected(selector: Mapping[str, Any] | None, namespace: str) -> bool:
    selector = selector or {}
    keys = set(selector.get("matchLabels") or {}) | {e.get("key") for e in selector.get("matchExpressions") or []}
    if keys - {_NAME_LABEL}:
        return True  # labels we do not know: assume it selects (tell)
    return selector_matches(selector, {_NAME_LABEL: namespace})


def selects(policy: Mapping[str, Any], namespace: str, labels: Mapping[str, str]) -> bool:
    """Whether the policy's subject takes in a pod with ``labels`` in ``namespace``."""
    subject = (policy.get("spec") or {}).get("subject") or {}
    if "namespaces" in subject:
        return _namespace_selected(subject.get("namespaces"), namespace)
    pods = subject.get("pods")
    if isinstance(pods, Mapping):
        return _namespace_selected(pods.get("namespaceSelector"), namespace) and selector_matches(
            pods.get("podSelector"), labels)
    return False


def comes_before(policy: Mapping[str, Any], priority: int) -> bool:
    """In the Admin tier, at a priority evaluated no later than ``priority`` (ours)."""
    spec = policy.get("spec") or {}
    tier = spec.get("tier", "Admin")
    value = spec.get("priority")
    return tier == "Admin" and isinstance(value, int) and value <= priority


def _canonical(peer: dict[str, Any]) -> str:
    return json.dumps(peer, sort_keys=True, separators=(",", ":"))


def _peers(rule: Mapping[str, Any]) -> list[Peer]:
    peers: list[Peer] = []
    for peer in rule.get("to") or []:
        if not isinstance(peer, Mapping):
            continue
        for network in peer.get("networks") or []:
            peers.append(Peer(addresses=Addresses.of_block({"cidr": network})))
        if isinstance(peer.get("pods"), Mapping):
            pods = peer["pods"]
            peers.append(Peer(selector=_canonical({"namespaceSelector": pods.get("namespaceSelector") or {},
                                                   "podSelector": pods.get("podSelector") or {}})))
        if isinstance(peer.get("namespaces"), Mapping):
            peers.append(Peer(selector=_canonical({"namespaceSelector": peer["namespaces"]})))
        if "nodes" in peer:
            peers.append(Peer(label=f"nodes selected by {_canonical(peer['nodes'] or {})}"))
        if peer.get("domainNames"):
            peers.append(Peer(label=f"domainNames {json.dumps(peer['domainNames'])[:120]}"))
    return peers or [Peer(label="destinations this reading does not know")]


def _traffic(rule: Mapping[str, Any]) -> list[Traffic]:
    protocols = rule.get("protocols")
    if not protocols:
        return all_traffic()
    out = []
    for entry in protocols:
        if not isinstance(entry, Mapping):
            continue
        if "destinationNamedPort" in entry:  # a name: its number is the destination's business
            out.extend(Traffic(protocol) for protocol in PORT_PROTOCOLS)
        for name in ("tcp", "udp", "sctp"):
            port = ((entry.get(name) or {}).get("destinationPort") or {}) if name in entry else None
            if port is None:
                continue
            if "number" in port:
                out.append(Traffic(name.upper(), int(port["number"]), int(port["number"])))
            elif "range" in port:
                out.append(Traffic(name.upper(), int(port["range"].get("start", 1)), int(port["range"].get("end", 65535))))
            else:
                out.append(Traffic(name.upper()))
    return out


def _widening_rules(policy: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    return [(f"egress {rule.get('name') or index} ({rule.get('action')})", rule)
            for index, rule in enumerate((policy.get("spec") or {}).get("egress") or [])
            if isinstance(rule, Mapping) and rule.get("action") in _WIDENING_ACTIONS]


def cluster_allowances(policy: Mapping[str, Any]) -> list[Allowance]:
    """Its Accept and Pass egress rules, in order, as allows."""
    return [Allowance(tuple(_peers(rule)), tuple(_traffic(rule))) for _, rule in _widening_rules(policy)]


def cluster_widenings(own: Mapping[str, Any], others: list[Mapping[str, Any]], namespace: str,
                      labels: Mapping[str, str], priority: int) -> list[Widening]:
    """Every ClusterNetworkPolicy in ``others`` (none of ours) that comes before the session's (at
    ``priority``), takes in its pod, and lets out more than ``own`` (the session's policy as a
    NetworkPolicy manifest) allows."""
    own_spec = own.get("spec") or {}
    found = []
    for policy in others:
        if not (is_cluster_policy(policy) and comes_before(policy, priority) and selects(policy, namespace, labels)):
            continue
        rules = _widening_rules(policy)
        reasons = widening_by(cluster_allowances(policy), own_spec, [name for name, _ in rules])
        if reasons:
            found.append(Widening((policy.get("metadata") or {}).get("name", ""), tuple(reasons), "ClusterNetworkPolicy"))
    return sorted(found, key=lambda widening: widening.policy)


__all__ = ["cluster_allowances", "cluster_widenings", "comes_before", "is_cluster_policy", "selects"]
