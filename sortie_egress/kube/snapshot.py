"""The cluster as the controller sees it, read once: what ``audit`` (and, next, ``explain``) judges.

The controller keeps the same objects in its informers' stores (controller/main.py), projected the
same way (kube/projections.py, kube/policy_objects.py), and picks what may widen a session
through the same backend method (``Backend.widening_candidates``); a snapshot is that view taken
by listing instead of watching, so the pure judges read both alike. Discovery is asked once per
question (served kind, Cilium's kinds), not once per reader.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sortie_egress import backends
from sortie_egress.backends import BackendSettings
from sortie_egress.render.session import Canary, DnsDestination

if TYPE_CHECKING:
    from sortie_egress.explain.asked import Asked
    from sortie_egress.explain.view import ExplainView


@dataclass(frozen=True)
class ClusterSnapshot:
    backend: str
    #: What the cluster serves for the backend (version), and its priority.
    settings: BackendSettings
    #: Session pods (label sortie.io/session-id), raw.
    pods: list[dict[str, Any]]
    #: Every NetworkPolicy of the namespaces read, raw.
    network_policies: list[dict[str, Any]]
    #: The backend's objects as the controller keeps them (None: they are the NetworkPolicies).
    owned: list[dict[str, Any]] | None
    #: Others' policies of the kinds the dataplane enforces beside the backend's (Cilium's).
    judged: list[dict[str, Any]]
    #: Why the node guard cannot be relied on where the controller requires it; None otherwise.
    node_guard_problem: str | None
    #: The enforcement canary every session policy opens (None: no --canary-port).
    canary: Canary | None
    #: The session's object's name, (namespace, session id) -> name.
    name_for: Callable[[str, str], str]


def _items(call: Callable[..., Any], *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
    """Every object of a list call, read in pages as the controller's informers read them."""
    from functools import partial

    from sortie_egress.kube.informer import paginated

    return paginated(partial(call, *args), **kwargs)[0]


def read_snapshot(api: Any, backend: str, namespaces: list[str], dns: DnsDestination, *, canary_port: int = 0,
                  system_namespace: str = "sortie-system", priority: int | None = None) -> ClusterSnapshot:
    """List what the controller watches. BackendUnavailable when the cluster does not serve the
    backend's kind; the client's errors (ApiException, connection errors) pass through."""
    from kubernetes import client

    from sortie_egress.constants import SESSION_ID_LABEL
    from sortie_egress.managed import is_managed
    from sortie_egress.guards import node_guard
    from sortie_egress.kube.policy_objects import clusterwide_kind, judged_kinds

    chosen = backends.get(backend)
    core, networking, custom = client.CoreV1Api(api), client.NetworkingV1Api(api), client.CustomObjectsApi(api)
    settings = chosen.served(custom, priority)
    pods: list[dict[str, Any]] = []
    policies: list[dict[str, Any]] = []
    for namespace in namespaces or [None]:
        if namespace is None:
            pods += _items(core.list_pod_for_all_namespaces, label_selector=SESSION_ID_LABEL)
            policies += _items(networking.list_network_policy_for_all_namespaces)
        else:
            pods += _items(core.list_namespaced_pod, namespace, label_selector=SESSION_ID_LABEL)
            policies += _items(networking.list_namespaced_network_policy, namespace)
    objects = chosen.objects(api, settings)
    owned: list[dict[str, Any]] | None = None
    if chosen.kind.kind != "NetworkPolicy":
        owned = []
        for namespace in namespaces or [None]:
            listing = objects.list_all if namespace is None else objects.list_namespaced(namespace)
            owned += [objects.project(obj) for obj in _items(listing)]
        if not chosen.kind.namespaced and namespaces:
            # Someone else's cluster-scoped policies carry no session namespace, and any of them
            # may widen a session (effective/clusternetworkpolicy.py): judged for every namespace.
            owned += [objects.project(obj) for obj in _items(objects.list_all) if not is_managed(obj)]
    kinds = judged_kinds(custom, backend)
    judged: list[dict[str, Any]] = []
    for kind in kinds:
        for namespace in ([None] if kind.cluster_scoped else namespaces or [None]):
            judged += [kind.project(obj) for obj in _items(kind.listing(namespace))]
    guard_problem = None
    if chosen.has(backends.NODE_GUARDED):  # required where Cilium's clusterwide kind is served
        now = dt.datetime.now(dt.timezone.utc)
        if any(kind.kind == node_guard.KIND for kind in kinds):  # listed already, as the controller keeps it
            found = next((obj for obj in judged if obj.get("kind") == node_guard.KIND
                          and (obj.get("metadata") or {}).get("name") == node_guard.NAME), None)
            guard_problem = node_guard.problem(found, dns, now)
        elif clusterwide_kind(custom) is not None:
            guard_problem = node_guard.problem(_node_guard(custom), dns, now)
    canary = None
    if canary_port:
        from sortie_egress.controller.canary import CANARY_SELECTOR, canary_for, project_canary_pod

        canary_pods = _items(core.list_namespaced_pod, system_namespace, label_selector=CANARY_SELECTOR)
        canary = canary_for(system_namespace, canary_port, [project_canary_pod(pod) for pod in canary_pods])
    return ClusterSnapshot(backend, settings, pods, policies, owned, judged, guard_problem, canary, objects.name_for)


def _node_guard(custom: Any) -> dict[str, Any] | None:
    """The node guard as stored (None: absent), where Cilium's clusterwide policies are not judged."""
    from kubernetes.client.exceptions import ApiException

    from sortie_egress.guards import node_guard
    from sortie_egress.kube.policy_objects import CILIUM_CLUSTERWIDE_PLURAL, CILIUM_GROUP, CILIUM_VERSION

    try:
        return json.loads(custom.get_cluster_custom_object(CILIUM_GROUP, CILIUM_VERSION, CILIUM_CLUSTERWIDE_PLURAL,
                                                           node_guard.NAME, _preload_content=False).data)
    except ApiException as exc:
        if exc.status != 404:
            raise
        return None


#: The controller's Lease (controller/main.ControllerOptions.lease_name), where its leader publishes its settings.
CONTROLLER_LEASE = "sortie-egress-controller"


def read_published_settings(api: Any, system_namespace: str, lease: str = CONTROLLER_LEASE) -> tuple[Any, str | None]:
    """(the installed controller's published settings, None) or (None, why they cannot be read)."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    from sortie_egress.controller.settings import SETTINGS_ANNOTATION, Published

    where = f"Lease {system_namespace}/{lease}"
    try:
        found = json.loads(client.CoordinationV1Api(api).read_namespaced_lease(
            lease, system_namespace, _preload_content=False).data)
    except ApiException as exc:
        if exc.status == 404:
            return None, f"no {where}: is the controller running there (--system-namespace), with leader election?"
        if exc.status == 403:
            return None, f"not allowed to read the {where}"
        raise
    text = ((found.get("metadata") or {}).get("annotations") or {}).get(SETTINGS_ANNOTATION)
    if text is None:
        return None, f"the {where} carries no {SETTINGS_ANNOTATION} (a controller older than this tool?)"
    try:
        return Published.decode(text), None
    except ValueError as exc:
        return None, f"the {where}'s {SETTINGS_ANNOTATION} is unreadable: {exc}"


def read_explain_view(api: Any, pod: dict[str, Any], asked: list[Asked], *, dataplane: str | None = None,
                      session_object: tuple[str, str] | None = None, state: tuple[str, str] | None = None,
                      extra: tuple[dict[str, Any], ...] = ()) -> ExplainView:
    """What ``explain`` judges a pod's egress with (explain/view.ExplainView): the policies that may
    select it (NetworkPolicies of its namespace; Cilium's kinds and ClusterNetworkPolicies where
    served), every namespace's labels, the nodes, and what the destinations ``asked`` name (pods by
    address or name, Services and their endpoints). ``extra``: objects to judge as if stored (the
    session's object ``explain -f`` renders), replacing any of the same kind and name."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    from sortie_egress.explain.view import ExplainView
    from sortie_egress.kube.policy_objects import (CILIUM_GROUP, CILIUM_PLURAL, CILIUM_VERSION, cilium_served,
                                                   cluster_policy_version, clusterwide_kind)
    from sortie_egress.render.clusternetworkpolicy import CNP_GROUP, CNP_PLURAL

    core, networking, custom = client.CoreV1Api(api), client.NetworkingV1Api(api), client.CustomObjectsApi(api)
    namespace = str((pod.get("metadata") or {}).get("namespace") or "default")
    notes: list[str] = []
    cilium = cilium_served(custom)
    chosen = dataplane or ("cilium" if cilium else "networkpolicy")
    if chosen == "networkpolicy":
        notes.append("no Cilium here: judged as a CNI that enforces NetworkPolicy by address (kube-router, Calico, "
                     "Antrea); a CNI without NetworkPolicy support enforces none of this")

    def kinded(kind: str, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{**item, "kind": kind} for item in items]

    def listed(what: str, call: Callable[..., Any], *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        """Someone with fewer rights than a cluster administrator still gets an answer, told what
        it could not take into account."""
        try:
            return _items(call, *args, **kwargs)
        except ApiException as exc:
            if exc.status != 403:
                raise
            notes.append(f"not allowed to list {what}: the verdicts do not take them into account")
            return []

    namespaces = {str(item["metadata"]["name"]): dict(item["metadata"].get("labels") or {})
                  for item in listed("namespaces (their labels)", core.list_namespace)}
    namespaces.setdefault(namespace, {"kubernetes.io/metadata.name": namespace})
    network_policies = kinded("NetworkPolicy", _items(networking.list_namespaced_network_policy, namespace))
    cilium_policies: list[dict[str, Any]] = []
    if cilium:
        cilium_policies = kinded("CiliumNetworkPolicy", _items(custom.list_namespaced_custom_object, CILIUM_GROUP,
                                                               CILIUM_VERSION, namespace, CILIUM_PLURAL))
        clusterwide = clusterwide_kind(custom)
        if clusterwide is not None:
            cilium_policies += kinded(clusterwide.kind, listed("CiliumClusterwideNetworkPolicies", clusterwide.list_all))
    cluster_policies: list[dict[str, Any]] = []
    version = cluster_policy_version(custom)
    if version is not None:
        cluster_policies = kinded("ClusterNetworkPolicy", listed("ClusterNetworkPolicies", custom.list_cluster_custom_object,
                                                                 CNP_GROUP, version, CNP_PLURAL))
        if chosen == "networkpolicy" and cluster_policies:
            notes.append("ClusterNetworkPolicies are judged as if the CNI enforces them (kube-router does not)")
    for obj in extra:
        name = (obj.get("metadata") or {}).get("name")
        for kept in (network_policies, cilium_policies, cluster_policies):
            kept[:] = [o for o in kept if not (o.get("kind") == obj.get("kind") and o["metadata"].get("name") == name)]
        {"NetworkPolicy": network_policies, "ClusterNetworkPolicy": cluster_policies}.get(
            str(obj.get("kind")), cilium_policies).append(obj)
    nodes = listed("nodes (a node's address is then taken for one outside the cluster)", core.list_node)

    def endpoints_of(service: dict[str, Any]) -> list[dict[str, Any]]:
        """The pods a Service's selector picks (explain/view.py keeps the running ones)."""
        selector = (service.get("spec") or {}).get("selector")
        if not selector:
            return []
        return _items(core.list_namespaced_pod, service["metadata"]["namespace"],
                      label_selector=",".join(f"{key}={value}" for key, value in sorted(selector.items())))

    pods: list[dict[str, Any]] = []
    services: list[dict[str, Any]] = []
    every_service: list[dict[str, Any]] | None = None
    node_addresses = {entry.get("address") for node in nodes for entry in (node.get("status") or {}).get("addresses") or []}
    for question in asked:
        where = question.namespace or namespace
        if question.where == "pod":
            pods += _items(core.list_namespaced_pod, where, field_selector=f"metadata.name={question.host}")
        elif question.where == "service":
            for service in _items(core.list_namespaced_service, where, field_selector=f"metadata.name={question.host}"):
                services.append(service)
                pods += endpoints_of(service)
        elif question.where == "address" and question.host not in node_addresses:
            by_address = listed("pods in every namespace (an address is then taken for one outside the cluster)",
                                core.list_pod_for_all_namespaces, field_selector=f"status.podIP={question.host}")
            pods += by_address
            if not by_address:
                if every_service is None:
                    every_service = listed("Services in every namespace (a ClusterIP is then taken for an address outside "
                                           "the cluster)", core.list_service_for_all_namespaces)
                for service in every_service:
                    spec = service.get("spec") or {}
                    if question.host in {spec.get("clusterIP"), *(spec.get("clusterIPs") or [])}:
                        services.append(service)
                        pods += endpoints_of(service)
    return ExplainView(pod, chosen, namespaces, network_policies, cilium_policies, cluster_policies, pods, services,
                       nodes, tuple(notes), session_object, state)
