"""What a session pod with a policy may not be, whatever its policy says (CONTRACT §6, §7).

A policy holds only a pod the dataplane can tell apart and hold back. Four shapes escape it:

- ``spec.nodeName`` set at creation: the pod runs at once, before its policy can exist, and the
  scheduling gate never holds it;
- ``hostNetwork: true``: no NetworkPolicy (or Cilium/ClusterNetworkPolicy rule) selects a pod in
  the node's network namespace, so it would run with the node's egress;
- ``privileged``, or the capabilities ``NET_RAW``/``NET_ADMIN`` (``ALL`` includes both) added to a
  container: a raw socket forges another pod's source address, and the dataplane judges egress by
  source address (kube-router matches ``-s <pod IP>``), so the pod could send as a wider session;
  ``NET_ADMIN`` rewrites the pod's own routes and filters.

The container runtime's default capability set (containerd's and CRI-O's include ``NET_RAW``) is
not refused: that would refuse nearly every pod written without a security context, and Pod
Security ``restricted`` (which requires ``drop: [ALL]``) is the tool made for it; docs/security.md
says what that leaves. Pure: the same list for admission, ``check`` and the tests; the admission
policies (sortie_egress/protection/tamper.py) check the same shapes in the API server for pods that reach it
without us.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

BOUND_POD = (
    "spec.nodeName is set: a pod bound to a node when it is created runs at once, before its "
    "NetworkPolicy can exist, and cannot be held by the scheduling gate; leave spec.nodeName unset "
    "(use a nodeSelector or node affinity to choose the node)"
)
HOST_NETWORK = (
    "spec.hostNetwork is true: a pod in the node's network namespace is selected by no network policy, "
    "so its egress policy could not be enforced; session pods with a policy run in their own network"
)
#: Capabilities that forge source addresses or rewrite the pod's network (``ALL`` holds both).
NETWORK_CAPABILITIES = ("NET_RAW", "NET_ADMIN", "ALL")
CONTAINER_LISTS = ("initContainers", "containers", "ephemeralContainers")


def _capability(name: Any) -> str:
    """A capability as the runtime reads it: case-insensitive, with or without ``CAP_``."""
    text = str(name).upper()
    return text[4:] if text.startswith("CAP_") else text


def container_problems(container: Any, where: str) -> list[str]:
    """Why one container (at ``where``, e.g. ``spec.containers[0]``) could escape the policy."""
    if type(container) is not dict:
        return []
    context = container.get("securityContext")
    if type(context) is not dict:
        return []
    label = f"{where} ({container.get('name')})"
    problems = []
    if context.get("privileged") is True:
        problems.append(f"{label}: securityContext.privileged is true: a privileged container can forge "
                        "another pod's source address and rewrite the pod's network, so no egress policy holds it")
    capabilities = context.get("capabilities")
    added = capabilities.get("add") if type(capabilities) is dict else None
    if type(added) is list:
        network = sorted({_capability(name) for name in added} & set(NETWORK_CAPABILITIES))
        if network:
            problems.append(f"{label}: securityContext.capabilities.add has {', '.join(network)}: NET_RAW forges "
                            "another pod's source address and NET_ADMIN rewrites the pod's network, so no egress "
                            "policy holds it; remove them")
    return problems


def pod_shape_problems(pod: Mapping[str, Any]) -> list[str]:
    """Every reason ``pod`` could not be held by its egress policy; empty when it can."""
    spec = pod.get("spec")
    if type(spec) is not dict:
        return []
    problems = []
    if spec.get("nodeName") not in (None, ""):
        problems.append(BOUND_POD)
    if spec.get("hostNetwork") is True:
        problems.append(HOST_NETWORK)
    for field in CONTAINER_LISTS:
        containers = spec.get(field)
        if type(containers) is list:
            for index, container in enumerate(containers):
                problems.extend(container_problems(container, f"spec.{field}[{index}]"))
    return problems


__all__ = ["BOUND_POD", "CONTAINER_LISTS", "HOST_NETWORK", "NETWORK_CAPABILITIES", "container_problems",
           "pod_shape_problems"]
