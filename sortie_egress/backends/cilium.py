"""``cilium``: a CiliumNetworkPolicy per session (render/cilium.py).

``egressDeny`` where a deny is meant (ports honoured), FQDN rules as ``toFQDNs``. Its allows are a
union with every NetworkPolicy's and CiliumNetworkPolicy's, so others are judged: an allowlist of
networks denies the rest outside the cluster with ``egressDeny`` (nothing can widen it there), one
that names hosts cannot (its reference leaves the names out).
"""

from __future__ import annotations

from typing import Any

from sortie_egress.backends.base import (EXACT, NAMES_HOSTS, NODE_GUARDED, SELF_ENFORCING, Backend, BackendSettings,
                                         BackendUnavailable, ObjectKind, addresses_only_reference)
from sortie_egress.render.cilium import CILIUM_API_VERSION, CILIUM_PLURAL


class CiliumBackend(Backend):
    name = "cilium"
    kind = ObjectKind("CiliumNetworkPolicy", CILIUM_API_VERSION.split("/")[0], (CILIUM_API_VERSION.split("/")[1],),
                      CILIUM_PLURAL, namespaced=True)
    capabilities = frozenset({EXACT, NAMES_HOSTS, SELF_ENFORCING, NODE_GUARDED})
    summary = "cilium (CiliumNetworkPolicy: egressDeny, FQDN rules)"
    controller_rbac_note = (
        '# The controller writes CiliumNetworkPolicies as it writes NetworkPolicies on the default\n'
        "# backend: its own (one per session, owned by the session's pods), repaired when they drift,\n"
        '# and retired (unlabelled, then deleted) when no pod needs them.\n'
    )

    def render(self, session: Any, policy: Any, dns: Any, canary: Any = None,
               settings: BackendSettings = BackendSettings()) -> dict[str, Any]:
        from sortie_egress.render.cilium import render_cilium_network_policy

        return render_cilium_network_policy(session, policy, dns, canary)

    def reference(self, session: Any, policy: Any, dns: Any, canary: Any, rendered: dict[str, Any]) -> dict[str, Any] | None:
        if policy.mode == "allowlist" and policy.names_hosts:
            return addresses_only_reference(session, policy, dns, canary)
        return None

    def widening_candidates(self, network_policies: list[dict[str, Any]], own_kind: list[dict[str, Any]],
                            judged: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """CiliumNetworkPolicies are read like NetworkPolicies (effective/cilium.py)."""
        return [*network_policies, *own_kind, *judged]

    def served(self, custom: Any, priority: int | None) -> BackendSettings:
        from sortie_egress.kube.policy_objects import cilium_served

        if not cilium_served(custom):
            raise BackendUnavailable(
                "--backend cilium writes CiliumNetworkPolicies (cilium.io/v2), which this cluster does not serve: "
                "install Cilium, or choose --backend networkpolicy")
        return BackendSettings(priority=priority)

    def objects(self, api: Any, settings: BackendSettings) -> Any:
        from kubernetes import client

        from sortie_egress.kube.policy_objects import cilium_network_policies

        return cilium_network_policies(client.CustomObjectsApi(api))
