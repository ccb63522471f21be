"""The API calls for the objects that enforce sessions, one class per backend kind.

The reconciler writes a session's policy object through this edge and nothing else, so the
order of writes and the conflict handling (reconciler.py) are the same whatever kind the
operator chose: NetworkPolicy through the typed networking client, CiliumNetworkPolicy through
the custom-objects client. Answers are raw JSON (the generated models cost far more than
json.loads, and custom objects have none).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from ..render_cilium import CILIUM_API_VERSION


@dataclass(frozen=True)
class SessionObjects:
    """Namespaced objects of one kind: create, replace, patch (JSON patch), delete, list."""

    kind: str
    create_call: Callable[..., Any]
    replace_call: Callable[..., Any]
    patch_call: Callable[..., Any]
    delete_call: Callable[..., Any]
    list_all: Callable[..., Any]
    list_namespaced: Callable[..., Callable[..., Any]]

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
CILIUM_PLURAL = "ciliumnetworkpolicies"


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


def cilium_served(custom: Any) -> bool:
    """Whether the API server serves CiliumNetworkPolicy in ``cilium.io/v2`` (discovery)."""
    from kubernetes.client.exceptions import ApiException

    try:
        reply = custom.get_api_resources(CILIUM_GROUP, CILIUM_VERSION, _preload_content=False)
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise
    return any(resource.get("name") == CILIUM_PLURAL for resource in json.loads(reply.data).get("resources", []))
