"""Effective egress: does another NetworkPolicy let a session pod reach what its own policy does not?

NetworkPolicies are a union of allows: a pod may send whatever *any* egress
policy selecting it allows. So a per-session allowlist is only what the pod can
reach if every other policy that selects the pod allows a subset of it. This
module answers that question for one pod, from manifests alone (pure, no I/O),
for the controller and ``audit`` alike (CONTRACT §4).

The comparison is conservative, in the direction of telling the operator:

- ipBlock peers are compared as address sets (``cidr`` minus ``except``);
- pod/namespace selector peers are covered only by an identical selector peer
  of the session's policy (or one that allows every destination): which pods a
  selector reaches is not knowable from the policy, and an ipBlock that happens
  to contain pod addresses is not relied on (implementations differ on it);
- named ports are covered only where the session allows that protocol on every
  port (the number behind the name is the destination pod's business);
- a rule without ``ports`` allows every protocol, also those without ports
  (ICMP and the like): only a session rule without ``ports`` covers that.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sortie_egress.policy.intervals import Interval, covers, merge_intervals, network_interval, subtract
from sortie_egress.policy.traffic import PROTOCOLS

PORT_PROTOCOLS = PROTOCOLS
#: Traffic of protocols without ports (ICMP, ...): allowed only by rules that list no ports.
PORTLESS = "other protocols"
_FULL = (1, 65535)
_FAMILY_BITS = {4: 32, 6: 128}



# --- pod selection ------------------------------------------------------------

def _expression_matches(expression: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    key, operator = expression.get("key"), expression.get("operator")
    values = expression.get("values") or []
    if operator == "In":
        return key in labels and labels[key] in values
    if operator == "NotIn":
        return key not in labels or labels[key] not in values
    if operator == "Exists":
        return key in labels
    if operator == "DoesNotExist":
        return key not in labels
    return False  # the API server refuses any other operator; never assume a match


def selector_matches(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """A LabelSelector against a pod's labels; the empty selector matches every pod."""
    selector = selector or {}
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    return all(_expression_matches(expression, labels) for expression in selector.get("matchExpressions") or [])


def limits_egress(policy: Mapping[str, Any]) -> bool:
    """An egress-type policy: one that takes part in what a selected pod may send."""
    spec = policy.get("spec") or {}
    types = spec.get("policyTypes")
    if types is None:  # the API server fills it in; a manifest may not have
        return "egress" in spec
    return "Egress" in types


def selecting(policies: Iterable[Mapping[str, Any]], namespace: str, labels: Mapping[str, str]) -> list[Mapping[str, Any]]:
    """The egress-type policies of ``namespace`` that select a pod with ``labels``."""
    return [
        policy for policy in policies
        if (policy.get("metadata") or {}).get("namespace") == namespace and limits_egress(policy)
        and selector_matches((policy.get("spec") or {}).get("podSelector"), labels)
    ]


# --- destinations -------------------------------------------------------------

@dataclass(frozen=True)
class Addresses:
    """An ipBlock as address intervals, one list per family."""

    v4: tuple[Interval, ...] = ()
    v6: tuple[Interval, ...] = ()

    @classmethod
    def of_block(cls, block: Mapping[str, Any]) -> Addresses:
        network = ipaddress.ip_network(str(block.get("cidr")), strict=False)
        excepted = [network_interval(ipaddress.ip_network(str(text), strict=False)) for text in block.get("except") or []]
        kept = tuple(subtract([network_interval(network)], merge_intervals(excepted)))
        return cls(v4=kept) if network.version == 4 else cls(v6=kept)

    def family(self, version: int) -> list[Interval]:
        return list(self.v4 if version == 4 else self.v6)

    def describe(self) -> str:
        parts = []
        for version, intervals in ((4, self.v4), (6, self.v6)):
            for low, high in intervals:
                first = ipaddress.ip_address(low) if version == 4 else ipaddress.IPv6Address(low)
                last = ipaddress.ip_address(high) if version == 4 else ipaddress.IPv6Address(high)
                networks = list(ipaddress.summarize_address_range(first, last))  # type: ignore[arg-type]
                parts.extend(str(network) for network in networks[:3])
                if len(networks) > 3:
                    parts.append("...")
        return ", ".join(parts) or "no address"


@dataclass(frozen=True)
class Peer:
    """One destination of a rule: every destination, an address set, a selector (as canonical
    JSON), or (``label``) something only a rule to every destination covers, as it is said."""

    anywhere: bool = False
    addresses: Addresses | None = None
    selector: str | None = None
    label: str | None = None

    def describe(self) -> str:
        if self.anywhere:
            return "any destination"
        if self.addresses is not None:
            return self.addresses.describe()
        if self.label is not None:
            return self.label
        return f"pods selected by {self.selector}"


def _peers(rule: Mapping[str, Any]) -> list[Peer]:
    peers = rule.get("to")
    if not peers:  # absent or empty: every destination
        return [Peer(anywhere=True)]
    out = []
    for peer in peers:
        block = peer.get("ipBlock")
        if block is not None:
            out.append(Peer(addresses=Addresses.of_block(block)))
        else:
            selectors = {key: peer[key] for key in ("namespaceSelector", "podSelector") if key in peer}
            out.append(Peer(selector=json.dumps(selectors, sort_keys=True, separators=(",", ":"))))
    return out


# --- traffic --------------------------------------------------------------------

@dataclass(frozen=True)
class Traffic:
    """One protocol and a port range of it (``PORTLESS``: no ports at all)."""

    protocol: str
    low: int = 1
    high: int = 65535

    def describe(self) -> str:
        if self.protocol == PORTLESS:
            return PORTLESS
        if (self.low, self.high) == _FULL:
            return f"{self.protocol} (all ports)"
        return f"{self.protocol} {self.low}" if self.low == self.high else f"{self.protocol} {self.low}-{self.high}"


def all_traffic() -> list[Traffic]:
    """What a rule that names no ports allows, in every kind of policy: every port of every
    protocol, and the protocols without ports."""
    return [Traffic(protocol) for protocol in PORT_PROTOCOLS] + [Traffic(PORTLESS)]


def _traffic(rule: Mapping[str, Any]) -> list[Traffic]:
    ports = rule.get("ports")
    if not ports:  # absent or empty: every port of every protocol
        return all_traffic()
    out = []
    for entry in ports:
        protocol = entry.get("protocol") or "TCP"
        port = entry.get("port")
        if port is None or isinstance(port, str):  # all ports, or a named one: judged as all ports
            out.append(Traffic(protocol))
        else:
            out.append(Traffic(protocol, int(port), int(entry.get("endPort") or port)))
    return out


# --- the comparison -------------------------------------------------------------

@dataclass(frozen=True)
class Allowance:
    """One allow rule: its destinations and its traffic (every kind of policy is read into these)."""

    peers: tuple[Peer, ...]
    traffic: tuple[Traffic, ...]


def _allowances(spec: Mapping[str, Any]) -> list[Allowance]:
    return [Allowance(tuple(_peers(rule)), tuple(_traffic(rule))) for rule in spec.get("egress") or []]


def _segments(piece: Traffic, own: list[Allowance]) -> list[Traffic]:
    """``piece`` cut at every boundary of the session's port ranges of its protocol, so each
    segment is either wholly inside or wholly outside each of them."""
    if piece.protocol == PORTLESS:
        return [piece]
    cuts = {piece.low, piece.high + 1}
    for allowance in own:
        for traffic in allowance.traffic:
            if traffic.protocol == piece.protocol:
                for cut in (traffic.low, traffic.high + 1):
                    if piece.low < cut <= piece.high:
                        cuts.add(cut)
    edges = sorted(cuts)
    return [Traffic(piece.protocol, low, high - 1) for low, high in zip(edges, edges[1:])]


def _peer_covered(peer: Peer, segment: Traffic, own: list[Allowance]) -> bool:
    open_to = [allowance for allowance in own
               if any(t.protocol == segment.protocol and t.low <= segment.low and segment.high <= t.high
                      for t in allowance.traffic)]
    own_peers = [other for allowance in open_to for other in allowance.peers]
    if any(other.anywhere for other in own_peers):
        return True
    if peer.anywhere or peer.label is not None:
        return False
    if peer.selector is not None:
        return any(other.selector == peer.selector for other in own_peers)
    assert peer.addresses is not None
    for version in (4, 6):
        wanted = peer.addresses.family(version)
        if wanted:
            have = merge_intervals(i for other in own_peers if other.addresses is not None for i in other.addresses.family(version))
            if not covers(have, wanted):
                return False
    return True


def _joined(segments: list[Traffic]) -> list[Traffic]:
    """Adjacent ranges of one protocol as one, so a message says TCP 1-442, not TCP 1-52, TCP 53, ..."""
    out: list[Traffic] = []
    for segment in segments:
        last = out[-1] if out else None
        if last is not None and last.protocol == segment.protocol != PORTLESS and last.high + 1 == segment.low:
            out[-1] = Traffic(last.protocol, last.low, segment.high)
        else:
            out.append(segment)
    return out


def widening(other: Mapping[str, Any], own: Mapping[str, Any]) -> list[str]:
    """What the NetworkPolicy spec ``other`` allows that ``own`` does not, one line per
    rule that widens (empty: ``other`` allows a subset of ``own``)."""
    return widening_by(_allowances(other), own)


def widening_by(others: list[Allowance], own: Mapping[str, Any], names: list[str] | None = None) -> list[str]:
    """``widening`` for allow rules read from any kind of policy (effective/cilium.py,
    effective/clusternetworkpolicy.py); ``names``: how each rule is called (default ``egress[i]``)."""
    own_allowances = _allowances(own)
    reasons = []
    for index, rule in enumerate(others):
        called = names[index] if names is not None else f"egress[{index}]"
        for peer in rule.peers:
            uncovered = _joined([segment for piece in rule.traffic for segment in _segments(piece, own_allowances)
                                 if not _peer_covered(peer, segment, own_allowances)])
            if uncovered:
                shown = ", ".join(segment.describe() for segment in uncovered[:4])
                more = f" and {len(uncovered) - 4} more" if len(uncovered) > 4 else ""
                reasons.append(f"{called} allows {shown}{more} to {peer.describe()}")
                break  # one line per rule is enough to name it
    return reasons


@dataclass(frozen=True, slots=True)
class Widening:
    """Another policy that selects the session pod and allows more than the session's policy."""

    policy: str
    reasons: tuple[str, ...]
    kind: str = "NetworkPolicy"

    def describe(self) -> str:
        return f"{self.kind} {self.policy}: " + "; ".join(self.reasons)


def widenings(own: Mapping[str, Any], others: Iterable[Mapping[str, Any]], namespace: str,
              labels: Mapping[str, str]) -> list[Widening]:
    """Every policy in ``others`` that selects a pod (``labels`` in ``namespace``) and widens
    the session policy ``own`` (a NetworkPolicy manifest; it is skipped in ``others``).
    ``others`` may hold CiliumNetworkPolicies too: they are read by effective/cilium.py."""
    from sortie_egress.effective.cilium import cilium_allowances, is_cilium_policy, selects

    own_name = (own.get("metadata") or {}).get("name")
    own_spec = own.get("spec") or {}
    network_policies, cilium_policies = [], []
    for policy in others:
        (cilium_policies if is_cilium_policy(policy) else network_policies).append(policy)
    found = []
    for policy in selecting(network_policies, namespace, labels):
        name = (policy.get("metadata") or {}).get("name", "")
        if name == own_name:
            continue
        reasons = widening(policy.get("spec") or {}, own_spec)
        if reasons:
            found.append(Widening(name, tuple(reasons)))
    for policy in cilium_policies:
        if selects(policy, namespace, labels):
            reasons = widening_by(cilium_allowances(policy, namespace, labels), own_spec)
            if reasons:
                found.append(Widening((policy.get("metadata") or {}).get("name", ""), tuple(reasons),
                                      str(policy.get("kind") or "CiliumNetworkPolicy")))
    return sorted(found, key=lambda w: (w.kind, w.policy))
