"""The node guard: on Cilium, no allowlist session reaches its node or any other node.

Cilium does not match CIDR rules against its nodes (the ``host``, ``remote-node`` and ``health``
identities; unless the agent runs with ``--policy-cidr-match-mode=nodes``). An allowlist never
promises a node: on the networkpolicy backend its CIDRs just miss the nodes. But where nothing
denies them, they are left to the allows of every other policy, and two of our backends leave
them there:

- clusternetworkpolicy: the session's final Admin-tier Deny (``networks`` 0.0.0.0/0 and ::/0,
  ``pods``) does not match a node, and its ``nodes`` peer makes Cilium 1.20 refuse the whole
  policy unless the agent runs with ``--enable-node-selector-labels``; so a session's traffic to
  a node passes to the NetworkPolicy tier, and where no NetworkPolicy selects the session (a
  namespace without the baseline), nothing does: the session reaches its node's kubelet (found
  by the node tests' ``node`` column, session 11);
- cilium: the session's own CiliumNetworkPolicy allows no node, but an allow-all policy beside
  it does.

The guard is a CiliumClusterwideNetworkPolicy the install ships (with the cilium-backend
component, and manifests/components/cilium-node-guard for clusternetworkpolicy on Cilium) that
selects every allowlist session pod (our mode label, set at admission, so from the pod's first
packet) and denies it those identities: ``egressDeny`` wins over every allow of its tier, the
tier of NetworkPolicies and Cilium's own policies, so another policy cannot reopen a node. It
switches default deny off, so it only ever takes away. DNS stays: with the default ``--dns
cluster`` the resolvers are pods and every port of a node is denied; with other ``--dns``
settings (a node-local cache answers on the node) port 53 of a node is left to the allows.

Like the session baseline, only cluster administrators can write it (cluster-scoped), the
controller only reads it, and releases an allowlist session only while it is in place, as
:func:`render` says, and SETTLE_SECONDS old (Event NodeGuardMissing otherwise). Pure.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any, Final

from sortie_egress.constants import EGRESS_MODE_LABEL
from sortie_egress.render.session import DnsDestination
from sortie_egress.render.cilium import CILIUM_API_VERSION, deny_ports, every_port_but
from sortie_egress.guards.session_baseline import KIND, SETTLE_SECONDS, shipped_problem

NAME: Final = "sortie-egress-node-guard"
# Which backends require it (where the cluster serves Cilium's clusterwide kind): those that
# declare backends.NODE_GUARDED, since they leave a node to other policies' allows on Cilium.
#: The sessions it selects (our mode label's value): a denylist promised everything else.
GUARDED_MODE: Final = "allowlist"
#: Cilium's identities of its nodes: the local node, every other node, and the health endpoints.
NODE_ENTITIES: Final = ("host", "remote-node", "health")
#: Spec fields a cluster administrator may set without changing what the guard promises.
_HARMLESS: Final = frozenset({"description"})
_DNS: Final = (("UDP", 53), ("TCP", 53))


def render(dns: DnsDestination) -> dict[str, Any]:
    """The node guard for sessions that resolve names as ``dns`` says (the controller's --dns)."""
    deny: dict[str, Any] = {"toEntities": list(NODE_ENTITIES)}
    if dns.kind != "cluster" or dns.cidrs:
        deny["toPorts"] = deny_ports(every_port_but(_DNS))  # a node-local cache may answer there
    return {
        "apiVersion": CILIUM_API_VERSION,
        "kind": KIND,
        # The install's, not the controller's: no managed-by label (the controller only reads it).
        "metadata": {"name": NAME},
        "spec": {"endpointSelector": {"matchLabels": {f"k8s:{EGRESS_MODE_LABEL}": GUARDED_MODE}},
                 "egressDeny": [deny],
                 "enableDefaultDeny": {"egress": False, "ingress": False}},
    }


def problem(found: Mapping[str, Any] | None, dns: DnsDestination, now: dt.datetime) -> str | None:
    """Why the guard cannot be relied on yet (for the hold's Event), or None: present, not being
    deleted, its spec exactly what :func:`render` says (but a description), and SETTLE_SECONDS old."""
    spec = (found or {}).get("spec")
    expected = render(dns)["spec"]
    spec_problem = None
    if not isinstance(spec, Mapping) or {k: v for k, v in spec.items() if k not in _HARMLESS} != expected:
        spec_problem = f"the {KIND} {NAME} differs from the one this controller's --dns needs ({dns})"
    return shipped_problem(found, NAME, spec_problem, now)


__all__ = ["GUARDED_MODE", "KIND", "NAME", "NODE_ENTITIES", "SETTLE_SECONDS", "problem", "render"]
