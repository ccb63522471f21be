"""Does one egress rule match one packet? For each kind of policy, as its dataplane reads it.

The answer has three values: True, False, and None where it depends on what cannot be known here
(the addresses a name resolves to, a CIDR group's contents, a Service a toServices rule names).
explain/decide.py turns a None that could change the outcome into "unknown", never into a guess.

How a destination is matched differs by dataplane, and that difference is what the node matrix
showed (tests/node_matrix.py): on Cilium a CIDR (an ipBlock, toCIDR, a ClusterNetworkPolicy's
``networks``) matches only addresses outside the cluster, never a pod or a node, which are reached
by selectors and entities; a NetworkPolicy dataplane such as kube-router matches an ipBlock against
any address, pods and nodes included. Pure.
"""

from __future__ import annotations

import fnmatch
import ipaddress
from collections.abc import Mapping
from typing import Any, Final

from sortie_egress.effective.cilium import plain_key
from sortie_egress.effective.networkpolicy import selector_matches
from sortie_egress.explain.view import Endpoint, Packet

Match = bool | None
_PORT_PROTOCOLS: Final = ("TCP", "UDP", "SCTP")
_NAMESPACE_LABEL: Final = "io.kubernetes.pod.namespace"
_NAMESPACE_NAME: Final = "kubernetes.io/metadata.name"


def any_of(results: list[Match]) -> Match:
    """True if one is True, else None if one is None, else False."""
    if any(result is True for result in results):
        return True
    return None if any(result is None for result in results) else False


def all_of(results: list[Match]) -> Match:
    if any(result is False for result in results):
        return False
    return None if any(result is None for result in results) else True


# --- destinations by address ------------------------------------------------------------------

def _in_block(address: Any, cidr: str, excepted: list[str]) -> bool:
    network = ipaddress.ip_network(cidr, strict=False)
    if address.version != network.version or address not in network:
        return False
    return not any(address in ipaddress.ip_network(text, strict=False) for text in excepted
                   if ipaddress.ip_network(text, strict=False).version == address.version)


def cidr_match(endpoint: Endpoint, cidr: str, excepted: list[str], dataplane: str) -> Match:
    """An address block against the endpoint: on Cilium only outside the cluster."""
    if endpoint.identity == "name":
        # Where it resolves is not known here; a block of every address of a family still may miss
        # the other family, so even 0.0.0.0/0 is an "it depends".
        return None
    if dataplane == "cilium" and endpoint.identity != "world":
        return False
    return _in_block(endpoint.network(), cidr, excepted)


# --- traffic ------------------------------------------------------------------------------------

def _named_port(endpoint: Endpoint, name: str, protocol: str, port: int | None) -> bool:
    return endpoint.identity == "pod" and any(
        entry == (name, protocol, port) for entry in endpoint.named_ports)


def network_policy_ports(rule: Mapping[str, Any], packet: Packet) -> bool:
    ports = rule.get("ports")
    if not ports:
        return True  # every port of every protocol, and protocols without ports
    if packet.port is None:
        return False
    for entry in ports:
        if str(entry.get("protocol") or "TCP") != packet.protocol:
            continue
        port = entry.get("port")
        if port is None:
            return True
        if isinstance(port, str):
            if _named_port(packet.endpoint, port, packet.protocol, packet.port):
                return True
            continue
        if int(port) <= packet.port <= int(entry.get("endPort") or port):
            return True
    return False


def cilium_ports(rule: Mapping[str, Any], packet: Packet) -> bool:
    to_ports, icmps = rule.get("toPorts"), rule.get("icmps")
    if packet.port is None:  # ICMP
        return bool(icmps) or not to_ports
    if not to_ports:
        return not icmps
    for entry in to_ports:
        for port in entry.get("ports") or [{}]:
            protocol = str(port.get("protocol") or "ANY").upper()
            if protocol != "ANY" and protocol != packet.protocol or packet.protocol not in _PORT_PROTOCOLS:
                continue
            text = str(port.get("port") or "0")
            if not text.isdigit():
                if _named_port(packet.endpoint, text, packet.protocol, packet.port):
                    return True
                continue
            if int(text) == 0 or int(text) <= packet.port <= int(port.get("endPort") or text):
                return True
    return False


def cluster_policy_ports(rule: Mapping[str, Any], packet: Packet) -> bool:
    protocols = rule.get("protocols")
    if not protocols:
        return True
    if packet.port is None:
        return False
    for entry in protocols:
        if not isinstance(entry, Mapping):
            continue
        if "destinationNamedPort" in entry and _named_port(packet.endpoint, str(entry["destinationNamedPort"]),
                                                           packet.protocol, packet.port):
            return True
        block = entry.get(packet.protocol.lower())
        if block is None:
            continue
        port = (block or {}).get("destinationPort")
        if not port:
            return True
        if "number" in port and int(port["number"]) == packet.port:
            return True
        if "range" in port and int(port["range"].get("start", 1)) <= packet.port <= int(port["range"].get("end", 65535)):
            return True
    return False


# --- NetworkPolicy --------------------------------------------------------------------------------

def _pod_peer(peer: Mapping[str, Any], policy_namespace: str, endpoint: Endpoint) -> bool:
    if endpoint.identity != "pod":
        return False
    if "namespaceSelector" in peer:
        if not selector_matches(peer.get("namespaceSelector"), {**endpoint.namespace_labels,
                                                                _NAMESPACE_NAME: str(endpoint.namespace)}):
            return False
    elif endpoint.namespace != policy_namespace:
        return False
    return selector_matches(peer.get("podSelector"), endpoint.labels)


def network_policy_rule(rule: Mapping[str, Any], policy_namespace: str, packet: Packet, dataplane: str) -> Match:
    if not network_policy_ports(rule, packet):
        return False
    peers = rule.get("to")
    if not peers:
        return True
    results: list[Match] = []
    for peer in peers:
        block = peer.get("ipBlock")
        if block is not None:
            results.append(cidr_match(packet.endpoint, str(block.get("cidr")), list(block.get("except") or []), dataplane))
        else:
            results.append(_pod_peer(peer, policy_namespace, packet.endpoint))
    return any_of(results)


# --- Cilium ---------------------------------------------------------------------------------------

def _cilium_key(key: str) -> str | None:
    """A selector key as explain's endpoint labels spell it: as a pod's label key
    (effective/cilium.plain_key), but ``reserved:`` kept, since explain's nodes carry those."""
    return key if key.startswith("reserved:") else plain_key(key)


def cilium_labels(endpoint: Endpoint, session_node: str | None) -> dict[str, str]:
    """The labels Cilium gives the endpoint's identity (for endpoint selectors)."""
    if endpoint.identity == "pod":
        labels = {**endpoint.labels, _NAMESPACE_LABEL: str(endpoint.namespace),
                  "io.cilium.k8s.policy.serviceaccount": str(endpoint.service_account or "default"),
                  "io.cilium.k8s.policy.cluster": "default"}
        labels.update({f"io.cilium.k8s.namespace.labels.{key}": value for key, value in endpoint.namespace_labels.items()})
        return labels
    if endpoint.identity == "node":
        return {"reserved:host" if endpoint.name == session_node else "reserved:remote-node": ""}
    return {"reserved:world": ""}


def cilium_selector_match(selector: Mapping[str, Any], endpoint: Endpoint, session_node: str | None,
                          namespace: str | None) -> Match:
    """A ``toEndpoints`` selector: pods by their labels (``namespace``: a namespaced policy's own,
    required unless the selector names one), other identities only by their ``reserved:`` labels."""
    if endpoint.identity == "name":
        return False  # a name outside the cluster is no endpoint of it
    plain: dict[str, Any] = {"matchLabels": {}, "matchExpressions": []}
    for key, value in (selector.get("matchLabels") or {}).items():
        name = _cilium_key(str(key))
        if name is None:
            return False
        plain["matchLabels"][name] = value
    for expression in selector.get("matchExpressions") or []:
        name = _cilium_key(str(expression.get("key", "")))
        if name is None:
            return False
        plain["matchExpressions"].append({**expression, "key": name})
    keys = set(plain["matchLabels"]) | {e["key"] for e in plain["matchExpressions"]}
    reserved = any(key.startswith("reserved:") for key in keys)
    if (endpoint.identity == "pod") == reserved:
        return False  # a pod selector never matches a node or the world, nor a reserved one a pod
    if endpoint.identity == "pod" and namespace is not None and _NAMESPACE_LABEL not in keys:
        plain["matchLabels"][_NAMESPACE_LABEL] = namespace
    return selector_matches(plain, cilium_labels(endpoint, session_node))


def _entity(entity: str, endpoint: Endpoint, session_node: str | None) -> Match:
    identity = endpoint.identity
    if entity == "all":
        return True
    if entity in ("world", "world-ipv4", "world-ipv6"):
        if identity == "name":
            return True if entity == "world" else None
        if identity != "world":
            return False
        return entity == "world" or endpoint.network().version == (4 if entity == "world-ipv4" else 6)  # type: ignore[union-attr]
    if entity == "cluster":
        return identity in ("pod", "node")
    if entity == "host":
        return identity == "node" and endpoint.name == session_node
    if entity == "remote-node":
        return identity == "node" and endpoint.name != session_node
    if entity == "kube-apiserver":
        return None if identity == "node" else False  # the API server may run on a node: not known here
    return False  # health, init, ingress, unmanaged: endpoints explain does not ask about


def _name_pattern(pattern: str, name: str) -> bool:
    """Cilium's matchPattern: ``*`` one label's characters, ``**.`` any number of labels."""
    if pattern.startswith("**."):
        return name.endswith(pattern[2:]) and name != pattern[3:]
    return fnmatch.fnmatchcase(name, pattern.replace("*", "[!.]*") if "*" in pattern else pattern)


def cilium_rule(rule: Mapping[str, Any], packet: Packet, session_node: str | None, namespace: str | None,
                dataplane: str = "cilium") -> Match:
    """A Cilium egress or egressDeny rule; ``namespace``: the policy's (None: clusterwide)."""
    if not cilium_ports(rule, packet):
        return False
    endpoint = packet.endpoint
    destinations = ("toCIDR", "toCIDRSet", "toEntities", "toEndpoints", "toFQDNs", "toServices", "toNodes", "toGroups")
    if not any(rule.get(field) for field in destinations):
        return True
    results: list[Match] = [cidr_match(endpoint, str(cidr), [], dataplane) for cidr in rule.get("toCIDR") or []]
    for entry in rule.get("toCIDRSet") or []:
        results.append(cidr_match(endpoint, str(entry["cidr"]), list(entry.get("except") or []), dataplane)
                       if entry.get("cidr") else None)
    results += [_entity(str(entity), endpoint, session_node) for entity in rule.get("toEntities") or []]
    results += [cilium_selector_match(selector, endpoint, session_node, namespace)
                for selector in rule.get("toEndpoints") or [] if isinstance(selector, Mapping)]
    for selector in rule.get("toFQDNs") or []:
        if endpoint.identity == "name":
            results.append(endpoint.name == str(selector.get("matchName", "")).lower().rstrip(".")
                           or _name_pattern(str(selector.get("matchPattern", "")).lower(), str(endpoint.name)))
        elif endpoint.identity == "world":
            results.append(None)  # the address may be one the name resolved to
        else:
            results.append(False)
    for selector in rule.get("toNodes") or []:
        results.append(endpoint.identity == "node" and selector_matches(selector, endpoint.node_labels))
    if rule.get("toServices") or rule.get("toGroups"):
        results.append(None)
    return any_of(results)


# --- ClusterNetworkPolicy -----------------------------------------------------------------------

def namespace_selected(selector: Mapping[str, Any] | None, name: str, labels: Mapping[str, str]) -> bool:
    return selector_matches(selector, {**labels, _NAMESPACE_NAME: name})


def _domain(pattern: str, name: str) -> bool:
    pattern = pattern.lower().rstrip(".")
    return name.endswith(pattern[1:]) and name.count(".") >= pattern.count(".") if pattern.startswith("*.") else name == pattern


def cluster_policy_rule(rule: Mapping[str, Any], packet: Packet, dataplane: str) -> Match:
    if not cluster_policy_ports(rule, packet):
        return False
    endpoint = packet.endpoint
    results: list[Match] = []
    for peer in rule.get("to") or []:
        if not isinstance(peer, Mapping):
            continue
        results += [cidr_match(endpoint, str(network), [], dataplane) for network in peer.get("networks") or []]
        if isinstance(peer.get("pods"), Mapping) and endpoint.identity == "pod":
            pods = peer["pods"]
            results.append(namespace_selected(pods.get("namespaceSelector"), str(endpoint.namespace), endpoint.namespace_labels)
                           and selector_matches(pods.get("podSelector"), endpoint.labels))
        if isinstance(peer.get("namespaces"), Mapping) and endpoint.identity == "pod":
            results.append(namespace_selected(peer["namespaces"], str(endpoint.namespace), endpoint.namespace_labels))
        if "nodes" in peer and endpoint.identity == "node":
            results.append(selector_matches(peer.get("nodes"), endpoint.node_labels))
        for pattern in peer.get("domainNames") or []:
            if endpoint.identity == "name":
                results.append(_domain(str(pattern), str(endpoint.name)))
            elif endpoint.identity == "world":
                results.append(None)
    return any_of(results)


__all__ = ["Match", "all_of", "any_of", "cidr_match", "cilium_labels", "cilium_rule", "cilium_selector_match",
           "cluster_policy_rule", "namespace_selected", "network_policy_rule"]
