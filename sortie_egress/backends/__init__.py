"""Which kind of object enforces a session's policy, and what each kind cannot say.

The operator chooses the backend (``--backend``) for the whole cluster:

- ``networkpolicy`` (the default): a namespaced NetworkPolicy per session (render/networkpolicy.py). Only
  allows: a denylist cannot deny single ports (the whole network is denied, with a warning; the
  canonical annotation keeps the ports, so another backend would honour them), names cannot be
  written, and any other policy that selects the pod widens it (effective/networkpolicy.py detects this).
- ``clusternetworkpolicy``: an Admin-tier ClusterNetworkPolicy per session (render/clusternetworkpolicy.py),
  with ordered Accept and Deny rules that no NetworkPolicy can re-open; ports honoured in a
  denylist; FQDN rules as ``domainNames``.
- ``cilium``: a CiliumNetworkPolicy per session (render/cilium.py): ``egressDeny`` where a deny
  is meant, FQDN rules as ``toFQDNs``.

A policy the chosen backend cannot enforce *exactly* is refused at admission with the reason
(``backend_problems``), never enforced as something weaker; a pod that bypassed admission with
such a policy is enforced as DNS only by the controller, like any invalid annotation.
"""

from __future__ import annotations

from typing import Final, Literal

from sortie_egress.policy.model import EgressPolicy, Rule

Backend = Literal["networkpolicy", "clusternetworkpolicy", "cilium"]
BACKENDS: Final = ("networkpolicy", "clusternetworkpolicy", "cilium")
DEFAULT_BACKEND: Final = "networkpolicy"
#: The backends that can enforce a rule naming its destination by DNS name.
NAME_BACKENDS: Final = ("clusternetworkpolicy", "cilium")

#: A ClusterNetworkPolicy holds at most 25 egress rules (network-policy-api v1alpha2/v1beta1).
CNP_MAX_EGRESS_RULES: Final = 25
#: Rules a session's ClusterNetworkPolicy needs besides the app's: DNS, the enforcement canary's
#: open port and the rest of the canary, and the final Deny (allowlist) or Accept (denylist).
CNP_FIXED_RULES: Final = 4
CNP_MAX_PORT_SETS: Final = CNP_MAX_EGRESS_RULES - CNP_FIXED_RULES


def port_set(rule: Rule) -> tuple[tuple[str, int, int], ...]:
    """What a rule allows or denies besides its destination: (protocol, first port, last port)
    per protocol, where ports 0..0 means every port and an empty tuple means all traffic
    (every protocol, ICMP included). Rules with the same port set share one rendered rule."""
    if rule.port == 0:
        return () if rule.protocol is None else ((rule.protocol, 0, 0),)
    last = rule.end_port if rule.end_port is not None else rule.port
    return tuple((protocol, rule.port, last) for protocol in ((rule.protocol,) if rule.protocol else ("TCP", "UDP")))


def grouped_by_port_set(rules: tuple[Rule, ...]) -> list[tuple[tuple[tuple[str, int, int], ...], list[Rule]]]:
    """The rules in groups of one port set, in the order each set first appears."""
    groups: dict[tuple[tuple[str, int, int], ...], list[Rule]] = {}
    for rule in rules:
        groups.setdefault(port_set(rule), []).append(rule)
    return list(groups.items())


def backend_warnings(policy: EgressPolicy | None, backend: str) -> list[str]:
    """What ``backend`` enforces differently from what the policy says, in the safe direction."""
    if policy is None or policy.mode != "denylist" or backend != "networkpolicy":
        return []
    return [f"rules[{index}]: a denylist cannot deny single ports or protocols; all traffic to {rule.network} is denied"
            for index, rule in enumerate(policy.rules) if rule.port or rule.protocol]


def backend_problems(policy: EgressPolicy | None, backend: str) -> list[str]:
    """Why ``backend`` cannot enforce ``policy`` exactly (empty when it can)."""
    if policy is None:
        return []
    problems = []
    if backend not in NAME_BACKENDS:
        problems.extend(
            f"rules[{index}].fqdn: the {backend} backend cannot enforce DNS names; FQDN rules need the "
            f"clusternetworkpolicy or cilium backend (the operator's --backend)"
            for index, rule in enumerate(policy.rules) if rule.fqdn is not None)
    if backend == "clusternetworkpolicy":
        sets = len(grouped_by_port_set(policy.rules))
        if sets > CNP_MAX_PORT_SETS:
            problems.append(
                f"rules: {sets} different port sets (port, end_port and protocol); the clusternetworkpolicy backend "
                f"renders one rule per port set and a ClusterNetworkPolicy holds {CNP_MAX_EGRESS_RULES} rules, "
                f"{CNP_FIXED_RULES} of them DNS, the enforcement canary and the final rule: at most "
                f"{CNP_MAX_PORT_SETS} port sets")
    return problems

