"""What ``explain`` reads of the cluster, and the destination as the dataplane sees it.

A packet's fate depends on more than the policies: which identity its destination has (a pod with
labels, a node, an address outside the cluster), which port it reaches after a Service's
translation (kube-proxy and Cilium both judge egress against the endpoint, not the ClusterIP), and
which pod sends it. ``ExplainView`` holds those objects as the API returns them, read once by
kube/snapshot.read_explain_view; ``packets`` turns an ``Asked`` into the packets it stands for.
Pure: a test builds a view by hand.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from sortie_egress.effective.networkpolicy import selector_matches
from sortie_egress.explain.asked import Asked

Identity = Literal["world", "pod", "node", "name"]
#: The dataplanes explain knows: ``cilium`` (what Cilium enforces: its own kinds, NetworkPolicy,
#: ClusterNetworkPolicy; CIDRs reach only addresses outside the cluster) and ``networkpolicy`` (a
#: CNI that enforces NetworkPolicy by address, as kube-router, Calico and Antrea do: an ipBlock
#: also matches pod and node addresses).
DATAPLANES: Final = ("cilium", "networkpolicy")


@dataclass(frozen=True, slots=True)
class Endpoint:
    """The other end of a packet: ``identity`` says how a policy can match it."""

    identity: Identity
    address: str | None = None
    namespace: str | None = None
    name: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    namespace_labels: Mapping[str, str] = field(default_factory=dict)
    #: The node a pod runs on, or the node itself.
    node: str | None = None
    node_labels: Mapping[str, str] = field(default_factory=dict)
    service_account: str | None = None
    #: A pod's named container ports: (name, protocol, number).
    named_ports: tuple[tuple[str, str, int], ...] = ()

    def describe(self) -> str:
        if self.identity == "pod":
            return f"pod {self.namespace}/{self.name} ({self.address})"
        if self.identity == "node":
            return f"node {self.name} ({self.address})"
        if self.identity == "name":
            return f"the name {self.name}"
        return f"{self.address} (outside the cluster)"

    def network(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
        return ipaddress.ip_address(self.address) if self.address else None


@dataclass(frozen=True, slots=True)
class Packet:
    """One packet from the session pod: to ``endpoint``, ``protocol`` and destination ``port``
    (None: ICMP), after any Service's translation (``via``: which one)."""

    endpoint: Endpoint
    protocol: str
    port: int | None
    via: str | None = None

    def describe(self) -> str:
        traffic = self.protocol if self.port is None else f"{self.protocol} {self.port}"
        return f"{traffic} to {self.endpoint.describe()}" + (f" via {self.via}" if self.via else "")


@dataclass(frozen=True)
class ExplainView:
    """The session pod and what decides its egress, as read from the cluster."""

    pod: dict[str, Any]
    dataplane: str
    #: Namespace name -> its labels (those read: the pod's, and the destinations').
    namespaces: dict[str, dict[str, str]]
    #: The NetworkPolicies of the pod's namespace.
    network_policies: list[dict[str, Any]] = field(default_factory=list)
    #: CiliumNetworkPolicies of the pod's namespace and CiliumClusterwideNetworkPolicies, with their kind.
    cilium_policies: list[dict[str, Any]] = field(default_factory=list)
    #: ClusterNetworkPolicies (policy.networking.k8s.io), with their kind.
    cluster_policies: list[dict[str, Any]] = field(default_factory=list)
    #: Candidate destinations: pods (by address or name), Services, Nodes.
    pods: list[dict[str, Any]] = field(default_factory=list)
    services: list[dict[str, Any]] = field(default_factory=list)
    nodes: list[dict[str, Any]] = field(default_factory=list)
    #: What could not be read or is not served, said with every answer.
    notes: tuple[str, ...] = ()
    #: The session's own object: (kind, name); the controller names it so.
    session_object: tuple[str, str] | None = None
    #: audit's state of the pod (ok, widened, gated, ...) and its detail.
    state: tuple[str, str] | None = None

    @property
    def namespace(self) -> str:
        return str((self.pod.get("metadata") or {}).get("namespace") or "default")

    @property
    def labels(self) -> dict[str, str]:
        return dict((self.pod.get("metadata") or {}).get("labels") or {})

    @property
    def node(self) -> str | None:
        return (self.pod.get("spec") or {}).get("nodeName")


def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return obj.get("metadata") or {}


def _pod_addresses(pod: Mapping[str, Any]) -> list[str]:
    status = pod.get("status") or {}
    found = [entry.get("ip") for entry in status.get("podIPs") or [] if entry.get("ip")]
    return found or ([status["podIP"]] if status.get("podIP") else [])


def _named_ports(pod: Mapping[str, Any]) -> tuple[tuple[str, str, int], ...]:
    return tuple((port["name"], str(port.get("protocol") or "TCP"), int(port["containerPort"]))
                 for container in (pod.get("spec") or {}).get("containers") or []
                 for port in container.get("ports") or [] if port.get("name") and port.get("containerPort"))


def pod_endpoint(view: ExplainView, pod: Mapping[str, Any], address: str | None = None) -> Endpoint:
    namespace = str(_meta(pod).get("namespace") or "default")
    node = (pod.get("spec") or {}).get("nodeName")
    return Endpoint("pod", address or next(iter(_pod_addresses(pod)), None), namespace, _meta(pod).get("name"),
                    dict(_meta(pod).get("labels") or {}), view.namespaces.get(namespace, {}), node,
                    _node_labels(view, node), (pod.get("spec") or {}).get("serviceAccountName") or "default",
                    _named_ports(pod))


def _node_labels(view: ExplainView, name: str | None) -> dict[str, str]:
    found = next((node for node in view.nodes if _meta(node).get("name") == name), None)
    return dict(_meta(found).get("labels") or {}) if found else {}


def node_endpoint(node: Mapping[str, Any], address: str | None = None) -> Endpoint:
    addresses = [entry.get("address") for entry in (node.get("status") or {}).get("addresses") or []
                 if entry.get("type") in ("InternalIP", "ExternalIP")]
    name = _meta(node).get("name")
    return Endpoint("node", address or next(iter(addresses), None), name=name, node=name,
                    node_labels=dict(_meta(node).get("labels") or {}))


def _node_addresses(node: Mapping[str, Any]) -> set[str]:
    return {str(entry.get("address")) for entry in (node.get("status") or {}).get("addresses") or []
            if entry.get("type") in ("InternalIP", "ExternalIP")}


def _cluster_ips(service: Mapping[str, Any]) -> set[str]:
    spec = service.get("spec") or {}
    return {ip for ip in [spec.get("clusterIP"), *(spec.get("clusterIPs") or [])] if ip and ip != "None"}


def _running(pod: Mapping[str, Any]) -> bool:
    return (pod.get("status") or {}).get("phase") == "Running" and not _meta(pod).get("deletionTimestamp")


class Unresolvable(ValueError):
    """The destination names something that is not there (no such pod, Service, node)."""


def _find(objects: list[dict[str, Any]], namespace: str | None, name: str) -> dict[str, Any] | None:
    return next((obj for obj in objects if _meta(obj).get("name") == name
                 and (namespace is None or _meta(obj).get("namespace") == namespace)), None)


def _through_service(view: ExplainView, service: Mapping[str, Any], asked: Asked) -> tuple[list[Packet], list[str]]:
    """The packets a connection to a Service's port becomes: one per ready endpoint pod."""
    metadata, spec = _meta(service), service.get("spec") or {}
    called = f"Service {metadata.get('namespace')}/{metadata.get('name')}"
    port = next((entry for entry in spec.get("ports") or []
                 if entry.get("port") == asked.port and str(entry.get("protocol") or "TCP") == asked.protocol), None)
    if asked.protocol != "ICMP" and port is None:
        offered = ", ".join(f"{e.get('port')}/{e.get('protocol') or 'TCP'}" for e in spec.get("ports") or []) or "none"
        return [], [f"{called} has no port {asked.port}/{asked.protocol} (it has {offered}): nothing answers there"]
    selector = spec.get("selector")
    if not selector:
        return [], [f"{called} has no selector: its endpoints are kept by someone else and are not judged here; "
                    "ask about their addresses"]
    members = [pod for pod in view.pods if _meta(pod).get("namespace") == metadata.get("namespace") and _running(pod)
               and selector_matches({"matchLabels": selector}, _meta(pod).get("labels") or {})]
    if not members:
        return [], [f"{called} has no running endpoint: the connection fails whatever the policies say"]
    packets = []
    for pod in sorted(members, key=lambda pod: str(_meta(pod).get("name"))):
        endpoint = pod_endpoint(view, pod)
        target = asked.port if port is None else port.get("targetPort", port.get("port"))
        if isinstance(target, str):
            number = next((n for name, protocol, n in endpoint.named_ports if name == target and protocol == asked.protocol), None)
            if number is None:
                continue  # this endpoint does not serve the named port: kube-proxy leaves it out
            target = number
        packets.append(Packet(endpoint, asked.protocol, None if asked.protocol == "ICMP" else int(target),
                              f"{called} port {asked.port}"))
    return packets, []


def packets(view: ExplainView, asked: Asked) -> tuple[list[Packet], list[str]]:
    """The packets ``asked`` stands for (several through a Service with several endpoints), and
    what is worth saying about them. Unresolvable when it names an object that is not there."""
    port = asked.port
    namespace = asked.namespace or view.namespace
    if asked.where == "name":
        return [Packet(Endpoint("name", name=asked.host), asked.protocol, port)], []
    if asked.where == "pod":
        pod = _find(view.pods, namespace, asked.host)
        if pod is None:
            raise Unresolvable(f"no pod {namespace}/{asked.host}")
        if not _pod_addresses(pod):
            raise Unresolvable(f"pod {namespace}/{asked.host} has no address yet")
        return [Packet(pod_endpoint(view, pod), asked.protocol, port)], []
    if asked.where == "service":
        service = _find(view.services, namespace, asked.host)
        if service is None:
            raise Unresolvable(f"no Service {namespace}/{asked.host}")
        return _through_service(view, service, asked)
    if asked.where == "node":
        node = _find(view.nodes, None, asked.host)
        if node is None:
            raise Unresolvable(f"no node {asked.host}")
        return [Packet(node_endpoint(node), asked.protocol, port)], []
    address = asked.host
    for pod in view.pods:
        if address in _pod_addresses(pod) and not (pod.get("spec") or {}).get("hostNetwork"):
            return [Packet(pod_endpoint(view, pod, address), asked.protocol, port)], []
    for node in view.nodes:
        if address in _node_addresses(node):
            return [Packet(node_endpoint(node, address), asked.protocol, port)], []
    for service in view.services:
        if address in _cluster_ips(service):
            return _through_service(view, service, asked)
    return [Packet(Endpoint("world", address), asked.protocol, port)], []


__all__ = ["DATAPLANES", "Endpoint", "ExplainView", "Packet", "Unresolvable", "node_endpoint", "packets", "pod_endpoint"]
