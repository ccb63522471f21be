"""``clusternetworkpolicy``: an Admin-tier ClusterNetworkPolicy per session (render/clusternetworkpolicy.py).

Ordered Accept and Deny rules that no NetworkPolicy can re-open; ports honoured in a denylist; FQDN
rules as ``domainNames``. Cluster-scoped: no owner references (the pods it is for are named in an
annotation that the pin and the clean-up read), and only other Admin-tier ClusterNetworkPolicies
that come first can widen it (effective/clusternetworkpolicy.py).
"""

from __future__ import annotations

from typing import Any

from sortie_egress.backends.base import (EXACT, NAMES_HOSTS, NODE_GUARDED, UNWIDENABLE_BY_NETWORKPOLICY, Backend,
                                         BackendSettings, BackendUnavailable, ObjectKind, addresses_only_reference)
from sortie_egress.render.clusternetworkpolicy import CNP_GROUP, CNP_PLURAL, CNP_VERSIONS


class ClusterNetworkPolicyBackend(Backend):
    name = "clusternetworkpolicy"
    kind = ObjectKind("ClusterNetworkPolicy", CNP_GROUP, CNP_VERSIONS, CNP_PLURAL, namespaced=False)
    capabilities = frozenset({EXACT, NAMES_HOSTS, NODE_GUARDED, UNWIDENABLE_BY_NETWORKPOLICY})
    summary = "clusternetworkpolicy (Admin-tier ClusterNetworkPolicy: exact, not widenable, FQDN rules)"
    controller_rbac_note = (
        '# The controller writes ClusterNetworkPolicies: its own (one per session), repaired when they\n'
        "# drift, retired (unlabelled, then deleted) when the session's last pod is gone; create also\n"
        '# covers its start-up probe (a server-side dry run: is domainNames in the served schema?).\n'
    )

    def problems(self, policy: Any) -> list[str]:
        from sortie_egress.policy.traffic import grouped_by_port_set
        from sortie_egress.render.clusternetworkpolicy import CNP_FIXED_RULES, CNP_MAX_EGRESS_RULES, CNP_MAX_PORT_SETS

        problems = super().problems(policy)
        sets = len(grouped_by_port_set(policy.rules))
        if sets > CNP_MAX_PORT_SETS:
            problems.append(
                f"rules: {sets} different port sets (port, end_port and protocol); the clusternetworkpolicy backend "
                f"renders one rule per port set and a ClusterNetworkPolicy holds {CNP_MAX_EGRESS_RULES} rules, "
                f"{CNP_FIXED_RULES} of them DNS, the enforcement canary and the final rule: at most "
                f"{CNP_MAX_PORT_SETS} port sets")
        return problems

    def name_for(self, namespace: str, session_id: str) -> str:
        from sortie_egress.render.clusternetworkpolicy import cluster_policy_name

        return cluster_policy_name(namespace, session_id)

    def render(self, session: Any, policy: Any, dns: Any, canary: Any = None,
               settings: BackendSettings = BackendSettings()) -> dict[str, Any]:
        from sortie_egress.render.clusternetworkpolicy import render_cluster_network_policy

        return render_cluster_network_policy(session, policy, dns, canary, settings.version or self.kind.versions[0],
                                             _priority(settings))

    def bind(self, rendered: dict[str, Any], owners: list[dict[str, Any]], digest: str) -> None:
        """No owner references on a cluster-scoped object: the pods it is for, in an annotation."""
        from sortie_egress.constants import POLICY_DIGEST_ANNOTATION, SESSION_PODS_ANNOTATION

        uids = ",".join(str((pod.get("metadata") or {}).get("uid", "")) for pod in owners)
        rendered["metadata"]["annotations"] = {POLICY_DIGEST_ANNOTATION: digest, SESSION_PODS_ANNOTATION: uids}

    def reference(self, session: Any, policy: Any, dns: Any, canary: Any, rendered: dict[str, Any]) -> dict[str, Any] | None:
        # Admin-tier rules come before every NetworkPolicy: none can widen it, but another Admin-tier
        # ClusterNetworkPolicy that comes first can, judged against the session's policy as a NetworkPolicy.
        return addresses_only_reference(session, policy, dns, canary)

    def widening_candidates(self, network_policies: list[dict[str, Any]], own_kind: list[dict[str, Any]],
                            judged: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Only other Admin-tier ClusterNetworkPolicies: NetworkPolicies and Cilium's come after it."""
        return list(own_kind)

    def widenings(self, reference: dict[str, Any], others: list[dict[str, Any]], namespace: str,
                  labels: dict[str, str], settings: BackendSettings) -> list[Any]:
        from sortie_egress.effective.clusternetworkpolicy import cluster_widenings

        return cluster_widenings(reference, others, namespace, labels, _priority(settings))

    def served(self, custom: Any, priority: int | None) -> BackendSettings:
        from sortie_egress.kube.policy_objects import cluster_policy_version

        version = cluster_policy_version(custom)
        if version is None:
            raise BackendUnavailable(
                "--backend clusternetworkpolicy writes ClusterNetworkPolicies (policy.networking.k8s.io v1beta1 or "
                "v1alpha2), which this cluster does not serve: install network-policy-api's CRD (experimental "
                "channel) and a dataplane that implements it, or choose another --backend")
        return BackendSettings(version=version, priority=priority)

    def discover(self, custom: Any, priority: int | None) -> BackendSettings:
        """``served``, and a served schema that can hold ``domainNames`` (FQDN rules need it)."""
        from sortie_egress.kube.policy_objects import cluster_policy_domain_names

        settings = self.served(custom, priority)
        version = settings.version
        assert version is not None
        refusal = cluster_policy_domain_names(custom, version)
        if refusal is not None:
            raise BackendUnavailable(
                f"the cluster's ClusterNetworkPolicy {version} cannot hold domainNames, which FQDN rules need "
                f"(the standard channel's CRD?): install the experimental channel ({refusal})")
        return settings

    def objects(self, api: Any, settings: BackendSettings) -> Any:
        from kubernetes import client

        from sortie_egress.kube.policy_objects import cluster_network_policies

        return cluster_network_policies(client.CustomObjectsApi(api), settings.version or self.kind.versions[0])


def _priority(settings: BackendSettings) -> int:
    from sortie_egress.render.clusternetworkpolicy import DEFAULT_PRIORITY

    return DEFAULT_PRIORITY if settings.priority is None else settings.priority
