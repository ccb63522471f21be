"""The cilium backend: one CiliumNetworkPolicy (``cilium.io/v2``) per session.

Namespaced and owned by the session's pods like the NetworkPolicy of render/networkpolicy.py (the garbage
collector removes it with the last one), named like it (``sortie-egress-<session-id>``; another
kind, so no clash). What it adds over a NetworkPolicy:

- a denylist is ``egressDeny`` (Cilium evaluates denies before allows, whatever else selects
  the pod), with ports and protocols honoured, and an allow of everything else;
- FQDN rules are ``toFQDNs``: an exact name is ``matchName``, ``*.example.com`` (one or more
  labels, as in ClusterNetworkPolicy) is ``matchPattern: "**.example.com"``; the DNS rule then
  carries ``rules.dns`` so that Cilium's DNS proxy sees the lookups that open those names.

As with a NetworkPolicy on Cilium, CIDR rules reach addresses outside the cluster's endpoints
(Cilium does not apply CIDR rules to traffic between its own endpoints); pods are reached only
through selectors (DNS, the enforcement canary). The canary's open port is allowed and the rest
of it denied (``egressDeny``), so its closed port is blocked by this policy whatever any other
policy allows: the injected wait then proves this policy enforced, as on clusternetworkpolicy.

An allowlist that names only networks is its allows plus ``egressDeny`` of everything else
outside the cluster (policy/complement.py), so another policy that selects the pod cannot widen it
there. Every allowlist also denies the cluster's own endpoints (``in_cluster_deny``): every pod
of every namespace but the DNS pods (on port 53) and the canary's pods (on its open port), so a
NetworkPolicy or CiliumNetworkPolicy that allows a selector cannot open the cluster's pods to the
session either. Left to the allows, so widenable (and judged by effective/networkpolicy.py as on the
networkpolicy backend): an allowlist that names hosts outside the cluster (a deny of "all but
what these names resolve to" has no form: the deny would win over the names' addresses too), the
node's own addresses (Cilium's ``host`` and ``remote-node`` entities: a node-local DNS cache
lives there), and traffic without ports (ICMP) to a network the app allows some ports of.
"""

from __future__ import annotations

import ipaddress
from itertools import product
from typing import Any, Final

from sortie_egress.policy.traffic import PROTOCOLS, grouped_by_port_set, port_set
from sortie_egress.policy.complement import PortSet, denied_regions
from sortie_egress.policy.model import EgressPolicy, Rule
from sortie_egress.policy.destinations import network_text
from sortie_egress.render.session import Canary, DnsDestination, pod_owner, session_labels, session_selector
from sortie_egress.admission.session import SessionPod

CILIUM_API_VERSION: Final = "cilium.io/v2"
CILIUM_PLURAL: Final = "ciliumnetworkpolicies"
_NAMESPACE_KEY: Final = "k8s:io.kubernetes.pod.namespace"
_EVERYWHERE: Final = ("0.0.0.0/0", "::/0")
_DNS_PORTS: Final = (("UDP", 53, 53), ("TCP", 53, 53))
#: Cilium's limit of ports in one ``toPorts`` entry.
_PORTS_PER_ENTRY: Final = 40


def _selector(namespace: str, labels: dict[str, str]) -> dict[str, Any]:
    return {"matchLabels": {_NAMESPACE_KEY: namespace, **{f"k8s:{key}": value for key, value in labels.items()}}}


def _ports(port_set: tuple[tuple[str, int, int], ...]) -> list[dict[str, Any]] | None:
    """A port set as Cilium ``toPorts``; None: all traffic. Port "0" is every port of its protocol."""
    if not port_set:
        return None
    ports = []
    for protocol, first, last in port_set:
        entry: dict[str, Any] = {"port": str(first), "protocol": protocol}
        if last > first:
            entry["endPort"] = last
        ports.append(entry)
    return [{"ports": ports}]


def _name_selector(fqdn: str) -> dict[str, str]:
    return {"matchPattern": "**." + fqdn[2:]} if fqdn.startswith("*.") else {"matchName": fqdn}


def dns_rules(dns: DnsDestination, proxied: bool) -> list[dict[str, Any]]:
    """The egress rules that let a session pod resolve names as ``dns`` says (``proxied``: through
    Cilium's DNS proxy, which FQDN rules need)."""
    to_ports: dict[str, Any] = {"ports": [{"port": "53", "protocol": "UDP"}, {"port": "53", "protocol": "TCP"}]}
    if proxied:
        to_ports["rules"] = {"dns": [{"matchPattern": "*"}]}
    if dns.kind == "any":
        return [{"toPorts": [to_ports]}]  # no destination selector: port 53 anywhere
    rules = []
    if dns.kind == "cluster":
        rules.append({"toEndpoints": [_selector("kube-system", {"k8s-app": "kube-dns"})], "toPorts": [to_ports]})
    if dns.cidrs:
        rules.append({"toCIDRSet": [{"cidr": cidr} for cidr in dns.cidrs], "toPorts": [to_ports]})
    return rules


def _cidr_set(rules: list[Rule], keep_open: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """``toCIDRSet`` entries for the rules' networks; ``keep_open`` networks inside one are excepted."""
    entries = []
    for text in dict.fromkeys(network_text(rule.network) for rule in rules if rule.network is not None):
        network = ipaddress.ip_network(text)
        holes = [hole for hole in keep_open if (inner := ipaddress.ip_network(hole)).version == network.version
                 and inner != network and inner.subnet_of(network)]  # type: ignore[arg-type]
        entries.append({"cidr": text, **({"except": holes} if holes else {})})
    return entries


def _destinations(rules: list[Rule], port_set: tuple[tuple[str, int, int], ...],
                  keep_open: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """One rule for the networks and one for the names of a port set (Cilium keeps them apart)."""
    ports = _ports(port_set)
    rendered = []
    cidrs = _cidr_set(rules, keep_open)
    names = [_name_selector(fqdn) for fqdn in dict.fromkeys(rule.fqdn for rule in rules if rule.fqdn is not None)]
    for key, value in (("toCIDRSet", cidrs), ("toFQDNs", names)):
        if value:
            rendered.append({key: value, **({"toPorts": ports} if ports is not None else {})})
    return rendered


def deny_ports(ports: tuple[tuple[str, int, int], ...]) -> list[dict[str, Any]]:
    entries = []
    for protocol, first, last in ports:
        entry: dict[str, Any] = {"port": "0" if (first, last) == (1, 65535) else str(first), "protocol": protocol}
        if last > first and (first, last) != (1, 65535):
            entry["endPort"] = last
        entries.append(entry)
    return [{"ports": entries[start:start + _PORTS_PER_ENTRY]} for start in range(0, len(entries), _PORTS_PER_ENTRY)]


def every_port_but(protocol_ports: tuple[tuple[str, int], ...]) -> tuple[tuple[str, int, int], ...]:
    """Every TCP, UDP and SCTP port but the given (protocol, port) pairs, as port ranges."""
    rest = []
    for protocol in PROTOCOLS:
        open_ports = sorted(port for name, port in protocol_ports if name == protocol)
        first = 1
        for port in open_ports:
            if first <= port - 1:
                rest.append((protocol, first, port - 1))
            first = port + 1
        if first <= 65535:
            rest.append((protocol, first, 65535))
    return tuple(rest)


def _all_but(groups: list[tuple[str, dict[str, str]]]) -> list[dict[str, Any]]:
    """Endpoint selectors for every pod of every namespace except the pods of ``groups`` (each a
    namespace and the labels its pods carry): the complement of a union, spelled as selectors
    (one that excludes those namespaces, then per namespace one per label its pods could lack).
    The namespace key in every selector keeps Cilium from narrowing it to the policy's namespace."""
    by_namespace: dict[str, list[dict[str, str]]] = {}
    for namespace, labels in groups:
        by_namespace.setdefault(namespace, []).append(labels)
    outside = ({"key": _NAMESPACE_KEY, "operator": "NotIn", "values": sorted(by_namespace)} if by_namespace
               else {"key": _NAMESPACE_KEY, "operator": "Exists"})
    selectors: list[dict[str, Any]] = [{"matchExpressions": [outside]}]
    for namespace, label_sets in sorted(by_namespace.items()):
        # Not in any group of this namespace: for each group, one of its labels differs.
        for choice in product(*[sorted(labels.items()) for labels in label_sets]):
            expressions = [{"key": f"k8s:{key}", "operator": "NotIn", "values": [value]} for key, value in choice]
            selectors.append({"matchLabels": {_NAMESPACE_KEY: namespace}, "matchExpressions": expressions})
    return selectors


def in_cluster_deny(dns: DnsDestination, canary: Canary | None) -> list[dict[str, Any]]:
    """``egressDeny`` rules for the cluster's own endpoints an allowlist does not reach: all of
    them but the DNS pods and the canary's pods, and those on every port but theirs. A deny wins
    over every allow, so what the session does reach stays out of it."""
    exempt: list[tuple[str, dict[str, str]]] = []
    deny: list[dict[str, Any]] = []
    if dns.kind == "cluster":
        exempt.append(("kube-system", {"k8s-app": "kube-dns"}))
        deny.append({"toEndpoints": [_selector("kube-system", {"k8s-app": "kube-dns"})],
                     "toPorts": deny_ports(every_port_but((("UDP", 53), ("TCP", 53))))})
    if canary is not None:
        exempt.append((canary.namespace, dict(canary.pod_labels)))  # its own rule denies the rest of it
    if dns.kind == "any":
        # Port 53 anywhere, cluster pods included: they are denied every other port.
        deny.append({"toEndpoints": _all_but(exempt), "toPorts": deny_ports(every_port_but((("UDP", 53), ("TCP", 53))))})
    else:
        deny.append({"toEndpoints": _all_but(exempt)})
    return deny


def allowlist_complement(policy: EgressPolicy, dns: DnsDestination) -> list[dict[str, Any]]:
    """``egressDeny`` rules for everything outside the cluster that an address-only allowlist
    (and the DNS rule) does not allow, so that no other policy can widen it. Endpoints of the
    cluster are reached only through selectors (DNS, the canary) and are not CIDR-matched by
    Cilium, so they are neither denied here nor opened by the app's CIDR rules."""
    allowed: list[tuple[Any, PortSet]] = [(rule.network, port_set(rule)) for rule in policy.rules
                                          if rule.network is not None]
    resolvers = _EVERYWHERE if dns.kind == "any" else dns.cidrs
    allowed.extend((ipaddress.ip_network(cidr), _DNS_PORTS) for cidr in resolvers)
    deny = []
    for region in denied_regions(allowed):
        rule: dict[str, Any] = {"toCIDRSet": [{"cidr": region.network,
                                               **({"except": list(region.excepted)} if region.excepted else {})}]}
        if region.ports is not None:
            rule["toPorts"] = deny_ports(region.ports)
        deny.append(rule)
    return deny


def cilium_egress(policy: EgressPolicy, dns: DnsDestination,
                  canary: Canary | None = None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(egress, egressDeny) of a session's CiliumNetworkPolicy."""
    egress = dns_rules(dns, proxied=policy.names_hosts)
    deny: list[dict[str, Any]] = []
    if canary is not None:
        canary_pods = [_selector(canary.namespace, dict(canary.pod_labels))]
        egress.append({"toEndpoints": canary_pods,
                       "toPorts": [{"ports": [{"port": str(canary.open_port), "protocol": "TCP"}]}]})
        # The rest of the canary denied by this policy itself: its closed port blocked proves
        # that this policy is enforced, whatever another policy allows (without the deny, an
        # allow-all NetworkPolicy beside the session would hold it at its wait for ever).
        deny.append({"toEndpoints": canary_pods, "toPorts": deny_ports(every_port_but((("TCP", canary.open_port),)))})
    for ports, members in grouped_by_port_set(policy.rules):
        if policy.mode == "allowlist":
            egress.extend(_destinations(members, ports))
        else:
            # The resolvers the operator named stay reachable, as on every backend: DNS always.
            deny.extend(_destinations(members, ports, keep_open=dns.cidrs))
    if policy.mode == "denylist":
        egress.append({"toCIDRSet": [{"cidr": cidr} for cidr in _EVERYWHERE]})
    else:
        deny.extend(in_cluster_deny(dns, canary))
        if not policy.names_hosts:
            deny.extend(allowlist_complement(policy, dns))
    return egress, deny


def render_cilium_network_policy(pod: SessionPod, policy: EgressPolicy, dns: DnsDestination,
                                 canary: Canary | None = None) -> dict[str, Any]:
    """The CiliumNetworkPolicy for ``pod``'s session, owned by it like the NetworkPolicy."""
    labels = session_labels(pod)
    egress, deny = cilium_egress(policy, dns, canary)
    spec: dict[str, Any] = {"endpointSelector": session_selector(pod.session_id), "egress": egress}
    if deny:
        spec["egressDeny"] = deny
    return {
        "apiVersion": CILIUM_API_VERSION,
        "kind": "CiliumNetworkPolicy",
        "metadata": {
            "name": pod.policy_name,
            "namespace": pod.namespace,
            "labels": labels,
            "ownerReferences": [pod_owner(pod)],
        },
        "spec": spec,
    }


__all__ = ["CILIUM_API_VERSION", "cilium_egress", "deny_ports", "dns_rules", "every_port_but", "in_cluster_deny",
           "render_cilium_network_policy"]

