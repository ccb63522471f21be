"""The per-session NetworkPolicy, rendered from a pod and its policy (CONTRACT §3).

Pure: the controller creates exactly what ``sortie-egress render`` prints,
because both call :func:`render_network_policy`.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any, Literal

from sortie_egress.constants import (
    APP_ID_LABEL,
    EGRESS_MODE_LABEL,
    EGRESS_POLICY_LABEL,
    MANAGED_BY_LABEL,
    MANAGED_BY_VALUE,
    SESSION_ID_LABEL,
)
from sortie_egress.policy.model import EgressPolicy, Rule, network_text, parse_network
from sortie_egress.policy.traffic import protocols_of
from sortie_egress.admission.session import SessionPod

_DNS_PORTS = ({"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53})
_WHOLE_FAMILY = {4: "0.0.0.0/0", 6: "::/0"}


@dataclass(frozen=True, slots=True)
class DnsDestination:
    """Where session pods may send DNS queries: an operator's choice.

    ``cluster`` keeps queries inside the cluster's resolver (no DNS tunnel
    to the outside from a locked-down pod); ``any`` matches the original Sortie;
    CIDRs point at, say, a node-local cache. ``cluster`` may be combined with
    CIDRs: NodeLocal DNSCache answers on a link-local address on every node
    while its misses still go to the cluster's resolver pods.
    """

    kind: Literal["cluster", "any", "cidrs"] = "cluster"
    cidrs: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str) -> DnsDestination:
        """``cluster``, ``any``, a comma-separated list of networks, or ``cluster`` followed by
        networks; ValueError otherwise (``any`` with networks is refused: it would say less
        than it seems to)."""
        parts = [part.strip() for part in text.strip().split(",") if part.strip()]
        if parts == ["any"]:
            return cls(kind="any")
        kind: Literal["cluster", "cidrs"] = "cidrs"
        if parts and parts[0] == "cluster":
            kind, parts = "cluster", parts[1:]
        elif not parts:
            raise ValueError('the DNS destination must be "cluster", "any" or a list of CIDRs')
        networks = []
        for part in parts:
            if part in ("cluster", "any"):
                raise ValueError(f'DNS destination: "{part}" must come first and "any" alone (got {text.strip()!r})')
            try:
                network, _ = parse_network(part)
            except ValueError as exc:
                raise ValueError(f"DNS destination: {exc}") from None
            networks.append(str(network))
        return cls(kind=kind, cidrs=tuple(dict.fromkeys(networks)))

    def __str__(self) -> str:
        return ",".join(((self.kind,) if self.kind != "cidrs" else ()) + self.cidrs)

    def peers(self) -> list[dict[str, Any]] | None:
        if self.kind == "any":
            return None
        blocks: list[dict[str, Any]] = [{"ipBlock": {"cidr": cidr}} for cidr in self.cidrs]
        if self.kind == "cluster":
            return [
                {
                    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
                    "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
                },
                *blocks,
            ]
        return blocks


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


@dataclass(frozen=True, slots=True)
class Canary:
    """The controller's enforcement canary (enforcement_wait/injection.py), as every session policy must treat it:
    its open port allowed (to its pods, by selector), and its addresses cut out of every
    address block of the app's rules, so that its closed port is blocked whatever they allow."""

    namespace: str
    pod_labels: tuple[tuple[str, str], ...]
    open_port: int
    addresses: tuple[str, ...] = field(default=())

    def rule(self) -> dict[str, Any]:
        return {"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": self.namespace}},
                        "podSelector": {"matchLabels": dict(self.pod_labels)}}],
                "ports": [{"protocol": "TCP", "port": self.open_port}]}


def _without(peer: dict[str, Any], addresses: list[ipaddress.IPv4Address | ipaddress.IPv6Address]) -> dict[str, Any] | None:
    """An ipBlock peer with ``addresses`` cut out (None when nothing of it is left)."""
    block = peer.get("ipBlock")
    if block is None:
        return peer
    network = ipaddress.ip_network(block["cidr"])
    excepted = [ipaddress.ip_network(cidr) for cidr in block.get("except", [])]
    added = []
    for address in addresses:
        if address.version != network.version or address not in network:
            continue
        if any(address in hole for hole in excepted):
            continue
        host = ipaddress.ip_network(f"{address}/{address.max_prefixlen}")
        if host == network:
            return None  # the block is the canary's address alone: nothing of it may stay
        added.append(str(host))
    if not added:
        return peer
    return {"ipBlock": {"cidr": block["cidr"], "except": list(block.get("except", [])) + added}}


def _cut_out(rules: list[dict[str, Any]], addresses: tuple[str, ...]) -> list[dict[str, Any]]:
    """The app's rules with the canary's addresses cut out. A rule whose every peer goes is
    dropped: a rule with no peers left would allow every destination."""
    parsed = [ipaddress.ip_address(address) for address in addresses]
    result = []
    for rule in rules:
        if "to" not in rule:
            result.append(rule)  # none of ours: every app rule names its addresses
            continue
        peers = [kept for kept in (_without(peer, parsed) for peer in rule["to"]) if kept is not None]
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


def session_selector(session_id: str) -> dict[str, Any]:
    """The session's pods that were admitted with a policy, as every backend's object selects them.

    Not the session id alone: a pod without a policy may carry any session's id (its creator
    chooses its labels), and it must not borrow the egress that session's policy author granted
    (CONTRACT §7, "joining"). Only pods admitted with a policy carry the mode label: our webhook
    sets it on them and removes it from every other pod, the admission policies refuse a pod with
    it that skipped the webhook's checks, and nobody but the controller may add it later (to a pod
    with a policy). So the label can stand for "admitted with a policy" at no cost on the hot path.
    """
    return {"matchLabels": {SESSION_ID_LABEL: session_id},
            "matchExpressions": [{"key": EGRESS_MODE_LABEL, "operator": "Exists"}]}


def session_labels(pod: SessionPod, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The labels every backend's session policy carries (``extra`` after the session id)."""
    labels = {SESSION_ID_LABEL: pod.session_id, **(extra or {})}
    if pod.app_id:
        labels[APP_ID_LABEL] = pod.app_id
    labels[EGRESS_POLICY_LABEL] = "true"
    labels[MANAGED_BY_LABEL] = MANAGED_BY_VALUE
    return labels


def pod_owner(pod: SessionPod) -> dict[str, Any]:
    """The pod as the controlling owner of a namespaced session policy."""
    return {"apiVersion": "v1", "kind": "Pod", "name": pod.name, "uid": pod.uid, "controller": True,
            "blockOwnerDeletion": True}


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
