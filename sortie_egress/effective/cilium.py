"""Effective egress, part two: what a CiliumNetworkPolicy (or CiliumClusterwideNetworkPolicy) lets a session pod reach.

On Cilium, a CiliumNetworkPolicy's allows are a union with every NetworkPolicy's, so one that
selects a session pod can widen it just as a NetworkPolicy can (CONTRACT §4). This module reads
a CiliumNetworkPolicy as the same allowances effective/networkpolicy.py compares (destinations and traffic),
so both kinds are judged by one comparison. Pure, like effective/networkpolicy.py.

Read in the direction of telling the operator:

- ``toCIDR``/``toCIDRSet`` are address sets (``except`` honoured; a CIDR group is not knowable
  here, so it is never covered);
- ``toEntities``: ``all`` is every destination, ``world`` every address outside the cluster
  (0.0.0.0/0 and ::/0); every other entity (``cluster``, ``host``, ``remote-node``,
  ``kube-apiserver``...) is covered only by a session rule that allows every destination;
- ``toEndpoints`` selectors become the NetworkPolicy peer they mean (a namespace label makes a
  ``namespaceSelector``; without one, the policy's own namespace), so the DNS and canary peers of
  the session's own policy cover their look-alikes, and nothing else is assumed;
- ``toFQDNs``, ``toServices``, ``toNodes`` and ``toGroups`` are never covered (what they reach
  is decided at run time);
- a rule with no destination field allows every destination; ``toPorts`` absent allows every
  protocol (ICMP included), a port of ``0`` or a named port every port of its protocol, and
  ``ANY`` is TCP, UDP and SCTP; ``icmps`` is traffic without ports;
- a CiliumClusterwideNetworkPolicy is read alike, except that its endpointSelector selects in
  every namespace (a ``k8s:io.kubernetes.pod.namespace`` label narrows it) and a ``toEndpoints``
  selector without a namespace label means pods of every namespace; a ``nodeSelector`` spec
  (a host policy) selects no pod;
- ``egressDeny`` and ``toRequires`` only narrow: left out (the report may then name a rule whose
  reach a deny takes back, never miss one).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Final

from sortie_egress.effective.networkpolicy import PORT_PROTOCOLS, PORTLESS, Addresses, Allowance, Peer, Traffic, all_traffic, selector_matches

_NAMESPACE_LABEL: Final = "io.kubernetes.pod.namespace"
_SOURCES: Final = ("k8s:", "any:")
_EVERYWHERE: Final = ({"cidr": "0.0.0.0/0"}, {"cidr": "::/0"})
_UNKNOWABLE: Final = ("toFQDNs", "toServices", "toNodes", "toGroups")
_DESTINATIONS: Final = ("toCIDR", "toCIDRSet", "toEntities", "toEndpoints", *_UNKNOWABLE)


CLUSTERWIDE_KIND: Final = "CiliumClusterwideNetworkPolicy"


def is_cilium_policy(policy: Mapping[str, Any]) -> bool:
    """A CiliumNetworkPolicy or CiliumClusterwideNetworkPolicy (by its kind, or by its shape when a
    projection dropped the kind: then namespaced)."""
    if policy.get("kind"):
        return policy.get("kind") in ("CiliumNetworkPolicy", CLUSTERWIDE_KIND)
    specs = _specs(policy)
    return bool(specs) and all("podSelector" not in spec for spec in specs)


def _specs(policy: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """``spec`` and ``specs``: a CiliumNetworkPolicy may carry either, or both."""
    specs = [policy["spec"]] if isinstance(policy.get("spec"), Mapping) else []
    specs += [spec for spec in policy.get("specs") or [] if isinstance(spec, Mapping)]
    return specs


def plain_key(key: str) -> str | None:
    """A Cilium label key as the pod's label key; None for a source no pod label has (reserved:...)."""
    for source in _SOURCES:
        if key.startswith(source):
            return key[len(source):]
    return None if ":" in key.split("/", 1)[0] else key


def _plain_selector(selector: Mapping[str, Any]) -> dict[str, Any] | None:
    """A Cilium endpoint selector with its keys as pod label keys; None if it names a label no pod has."""
    labels: dict[str, Any] = {}
    for key, value in (selector.get("matchLabels") or {}).items():
        plain = plain_key(str(key))
        if plain is None:
            return None
        labels[plain] = value
    expressions = []
    for expression in selector.get("matchExpressions") or []:
        plain = plain_key(str(expression.get("key", "")))
        if plain is None:
            return None
        expressions.append({**expression, "key": plain})
    return {"matchLabels": labels, "matchExpressions": expressions}


def _clusterwide(policy: Mapping[str, Any]) -> bool:
    return policy.get("kind") == CLUSTERWIDE_KIND


def selecting_specs(policy: Mapping[str, Any], namespace: str, labels: Mapping[str, str]) -> list[Mapping[str, Any]]:
    """The specs of a CiliumNetworkPolicy (in its namespace) or CiliumClusterwideNetworkPolicy
    whose endpointSelector selects a pod in ``namespace`` with ``labels``."""
    if not _clusterwide(policy) and (policy.get("metadata") or {}).get("namespace") != namespace:
        return []
    endpoint_labels = {**labels, _NAMESPACE_LABEL: namespace}
    chosen = []
    for spec in _specs(policy):
        selector = spec.get("endpointSelector")
        plain = _plain_selector(selector) if isinstance(selector, Mapping) else None
        if plain is not None and selector_matches(plain, endpoint_labels):
            chosen.append(spec)
    return chosen


def selects(policy: Mapping[str, Any], namespace: str, labels: Mapping[str, str]) -> bool:
    """Whether a CiliumNetworkPolicy selects a pod with ``labels`` in ``namespace`` (any of its specs)."""
    return bool(selecting_specs(policy, namespace, labels))


def _endpoint_peer(selector: Mapping[str, Any], clusterwide: bool = False) -> Peer:
    """A ``toEndpoints`` selector as the NetworkPolicy peer it means (effective._peers' canonical
    form); in a clusterwide policy, one without a namespace label means every namespace."""
    plain = _plain_selector(selector)
    if plain is None:
        return Peer(label=f"endpoints {json.dumps(dict(selector), sort_keys=True)}")
    namespaces = plain["matchLabels"].pop(_NAMESPACE_LABEL, None)
    namespace_expressions = [e for e in plain["matchExpressions"] if e.get("key") == _NAMESPACE_LABEL]
    plain["matchExpressions"] = [e for e in plain["matchExpressions"] if e.get("key") != _NAMESPACE_LABEL]
    peer: dict[str, Any] = {"podSelector": _compact(plain)}
    if namespaces is not None or namespace_expressions:
        namespace_selector: dict[str, Any] = {"matchLabels": {} if namespaces is None else {"kubernetes.io/metadata.name": namespaces},
                                              "matchExpressions": [{**e, "key": "kubernetes.io/metadata.name"}
                                                                   for e in namespace_expressions]}
        peer["namespaceSelector"] = _compact(namespace_selector)
    elif clusterwide:
        peer["namespaceSelector"] = {}
    return Peer(selector=json.dumps(peer, sort_keys=True, separators=(",", ":")))


def _compact(selector: dict[str, Any]) -> dict[str, Any]:
    """Empty parts left out, as a NetworkPolicy manifest leaves them."""
    return {key: value for key, value in selector.items() if value}


def _peers(rule: Mapping[str, Any], clusterwide: bool = False) -> list[Peer]:
    if not any(rule.get(field) for field in _DESTINATIONS):
        return [Peer(anywhere=True)]
    peers = [Peer(addresses=Addresses.of_block({"cidr": cidr})) for cidr in rule.get("toCIDR") or []]
    for entry in rule.get("toCIDRSet") or []:
        if entry.get("cidr"):
            peers.append(Peer(addresses=Addresses.of_block(entry)))
        else:
            peers.append(Peer(label="a CiliumCIDRGroup"))
    for entity in rule.get("toEntities") or []:
        if entity == "all":
            peers.append(Peer(anywhere=True))
        elif entity == "world":
            v4, v6 = (Addresses.of_block(block) for block in _EVERYWHERE)
            peers.append(Peer(addresses=Addresses(v4=v4.v4, v6=v6.v6)))
        elif entity in ("world-ipv4", "world-ipv6"):
            peers.append(Peer(addresses=Addresses.of_block(_EVERYWHERE[0 if entity == "world-ipv4" else 1])))
        else:
            peers.append(Peer(label=f"the Cilium entity {entity}"))
    peers.extend(_endpoint_peer(selector, clusterwide)
                 for selector in rule.get("toEndpoints") or [] if isinstance(selector, Mapping))
    for field in _UNKNOWABLE:
        if rule.get(field):
            peers.append(Peer(label=f"{field} {json.dumps(rule[field], sort_keys=True)[:120]}"))
    return peers


def _traffic(rule: Mapping[str, Any]) -> list[Traffic]:
    to_ports = rule.get("toPorts")
    icmps = bool(rule.get("icmps"))
    if not to_ports:
        if icmps:
            return [Traffic(PORTLESS)]
        return all_traffic()
    out = [Traffic(PORTLESS)] if icmps else []
    for entry in to_ports:
        for port in entry.get("ports") or [{}]:
            protocol = str(port.get("protocol") or "ANY").upper()
            protocols = PORT_PROTOCOLS if protocol == "ANY" else (protocol,)
            text = str(port.get("port") or "0")
            for name in protocols:
                if not text.isdigit() or int(text) == 0:  # every port, or a named one: judged as every port
                    out.append(Traffic(name))
                else:
                    out.append(Traffic(name, int(text), int(port.get("endPort") or text)))
    return out


def cilium_allowances(policy: Mapping[str, Any], namespace: str, labels: Mapping[str, str]) -> list[Allowance]:
    """Every egress allow a CiliumNetworkPolicy (or clusterwide one) gives a pod with ``labels`` in
    ``namespace``, in order (``spec``, then the ``specs`` that select it)."""
    clusterwide = _clusterwide(policy)
    return [Allowance(tuple(_peers(rule, clusterwide)), tuple(_traffic(rule)))
            for spec in selecting_specs(policy, namespace, labels)
            for rule in spec.get("egress") or [] if isinstance(rule, Mapping)]


__all__ = ["CLUSTERWIDE_KIND", "cilium_allowances", "is_cilium_policy", "selecting_specs", "selects"]
