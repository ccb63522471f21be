"""``networkpolicy`` (the default): a namespaced NetworkPolicy per session (render/networkpolicy.py).

Only allows: a denylist cannot deny single ports (the whole destination is denied, with a
warning; the canonical annotation keeps the ports, so another backend would honour them), names
cannot be written, and any other policy that selects the pod widens it (effective/ detects it).
"""

from __future__ import annotations

from typing import Any

from sortie_egress.backends.base import Backend, BackendSettings, ObjectKind


class NetworkPolicyBackend(Backend):
    name = "networkpolicy"
    kind = ObjectKind("NetworkPolicy", "networking.k8s.io", ("v1",), "networkpolicies", namespaced=True)
    capabilities = frozenset()
    summary = "networkpolicy (default; allows only)"

    def render(self, session: Any, policy: Any, dns: Any, canary: Any = None,
               settings: BackendSettings = BackendSettings()) -> dict[str, Any]:
        from sortie_egress.render.networkpolicy import render_network_policy

        return render_network_policy(session, policy, dns, canary)

    def objects(self, api: Any, settings: BackendSettings) -> Any:
        from kubernetes import client

        from sortie_egress.kube.policy_objects import network_policies

        return network_policies(client.NetworkingV1Api(api))
