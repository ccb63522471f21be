"""Allowed or denied, and by which object and rule: the order in which a dataplane consults policies.

For one packet from a session pod, in the order of network-policy-api, which Cilium follows and
which a NetworkPolicy-only dataplane is the middle step of:

1. the Admin tier: ClusterNetworkPolicies whose subject takes in the pod, lowest priority number
   first, each rule in order; the first rule that matches decides (Accept, Deny), or Pass skips
   the rest of the tier;
2. the policies' tier: every NetworkPolicy that selects the pod, and on Cilium every
   CiliumNetworkPolicy and CiliumClusterwideNetworkPolicy spec that selects it. A deny rule
   (``egressDeny``) that matches wins; else an allow rule that matches lets the packet out (all
   of them are named: any one suffices, which is why another policy can widen a session); else, if
   one of them isolates the pod's egress, the packet is dropped;
3. the Baseline tier, like the Admin tier (nothing of ours lives there);
4. the cluster default: allowed.

A rule that may match (matching.py's None) and would change the outcome makes the verdict
"unknown", with the rule named: never a guess. Pure.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from sortie_egress.effective.cilium import is_cilium_policy, selecting_specs
from sortie_egress.effective.networkpolicy import limits_egress, selector_matches
from sortie_egress.explain import matching
from sortie_egress.explain.view import ExplainView, Packet

Verdict = Literal["allowed", "denied", "unknown"]
SESSION_ROLE: Final = "the session's own"
_ROLES_BY_NAME: Final = {
    ("NetworkPolicy", "sortie-session-baseline"): "the session baseline (DNS)",
    ("NetworkPolicy", "sortie-default-egress"): "the namespace default for plain pods",
    ("CiliumClusterwideNetworkPolicy", "sortie-egress-session-baseline"): "the session baseline",
    ("CiliumClusterwideNetworkPolicy", "sortie-egress-node-guard"): "the node guard",
}


@dataclass(frozen=True, slots=True)
class Said:
    """What one rule of one object says about the packet."""

    layer: str
    kind: str
    name: str
    rule: str
    effect: str
    namespace: str | None = None
    role: str = ""

    @property
    def object(self) -> str:
        return f"{self.kind} {self.namespace + '/' if self.namespace else ''}{self.name}"

    def describe(self) -> str:
        role = f" ({self.role})" if self.role else ""
        rule = f" {self.rule}" if self.rule else ""
        return f"{self.object}{rule} {self.effect}{role}"

    def as_dict(self) -> dict[str, Any]:
        return {"layer": self.layer, "kind": self.kind, "namespace": self.namespace, "name": self.name,
                "rule": self.rule, "effect": self.effect, "role": self.role}


@dataclass(frozen=True, slots=True)
class PacketVerdict:
    packet: Packet
    verdict: Verdict
    #: One sentence: why.
    reason: str
    #: The rules that decide (all that allow, where any one is enough).
    deciding: tuple[Said, ...] = ()
    #: Rules that may match (what they match is not knowable here) and could change the verdict.
    uncertain: tuple[Said, ...] = ()


@dataclass(frozen=True, slots=True)
class Selecting:
    """An object that selects the pod: what explain consults, in layer order."""

    layer: str
    kind: str
    name: str
    namespace: str | None
    role: str
    detail: str = ""

    def describe(self) -> str:
        where = f"{self.namespace}/" if self.namespace else ""
        extra = ", ".join(part for part in (self.detail, self.role) if part)
        return f"{self.kind} {where}{self.name}" + (f" ({extra})" if extra else "")


def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return obj.get("metadata") or {}


def role(view: ExplainView, obj: Mapping[str, Any]) -> str:
    kind, name = str(obj.get("kind") or "NetworkPolicy"), str(_meta(obj).get("name") or "")
    if view.session_object == (kind, name):
        return SESSION_ROLE
    return _ROLES_BY_NAME.get((kind, name), "")


# --- the tiers of ClusterNetworkPolicy ----------------------------------------------------------

def _subject_takes(policy: Mapping[str, Any], view: ExplainView) -> bool:
    subject = (policy.get("spec") or {}).get("subject") or {}
    namespace_labels = view.namespaces.get(view.namespace, {})
    if "namespaces" in subject:
        return matching.namespace_selected(subject.get("namespaces"), view.namespace, namespace_labels)
    pods = subject.get("pods")
    if isinstance(pods, Mapping):
        return matching.namespace_selected(pods.get("namespaceSelector"), view.namespace, namespace_labels) and \
            selector_matches(pods.get("podSelector"), view.labels)
    return False


def _tier(view: ExplainView, tier: str) -> list[Mapping[str, Any]]:
    chosen = [policy for policy in view.cluster_policies
              if (policy.get("spec") or {}).get("tier") == tier and _subject_takes(policy, view)]
    return sorted(chosen, key=lambda p: (int((p.get("spec") or {}).get("priority", 1000)), str(_meta(p).get("name"))))


def _rule_name(rule: Mapping[str, Any], index: int) -> str:
    return f"egress[{index}]" + (f" {rule['name']}" if rule.get("name") else "")


def _walk_tier(view: ExplainView, packet: Packet, tier: str) -> tuple[str | None, Said | None, list[Said]]:
    """(the action that decides or "Pass", the rule that said it, the uncertain rules before it)."""
    uncertain: list[Said] = []
    for policy in _tier(view, tier):
        priority = (policy.get("spec") or {}).get("priority")
        for index, rule in enumerate((policy.get("spec") or {}).get("egress") or []):
            if not isinstance(rule, Mapping):
                continue
            found = matching.cluster_policy_rule(rule, packet, view.dataplane)
            if found is False:
                continue
            action = str(rule.get("action"))
            said = Said(f"{tier} tier, priority {priority}", "ClusterNetworkPolicy", str(_meta(policy).get("name")),
                        _rule_name(rule, index), {"Accept": "accepts", "Deny": "denies", "Pass": "passes"}.get(action, action),
                        role=role(view, policy))
            if found is None:
                uncertain.append(said)
                continue
            return action, said, uncertain
    return None, None, uncertain


# --- the policies' tier -------------------------------------------------------------------------

def _cilium_isolates(spec: Mapping[str, Any]) -> bool:
    default_deny = spec.get("enableDefaultDeny")
    if isinstance(default_deny, Mapping) and default_deny.get("egress") is False:
        return False
    return "egress" in spec or "egressDeny" in spec


def policies_tier(view: ExplainView) -> list[tuple[Mapping[str, Any], list[tuple[str, str, Mapping[str, Any]]], bool]]:
    """Every object of the policies' tier that selects the pod: (object, its rules as (name, "allow"
    or "deny", rule), whether it isolates the pod's egress)."""
    found: list[tuple[Mapping[str, Any], list[tuple[str, str, Mapping[str, Any]]], bool]] = []
    for policy in view.network_policies:
        if _meta(policy).get("namespace") == view.namespace and limits_egress(policy) and \
                selector_matches((policy.get("spec") or {}).get("podSelector"), view.labels):
            rules = [(f"egress[{index}]", "allow", rule)
                     for index, rule in enumerate((policy.get("spec") or {}).get("egress") or [])]
            found.append(({**policy, "kind": "NetworkPolicy"}, rules, True))
    if view.dataplane != "cilium":
        return found
    for policy in view.cilium_policies:
        if not is_cilium_policy(policy):
            continue
        specs = selecting_specs(policy, view.namespace, view.labels)
        if not specs:
            continue
        several = bool(policy.get("specs"))
        rules = []
        for number, spec in enumerate(specs):
            prefix = f"specs[{number}]." if several else ""
            rules += [(f"{prefix}egressDeny[{index}]", "deny", rule) for index, rule in enumerate(spec.get("egressDeny") or [])]
            rules += [(f"{prefix}egress[{index}]", "allow", rule) for index, rule in enumerate(spec.get("egress") or [])]
        found.append((policy, rules, any(_cilium_isolates(spec) for spec in specs)))
    return found


def _rule_match(view: ExplainView, policy: Mapping[str, Any], rule: Mapping[str, Any], packet: Packet) -> matching.Match:
    if str(policy.get("kind")) == "NetworkPolicy":
        return matching.network_policy_rule(rule, view.namespace, packet, view.dataplane)
    namespace = None if policy.get("kind") == "CiliumClusterwideNetworkPolicy" else view.namespace
    return matching.cilium_rule(rule, packet, view.node, namespace, view.dataplane)


def _said(view: ExplainView, policy: Mapping[str, Any], name: str, effect: str) -> Said:
    namespace = _meta(policy).get("namespace")
    return Said("policies", str(policy.get("kind")), str(_meta(policy).get("name")), name, effect,
                str(namespace) if namespace else None, role(view, policy))


def judge(view: ExplainView, packet: Packet) -> PacketVerdict:
    """The verdict on one packet, with the rule or rules that decide it."""
    action, said, uncertain = _walk_tier(view, packet, "Admin")
    if action in ("Accept", "Deny"):
        assert said is not None
        verdict: Verdict = "allowed" if action == "Accept" else "denied"
        if uncertain:
            return PacketVerdict(packet, "unknown", f"an earlier Admin-tier rule may match before {said.describe()}",
                                 (said,), tuple(uncertain))
        return PacketVerdict(packet, verdict, f"the Admin tier decides: {said.describe()}", (said,))
    passed = [said] if said is not None else []
    tier = policies_tier(view)
    denies, allows, maybe_deny, maybe_allow = [], [], [], []
    for policy, rules, _ in tier:
        for name, kind, rule in rules:
            found = _rule_match(view, policy, rule, packet)
            if found is False:
                continue
            effect = "denies" if kind == "deny" else "allows"
            said_here = _said(view, policy, name, effect if found else f"may {effect[:-1]}")
            (denies if kind == "deny" and found else allows if found else maybe_deny if kind == "deny" else maybe_allow).append(said_here)
    open_questions = tuple(uncertain)
    if denies:
        return PacketVerdict(packet, "denied", "a deny rule matches (a deny wins over every allow of its tier)",
                             tuple(passed + denies))
    if allows:
        if maybe_deny or open_questions:
            return PacketVerdict(packet, "unknown", "allowed unless a rule that may match denies it",
                                 tuple(passed + allows), open_questions + tuple(maybe_deny))
        reason = "allowed by " + ("a rule" if len(allows) == 1 else f"{len(allows)} rules (any one is enough)")
        return PacketVerdict(packet, "allowed", reason, tuple(passed + allows))
    isolating = [policy for policy, _, isolates in tier if isolates]
    if isolating:
        if maybe_allow or maybe_deny or open_questions:
            return PacketVerdict(packet, "unknown", "denied unless a rule that may match allows it", tuple(passed),
                                 open_questions + tuple(maybe_allow + maybe_deny))
        names = [_said(view, policy, "", "selects the pod") for policy in isolating]
        return PacketVerdict(packet, "denied",
                             f"no rule allows it, and {len(isolating)} polic{'y' if len(isolating) == 1 else 'ies'} "
                             "isolate the pod's egress", tuple(passed + names))
    action, said, later = _walk_tier(view, packet, "Baseline")
    open_questions += tuple(maybe_deny + maybe_allow + later)
    if action in ("Accept", "Deny"):
        assert said is not None
        if open_questions:
            return PacketVerdict(packet, "unknown", f"{said.describe()}, unless an earlier rule that may match decides",
                                 (said,), open_questions)
        return PacketVerdict(packet, "allowed" if action == "Accept" else "denied",
                             f"the Baseline tier decides: {said.describe()}", (said,))
    if open_questions:
        return PacketVerdict(packet, "unknown", "allowed by the cluster default unless a rule that may match decides",
                             tuple(passed), open_questions)
    return PacketVerdict(packet, "allowed", "no policy isolates the pod's egress: the cluster default lets it out",
                         tuple(passed))


def selecting(view: ExplainView) -> list[Selecting]:
    """Every object that takes part in the pod's egress, in the order the dataplane consults them."""
    out = []
    for tier in ("Admin", "Baseline"):
        if tier == "Baseline":
            out += [Selecting("policies", str(policy.get("kind")), str(_meta(policy).get("name")),
                              _meta(policy).get("namespace"), role(view, policy),
                              "" if isolates else "does not isolate")
                    for policy, _, isolates in policies_tier(view)]
        out += [Selecting(f"{tier} tier", "ClusterNetworkPolicy", str(_meta(policy).get("name")), None,
                          role(view, policy), f"{tier} tier, priority {(policy.get('spec') or {}).get('priority')}")
                for policy in _tier(view, tier)]
    return out


__all__ = ["PacketVerdict", "SESSION_ROLE", "Said", "Selecting", "Verdict", "judge", "policies_tier", "role", "selecting"]
