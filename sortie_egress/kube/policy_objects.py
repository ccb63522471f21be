"""The API calls for the objects that enforce sessions, one class per backend kind.

The reconciler writes a session's policy object through this edge and nothing else, so the
order of writes and the conflict handling (reconciler.py) are the same whatever kind the
operator chose: NetworkPolicy through the typed networking client, CiliumNetworkPolicy through
the custom-objects client. Answers are raw JSON (the generated models cost far more than
json.loads, and custom objects have none).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from sortie_egress.constants import POLICY_NAME_PREFIX
from sortie_egress.render.cilium import CILIUM_API_VERSION, CILIUM_PLURAL
from sortie_egress.render.clusternetworkpolicy import CLUSTER_POLICY_PREFIX, CNP_GROUP, CNP_PLURAL, CNP_VERSIONS, SESSION_NAMESPACE_LABEL, cluster_policy_name
from sortie_egress.kube.projections import project_policy


def namespaced_policy_name(_namespace: str, session_id: str) -> str:
    """``sortie-egress-<session-id>``: a namespaced session policy's name (NetworkPolicy, CiliumNetworkPolicy)."""
    return POLICY_NAME_PREFIX + session_id


@dataclass(frozen=True)
class SessionObjects:
    """Objects of one kind: create, replace, patch (JSON patch), delete, list, and what the
    controller keeps of one (``project``). Cluster-scoped kinds take and ignore a namespace."""

    kind: str
    create_call: Callable[..., Any]
    replace_call: Callable[..., Any]
    patch_call: Callable[..., Any]
    delete_call: Callable[..., Any]
    list_all: Callable[..., Any]
    list_namespaced: Callable[..., Callable[..., Any]]
    #: The session's object's name in the store (namespace, session id) -> (namespace, name).
    name_for: Callable[[str, str], str] = namespaced_policy_name
    project: Callable[[dict[str, Any]], dict[str, Any]] = project_policy

    def create(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        return json.loads(self.create_call(namespace, body, _preload_content=False).data)

    def replace(self, namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        return json.loads(self.replace_call(namespace, name, body, _preload_content=False).data)

    def patch(self, namespace: str, name: str, patch: list[dict[str, Any]]) -> None:
        self.patch_call(namespace, name, patch, _preload_content=False)

    def delete(self, namespace: str, name: str, uid: str | None) -> None:
        self.delete_call(namespace, name, body={"preconditions": {"uid": uid}}, _preload_content=False)


def network_policies(networking: Any) -> SessionObjects:
    """NetworkPolicies (``networking.k8s.io/v1``): the networkpolicy backend, and every backend's
    view of the policies that may widen a session."""
    return SessionObjects(
        kind="NetworkPolicy",
        create_call=lambda namespace, body, **kw: networking.create_namespaced_network_policy(namespace, body, **kw),
        replace_call=lambda namespace, name, body, **kw: networking.replace_namespaced_network_policy(
            name, namespace, body, **kw),
        patch_call=lambda namespace, name, patch, **kw: networking.patch_namespaced_network_policy(name, namespace, patch, **kw),
        delete_call=lambda namespace, name, **kw: networking.delete_namespaced_network_policy(name, namespace, **kw),
        list_all=networking.list_network_policy_for_all_namespaces,
        list_namespaced=lambda namespace: partial(networking.list_namespaced_network_policy, namespace),
    )


CILIUM_GROUP, CILIUM_VERSION = CILIUM_API_VERSION.split("/")


def cilium_network_policies(custom: Any) -> SessionObjects:
    """CiliumNetworkPolicies (``cilium.io/v2``): the cilium backend."""
    kind = (CILIUM_GROUP, CILIUM_VERSION)
    return SessionObjects(
        kind="CiliumNetworkPolicy",
        create_call=lambda namespace, body, **kw: custom.create_namespaced_custom_object(
            *kind, namespace, CILIUM_PLURAL, body, **kw),
        replace_call=lambda namespace, name, body, **kw: custom.replace_namespaced_custom_object(
            *kind, namespace, CILIUM_PLURAL, name, body, **kw),
        patch_call=lambda namespace, name, patch, **kw: custom.patch_namespaced_custom_object(
            *kind, namespace, CILIUM_PLURAL, name, patch, _content_type="application/json-patch+json", **kw),
        delete_call=lambda namespace, name, **kw: custom.delete_namespaced_custom_object(
            *kind, namespace, CILIUM_PLURAL, name, **kw),
        list_all=partial(custom.list_cluster_custom_object, *kind, CILIUM_PLURAL),
        list_namespaced=lambda namespace: partial(custom.list_namespaced_custom_object, *kind, namespace, CILIUM_PLURAL),
    )




def _session_namespace(obj: dict[str, Any]) -> str:
    """A ClusterNetworkPolicy's session namespace: its label, or (one squatting on our name) the
    name's middle part; none: ''. Namespace names have no dots, so the name splits unambiguously."""
    metadata = obj.get("metadata") or {}
    labelled = (metadata.get("labels") or {}).get(SESSION_NAMESPACE_LABEL)
    if isinstance(labelled, str):
        return labelled
    name = metadata.get("name", "")
    return name[len(CLUSTER_POLICY_PREFIX):].partition(".")[0] if name.startswith(CLUSTER_POLICY_PREFIX) else ""


def project_cluster_policy(obj: dict[str, Any]) -> dict[str, Any]:
    """As a namespaced policy is kept, filed under its session's namespace: the stores and the
    per-namespace informers then treat it like the others."""
    projected = project_policy(obj)
    projected["metadata"]["namespace"] = _session_namespace(obj)
    return projected


def cluster_network_policies(custom: Any, version: str) -> SessionObjects:
    """ClusterNetworkPolicies (``policy.networking.k8s.io``): the clusternetworkpolicy backend."""
    kind = (CNP_GROUP, version, CNP_PLURAL)
    return SessionObjects(
        kind="ClusterNetworkPolicy",
        create_call=lambda _namespace, body, **kw: custom.create_cluster_custom_object(*kind, body, **kw),
        replace_call=lambda _namespace, name, body, **kw: custom.replace_cluster_custom_object(*kind, name, body, **kw),
        patch_call=lambda _namespace, name, patch, **kw: custom.patch_cluster_custom_object(
            *kind, name, patch, _content_type="application/json-patch+json", **kw),
        delete_call=lambda _namespace, name, **kw: custom.delete_cluster_custom_object(*kind, name, **kw),
        list_all=partial(custom.list_cluster_custom_object, *kind),
        list_namespaced=lambda namespace: partial(custom.list_cluster_custom_object, *kind,
                                                  label_selector=f"{SESSION_NAMESPACE_LABEL}={namespace}"),
        name_for=cluster_policy_name,
        project=project_cluster_policy,
    )


def cluster_policy_version(custom: Any) -> str | None:
    """The first ClusterNetworkPolicy version we write that the cluster serves (discovery)."""
    for version in CNP_VERSIONS:
        if _serves(custom, CNP_GROUP, version, CNP_PLURAL):
            return version
    return None


def cluster_policy_domain_names(custom: Any, version: str) -> str | None:
    """Why the served ClusterNetworkPolicy schema cannot hold ``domainNames`` (None: it can).

    Asked the way that cannot be wrong: a server-side dry run of a probe object with strict field
    validation (the standard channel's CRD has no such field; nothing is stored).
    """
    from kubernetes.client.exceptions import ApiException

    probe = {"apiVersion": f"{CNP_GROUP}/{version}", "kind": "ClusterNetworkPolicy",
             "metadata": {"name": "sortie-egress-capability-probe"},
             "spec": {"tier": "Admin", "priority": 1000, "subject": {"namespaces": {}},
                      "egress": [{"action": "Accept", "to": [{"domainNames": ["probe.example.com"]}]}]}}
    try:
        custom.create_cluster_custom_object(CNP_GROUP, version, CNP_PLURAL, probe, dry_run="All",
                                            field_validation="Strict", _preload_content=False)
    except ApiException as exc:
        if exc.status in (400, 422):
            try:
                return str(json.loads(exc.body)["message"])[:300]
            except (TypeError, ValueError, KeyError):
                return str(exc.body or exc.reason or "refused").strip()[:300]
        raise
    return None


#: Discovery at start-up, through a flaky API server: how often and how long apart (doubling).
DISCOVERY_ATTEMPTS, DISCOVERY_FIRST_DELAY = 8, 0.25


def _serves(custom: Any, group: str, version: str, plural: str, sleep: Callable[[float], None] = time.sleep) -> bool:
    """Discovery: whether ``group/version`` has ``plural``. A 404 is "no"; a dropped connection, a
    429 or a 5xx is tried again (a controller must not die of one at start-up, nor guess);
    anything else, or the last failure, is raised."""
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    delay = DISCOVERY_FIRST_DELAY
    for attempt in range(DISCOVERY_ATTEMPTS):
        try:
            reply = custom.get_api_resources(group, version, _preload_content=False)
            return any(resource.get("name") == plural for resource in json.loads(reply.data).get("resources", []))
        except ApiException as exc:
            if exc.status == 404:
                return False
            if (exc.status != 429 and (exc.status or 0) < 500) or attempt + 1 == DISCOVERY_ATTEMPTS:
                raise
        except (HTTPError, OSError, ValueError):
            if attempt + 1 == DISCOVERY_ATTEMPTS:
                raise
        sleep(delay)
        delay *= 2
    raise AssertionError("unreachable")


def cilium_served(custom: Any) -> bool:
    """Whether the API server serves CiliumNetworkPolicy in ``cilium.io/v2`` (discovery)."""
    return _serves(custom, CILIUM_GROUP, CILIUM_VERSION, CILIUM_PLURAL)


CILIUM_CLUSTERWIDE_PLURAL = "ciliumclusterwidenetworkpolicies"


@dataclass(frozen=True)
class JudgedKind:
    """Someone else's policies of a kind the dataplane enforces beside the backend's own: read and
    judged for effective egress (effective/cilium.py), never written."""

    kind: str
    list_all: Callable[..., Any]
    #: None: cluster-scoped (kept under the namespace "", judged for every session).
    list_namespaced: Callable[[str], Callable[..., Any]] | None

    @property
    def cluster_scoped(self) -> bool:
        return self.list_namespaced is None

    def listing(self, namespace: str | None) -> Callable[..., Any]:
        """The list call for ``namespace`` (None: every namespace); a cluster-scoped kind's is one call."""
        return self.list_all if namespace is None or self.list_namespaced is None else self.list_namespaced(namespace)

    def project(self, obj: dict[str, Any]) -> dict[str, Any]:
        """As the controller keeps a policy, with its kind (the judge reads a clusterwide policy's
        selectors differently, and list items need not carry their kind)."""
        projected = project_policy(obj)
        projected["kind"] = self.kind
        projected["spec"] = obj.get("spec")  # ours too: the session baseline is verified by its spec
        created = (obj.get("metadata") or {}).get("creationTimestamp")
        if created:
            projected["metadata"]["creationTimestamp"] = created
        return projected


def judged_kinds(custom: Any, backend: str) -> list[JudgedKind]:
    """What Cilium also enforces beside the backend's objects, where the cluster serves it:
    CiliumNetworkPolicies (unless they are the backend's kind, kept with its own objects) and
    CiliumClusterwideNetworkPolicies. None where nothing but the backend's own kind can widen a
    session (the clusternetworkpolicy backend: its Admin tier comes first)."""
    from sortie_egress import backends

    chosen = backends.get(backend)
    if chosen.has(backends.UNWIDENABLE_BY_NETWORKPOLICY):
        return []
    group = (CILIUM_GROUP, CILIUM_VERSION)
    kinds = []
    if chosen.kind.plural != CILIUM_PLURAL and cilium_served(custom):
        kinds.append(JudgedKind(
            "CiliumNetworkPolicy", partial(custom.list_cluster_custom_object, *group, CILIUM_PLURAL),
            lambda namespace: partial(custom.list_namespaced_custom_object, *group, namespace, CILIUM_PLURAL)))
    clusterwide = clusterwide_kind(custom)
    if clusterwide is not None:
        kinds.append(clusterwide)
    return kinds


def clusterwide_kind(custom: Any) -> JudgedKind | None:
    """CiliumClusterwideNetworkPolicies, where the cluster serves them: judged on the networkpolicy
    and cilium backends; on every backend, where the session baseline and the node guard live."""
    if not _serves(custom, CILIUM_GROUP, CILIUM_VERSION, CILIUM_CLUSTERWIDE_PLURAL):
        return None
    return JudgedKind("CiliumClusterwideNetworkPolicy",
                      partial(custom.list_cluster_custom_object, CILIUM_GROUP, CILIUM_VERSION, CILIUM_CLUSTERWIDE_PLURAL),
                      None)
