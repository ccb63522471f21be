"""The clusternetworkpolicy backend: one Admin-tier ClusterNetworkPolicy per session.

ClusterNetworkPolicy (``policy.networking.k8s.io``, network-policy-api) evaluates the Admin tier
before any NetworkPolicy, rule by rule in order, and the first rule that matches decides:
Accept (allowed, no NetworkPolicy consulted), Deny (dropped, no NetworkPolicy consulted) or Pass.
So a session's policy is rendered *exactly* and cannot be widened by a NetworkPolicy:

1. Accept DNS to the operator's resolvers (UDP and TCP 53);
2. the enforcement canary, when the controller runs one: Accept its open port, Deny the rest of it
   (so the start-up wait sees its closed port blocked whatever the app's rules say);
3. allowlist: Accept each port set's destinations, then Deny everything: every network *and*
   every pod of the cluster (a ``pods`` peer: implementations such as Cilium's do not match their
   own endpoints by ``networks``, and a NetworkPolicy that allows a selector would otherwise open
   every pod to the session); denylist: Deny each port set's destinations (ports and protocols
   honoured), then Accept everything.

When the policy names hosts, the canary's rules come first, then the port sets that name hosts,
then DNS and the rest: Cilium sends a pod's lookups through its DNS proxy (which opens a name's
addresses) only by a rule it adds at the naming rule's place, so DNS must not be accepted before.

One egress rule per port set (policy/traffic.py, grouped_by_port_set); a rule's destinations go in peers of
at most 25 networks or 25 domain names each. Pure: the controller creates what
``sortie-egress render --backend clusternetworkpolicy`` prints.

The object is cluster-scoped, so a pod cannot own it and the garbage collector will not remove it:
the controller deletes it when the session's last pod is gone (no finalizer: nothing of ours can
leave a pod or namespace stuck terminating). Its subject names the namespace and the session id,
so it never selects another namespace's pods.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Final

from sortie_egress.policy.traffic import grouped_by_port_set
from sortie_egress.policy.model import EgressPolicy, Rule
from sortie_egress.policy.destinations import network_text
from sortie_egress.render.session import Canary, DnsDestination, session_labels, session_selector
from sortie_egress.admission.session import SessionPod

#: A ClusterNetworkPolicy holds at most 25 egress rules (network-policy-api v1alpha2/v1beta1).
CNP_MAX_EGRESS_RULES: Final = 25
#: Rules a session's ClusterNetworkPolicy needs besides the app's: DNS, the enforcement canary's
#: open port and the rest of the canary, and the final Deny (allowlist) or Accept (denylist).
CNP_FIXED_RULES: Final = 4
CNP_MAX_PORT_SETS: Final = CNP_MAX_EGRESS_RULES - CNP_FIXED_RULES
CNP_GROUP: Final = "policy.networking.k8s.io"
#: The versions we can write, preferred first: v1beta1 (network-policy-api v0.3.0) and v1alpha2
#: (v0.2.0, as Cilium 1.20 serves it). Their schemas are the same.
CNP_VERSIONS: Final = ("v1beta1", "v1alpha2")
CNP_PLURAL: Final = "clusternetworkpolicies"
#: The label that says which namespace a (cluster-scoped) session policy belongs to.
SESSION_NAMESPACE_LABEL: Final = "sortie.io/session-namespace"
#: Admin-tier precedence: lower numbers win. The operator's own guardrails (a deny of the cloud
#: metadata address, say) keep precedence over every session when given a lower number.
DEFAULT_PRIORITY: Final = 500
_PEER_ITEMS: Final = 25
_EVERYWHERE: Final = ["0.0.0.0/0", "::/0"]
_DNS_PROTOCOLS: Final = [{"udp": {"destinationPort": {"number": 53}}}, {"tcp": {"destinationPort": {"number": 53}}}]


#: ClusterNetworkPolicies are named ``sortie-egress.<namespace>.<session-id>``.
CLUSTER_POLICY_PREFIX: Final = "sortie-egress."


def cluster_policy_name(namespace: str, session_id: str) -> str:
    """``sortie-egress.<namespace>.<session-id>``: unique across namespaces (a namespace name has
    no dots) and at most 14 + 63 + 1 + 63 characters (a session id is a label value)."""
    return f"{CLUSTER_POLICY_PREFIX}{namespace}.{session_id}"


def _chunks(items: list[str]) -> Iterator[list[str]]:
    for start in range(0, len(items), _PEER_ITEMS):
        yield items[start:start + _PEER_ITEMS]


def _protocols(port_set: tuple[tuple[str, int, int], ...]) -> list[dict[str, Any]] | None:
    """A port set as ClusterNetworkPolicy protocols; None: all traffic (the field left out).
    "Every port of a protocol" is the range 1-65535 (the schema wants a port in each protocol)."""
    if not port_set:
        return None
    protocols = []
    for protocol, first, last in port_set:
        if first == 0:
            port: dict[str, Any] = {"range": {"start": 1, "end": 65535}}
        elif last > first:
            port = {"range": {"start": first, "end": last}}
        else:
            port = {"number": first}
        protocols.append({protocol.lower(): {"destinationPort": port}})
    return protocols


def _peers(rules: list[Rule]) -> list[dict[str, Any]]:
    networks = list(dict.fromkeys(network_text(rule.network) for rule in rules if rule.network is not None))
    names = list(dict.fromkeys(rule.fqdn for rule in rules if rule.fqdn is not None))
    return ([{"networks": chunk} for chunk in _chunks(networks)]
            + [{"domainNames": chunk} for chunk in _chunks(names)])


def _rule(name: str, action: str, to: list[dict[str, Any]], protocols: list[dict[str, Any]] | None) -> dict[str, Any]:
    rule: dict[str, Any] = {"name": name, "action": action, "to": to}
    if protocols is not None:
        rule["protocols"] = protocols
    return rule


def _dns_peers(dns: DnsDestination) -> list[dict[str, Any]]:
    if dns.kind == "any":
        return [{"networks": list(_EVERYWHERE)}]
    peers: list[dict[str, Any]] = []
    if dns.kind == "cluster":
        peers.append({"pods": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
                               "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}})
    peers.extend({"networks": chunk} for chunk in _chunks(list(dns.cidrs)))
    return peers


def _canary_rules(canary: Canary) -> list[dict[str, Any]]:
    pods = [{"pods": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": canary.namespace}},
                      "podSelector": {"matchLabels": dict(canary.pod_labels)}}}]
    return [_rule("enforcement-canary-open", "Accept", pods, [{"tcp": {"destinationPort": {"number": canary.open_port}}}]),
            _rule("enforcement-canary-rest", "Deny", pods, None)]


def cluster_egress_rules(policy: EgressPolicy, dns: DnsDestination, canary: Canary | None = None) -> list[dict[str, Any]]:
    """The ordered egress rules of a session's ClusterNetworkPolicy."""
    dns_rule = _rule("dns", "Accept", _dns_peers(dns), [dict(protocol) for protocol in _DNS_PROTOCOLS])
    canary_rules = _canary_rules(canary) if canary is not None else []
    action, rest = ("Accept", "Deny") if policy.mode == "allowlist" else ("Deny", "Accept")
    naming, addressing = [], []
    for index, (port_set, members) in enumerate(grouped_by_port_set(policy.rules), start=1):
        rule = _rule(f"{policy.mode}-{index}", action, _peers(members), _protocols(port_set))
        (naming if any(member.fqdn is not None for member in members) else addressing).append(rule)
    if naming:
        # Rules that name hosts come before the DNS rule: Cilium enforces domainNames by sending the
        # pod's lookups through its DNS proxy with a rule it adds at the naming rule's place, and a
        # plain DNS Accept before it would take the lookups past the proxy (the names' addresses
        # would then never open). Accept before Accept changes nothing on other dataplanes; the
        # canary's rules stay first, so no name can open its closed port.
        rules = [*canary_rules, *naming, dns_rule, *addressing]
    else:
        rules = [dns_rule, *canary_rules, *addressing]
    everything: list[dict[str, Any]] = [{"networks": list(_EVERYWHERE)}]
    if policy.mode == "allowlist":  # after DNS, the canary and the app's Accepts: they keep their pods
        everything.append({"pods": {"namespaceSelector": {}, "podSelector": {}}})
    rules.append(_rule("everything-else", rest, everything, None))
    if len(rules) > CNP_MAX_EGRESS_RULES:  # admission refuses such policies (backends/clusternetworkpolicy.py)
        raise ValueError(f"{len(rules)} egress rules; a ClusterNetworkPolicy holds {CNP_MAX_EGRESS_RULES}")
    return rules


def render_cluster_network_policy(pod: SessionPod, policy: EgressPolicy, dns: DnsDestination,
                                  canary: Canary | None = None, version: str = CNP_VERSIONS[0],
                                  priority: int = DEFAULT_PRIORITY) -> dict[str, Any]:
    """The ClusterNetworkPolicy for ``pod``'s session. No owner: the controller deletes it (and, as
    for a NetworkPolicy, adds the digest of what it enforces)."""
    labels = session_labels(pod, {SESSION_NAMESPACE_LABEL: pod.namespace})
    return {
        "apiVersion": f"{CNP_GROUP}/{version}",
        "kind": "ClusterNetworkPolicy",
        "metadata": {"name": cluster_policy_name(pod.namespace, pod.session_id), "labels": labels},
        "spec": {
            "tier": "Admin",
            "priority": priority,
            "subject": {"pods": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": pod.namespace}},
                                 "podSelector": session_selector(pod.session_id)}},
            "egress": cluster_egress_rules(policy, dns, canary),
        },
    }


__all__ = ["CNP_GROUP", "CNP_VERSIONS", "DEFAULT_PRIORITY", "SESSION_NAMESPACE_LABEL", "cluster_egress_rules",
           "cluster_policy_name", "render_cluster_network_policy"]
