"""The session baseline: what lets ``enforcementWait: auto`` skip the wait on the cilium backend.

Cilium judges a pod's first packet by the policy its node's agent holds when the pod gets its
network (its CNI returns only once the endpoint's policy is built). Our scheduling gate proves
that the session's own CiliumNetworkPolicy exists in the API server, not that the agent has
received it: between the two lies the agent's watch, usually milliseconds, unbounded when the
API server is slow. The baseline closes that: a CiliumClusterwideNetworkPolicy, installed long
before any session, that selects every pod admitted with a policy (our mode label) and allows
it DNS only. Any policy with egress rules puts the pod in default-deny egress, so a session
policy still on its way leaves the pod with DNS only: less than its policy, never more. Every
session policy allows that DNS already, so once the session's own arrives the union is exactly
the session's.

The install ships it (manifests/components/enforcement-wait-auto, the chart); the controller
only reads it and releases a pod that carries no wait only while it is in place, unchanged, and
has been for ``SETTLE_SECONDS`` (time for every agent to have it). Cluster-scoped: only cluster
administrators can write it; a namespace admin cannot, nor can the controller's token. Pure.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any, Final

from sortie_egress.constants import EGRESS_MODE_LABEL
from sortie_egress.render.session import DnsDestination
from sortie_egress.render.cilium import CILIUM_API_VERSION, dns_rules

NAME: Final = "sortie-egress-session-baseline"
KIND: Final = "CiliumClusterwideNetworkPolicy"
#: How long the baseline must have existed before a pod without the wait is released.
SETTLE_SECONDS: Final = 5.0
#: Spec fields that change nothing the baseline promises (``enableDefaultDeny`` is checked apart).
_HARMLESS: Final = frozenset({"endpointSelector", "egress", "description", "enableDefaultDeny"})


def render(dns: DnsDestination) -> dict[str, Any]:
    """The baseline for sessions that resolve names as ``dns`` says (the controller's --dns)."""
    return {
        "apiVersion": CILIUM_API_VERSION,
        "kind": KIND,
        # The install's, not the controller's: no managed-by label (the controller only reads it).
        "metadata": {"name": NAME},
        "spec": {"endpointSelector": {"matchExpressions": [{"key": f"k8s:{EGRESS_MODE_LABEL}", "operator": "Exists"}]},
                 "egress": dns_rules(dns, proxied=False)},
    }


def _created(metadata: Mapping[str, Any]) -> dt.datetime | None:
    text = metadata.get("creationTimestamp")
    if not isinstance(text, str):
        return None
    try:
        return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def shipped_problem(found: Mapping[str, Any] | None, name: str, spec_problem: str | None,
                    now: dt.datetime) -> str | None:
    """Why a clusterwide policy the install ships cannot be relied on yet, or None: present, not
    being deleted, its spec as expected (``spec_problem`` None: the caller compared it, as only
    it knows which fields may differ), and older than SETTLE_SECONDS, time for every node's agent
    to have it. Shared by the session baseline and the node guard (node_guard.py)."""
    if found is None:
        return f"the {KIND} {name} does not exist"
    metadata = found.get("metadata") or {}
    if metadata.get("deletionTimestamp"):
        return f"the {KIND} {name} is being deleted"
    if spec_problem is not None:
        return spec_problem
    created = _created(metadata)
    if created is None:
        return f"the {KIND} {name} has no creation time"
    age = (now - created).total_seconds()
    if age < SETTLE_SECONDS:
        return f"the {KIND} {name} is younger than {SETTLE_SECONDS:.0f} s (time for every node's agent to have it)"
    return None


def problem(found: Mapping[str, Any] | None, dns: DnsDestination, now: dt.datetime) -> str | None:
    """Why the baseline cannot be relied on yet (for the hold's Event), or None: present, not
    being deleted, selecting and allowing exactly what :func:`render` says, default deny not
    switched off, and older than SETTLE_SECONDS."""
    spec = (found or {}).get("spec")
    expected = render(dns)["spec"]
    spec_problem = None
    if not isinstance(spec, Mapping) or set(spec) - _HARMLESS or spec.get("endpointSelector") != expected["endpointSelector"] \
            or spec.get("egress") != expected["egress"]:
        spec_problem = f"the {KIND} {NAME} differs from the one this controller's --dns needs ({dns})"
    elif isinstance(spec.get("enableDefaultDeny"), Mapping) and spec["enableDefaultDeny"].get("egress") is False:
        spec_problem = f"the {KIND} {NAME} switches egress default deny off"
    return shipped_problem(found, NAME, spec_problem, now)


__all__ = ["KIND", "NAME", "SETTLE_SECONDS", "problem", "render", "shipped_problem"]
