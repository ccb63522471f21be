"""What a backend is: the kind of object that enforces a session, and everything that depends on it.

One interface (``Backend``) so that the controller, ``audit``, the CLI, the tamper-policy
generator and the RBAC derive from the registry (backends/__init__.py) instead of spelling the
backends out. The renderers and judges stay pure modules of their own (render/, effective/);
a backend binds them, and its API calls (kube/policy_objects.py), to one name. Heavy imports are
made where they are used: the admission path reads only ``problems`` and ``warnings``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Final

if TYPE_CHECKING:
    from sortie_egress.admission.session import SessionPod
    from sortie_egress.kube.policy_objects import SessionObjects
    from sortie_egress.policy.model import EgressPolicy
    from sortie_egress.render.session import Canary, DnsDestination

#: Capabilities a backend declares; tests and the node matrix key their expectations on these,
#: never on a backend's name.
#: Ports and protocols of a denylist are denied exactly (not the whole destination).
EXACT: Final = "exact"
#: Rules may name hosts (``fqdn``).
NAMES_HOSTS: Final = "names_hosts"
#: The dataplane holds a pod's first packet to the policy it has when the pod gets its network,
#: so with the session baseline ``--enforcement-wait auto`` leaves the wait out.
SELF_ENFORCING: Final = "self_enforcing"
#: Where Cilium serves its clusterwide kind, allowlist sessions are released only while the node
#: guard is in place (guards/node_guard.py: Cilium matches no CIDR against its own nodes).
NODE_GUARDED: Final = "node_guarded"
#: No NetworkPolicy can widen a session: it is judged only against other policies of its own tier.
UNWIDENABLE_BY_NETWORKPOLICY: Final = "unwidenable_by_networkpolicy"
CAPABILITIES: Final = (EXACT, NAMES_HOSTS, SELF_ENFORCING, NODE_GUARDED, UNWIDENABLE_BY_NETWORKPOLICY)


@dataclass(frozen=True, slots=True)
class ObjectKind:
    """A kind of Kubernetes object as the API serves it."""

    kind: str
    group: str
    #: Written, in order of preference (the first the cluster serves is used).
    versions: tuple[str, ...]
    plural: str
    namespaced: bool

    @property
    def kinds(self) -> str:
        """What messages call them: ``CiliumNetworkPolicies``."""
        return self.kind.removesuffix("y") + "ies" if self.kind.endswith("y") else self.kind + "s"


@dataclass(frozen=True, slots=True)
class BackendSettings:
    """What the controller found or was told about its backend: the served version it writes (None:
    the kind's first), and (clusternetworkpolicy) the Admin-tier priority of session policies (lower
    wins; None: the backend's default)."""

    version: str | None = None
    priority: int | None = None


class BackendUnavailable(ValueError):
    """The cluster does not serve what the chosen backend writes: refuse to start."""


class Backend:
    """One backend. Subclasses set the class attributes and override what differs."""

    name: ClassVar[str]
    kind: ClassVar[ObjectKind]
    capabilities: ClassVar[frozenset[str]]
    #: One line for ``--backend``'s help and the docs: what the backend writes and is good for.
    summary: ClassVar[str]
    #: The header of its component's rbac.yaml (generated): what the controller does with the kind.
    controller_rbac_note: ClassVar[str] = ""

    def has(self, capability: str) -> bool:
        assert capability in CAPABILITIES, capability
        return capability in self.capabilities

    # --- admission (pure, light) -----------------------------------------------------------------

    def problems(self, policy: EgressPolicy) -> list[str]:
        """Why this backend cannot enforce ``policy`` exactly: refused at admission (empty: it can)."""
        if self.has(NAMES_HOSTS):
            return []
        from sortie_egress.backends import NAME_BACKENDS

        return [f"rules[{index}].fqdn: the {self.name} backend cannot enforce DNS names; FQDN rules need the "
                f"{' or '.join(NAME_BACKENDS)} backend (the operator's --backend)"
                for index, rule in enumerate(policy.rules) if rule.fqdn is not None]

    def warnings(self, policy: EgressPolicy) -> list[str]:
        """What this backend enforces differently from what the policy says, in the safe direction."""
        if self.has(EXACT) or policy.mode != "denylist":
            return []
        return [f"rules[{index}]: a denylist cannot deny single ports or protocols; all traffic to {rule.network} is denied"
                for index, rule in enumerate(policy.rules) if rule.port or rule.protocol]

    # --- the session's object (pure) -------------------------------------------------------------

    def name_for(self, namespace: str, session_id: str) -> str:
        """The session's object's name (a namespaced kind ignores ``namespace``)."""
        from sortie_egress.kube.policy_objects import namespaced_policy_name

        return namespaced_policy_name(namespace, session_id)

    def render(self, session: SessionPod, policy: EgressPolicy, dns: DnsDestination, canary: Canary | None = None,
               settings: BackendSettings = BackendSettings()) -> dict[str, Any]:
        """The object, before it is bound to its pods: what ``sortie-egress render`` prints."""
        raise NotImplementedError

    def bind(self, rendered: dict[str, Any], owners: list[dict[str, Any]], digest: str) -> None:
        """Tie the object to the session's pods and record the digest it was rendered for (the pin):
        owner references (the garbage collector removes it with the last pod)."""
        rendered["metadata"]["annotations"] = {_digest_annotation(): digest}
        rendered["metadata"]["ownerReferences"] = [_owner(pod, index == 0) for index, pod in enumerate(owners)]

    def reference(self, session: SessionPod, policy: EgressPolicy, dns: DnsDestination, canary: Canary | None,
                  rendered: dict[str, Any]) -> dict[str, Any] | None:
        """What others' policies are judged against for effective egress, as a NetworkPolicy (None:
        nothing can widen the session)."""
        return rendered

    def session_object(self, owners: list[dict[str, Any]], policy: EgressPolicy, digest: str, dns: DnsDestination,
                       canary: Canary | None, settings: BackendSettings) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """(the object the session must have, the reference effective egress judges against)."""
        from sortie_egress.admission.session import session_pod

        session = session_pod(owners[0])
        assert session is not None
        rendered = self.render(session, policy, dns, canary, settings)
        reference = self.reference(session, policy, dns, canary, rendered)
        self.bind(rendered, owners, digest)
        return rendered, reference

    # --- effective egress (pure) -----------------------------------------------------------------

    def widening_candidates(self, network_policies: list[dict[str, Any]], own_kind: list[dict[str, Any]],
                            judged: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Of someone else's policies that may select a session pod (NetworkPolicies of its namespace,
        objects of this backend's kind, Cilium's policies where it runs), those that can widen it,
        in the order they are judged (and told)."""
        return [*network_policies, *judged]

    def widenings(self, reference: dict[str, Any], others: list[dict[str, Any]], namespace: str,
                  labels: dict[str, str], settings: BackendSettings) -> list[Any]:
        """Which of ``others`` (none of ours) widen a session pod: NetworkPolicies and, on Cilium,
        Cilium's policies, read alike (effective/)."""
        from sortie_egress.effective.networkpolicy import widenings

        return widenings(reference, others, namespace, labels)

    # --- the API (I/O edge) ----------------------------------------------------------------------

    def served(self, custom: Any, priority: int | None) -> BackendSettings:
        """Which version of the kind the cluster serves (discovery, reads only: ``audit`` asks this);
        BackendUnavailable where it serves none."""
        return BackendSettings(priority=priority)

    def discover(self, custom: Any, priority: int | None) -> BackendSettings:
        """What the controller needs to know before it starts: ``served``, and whatever else the
        backend must prove about the cluster (it may write: a server-side dry run)."""
        return self.served(custom, priority)

    def objects(self, api: Any, settings: BackendSettings) -> SessionObjects:
        """The API calls for this backend's objects."""
        raise NotImplementedError


def _digest_annotation() -> str:
    from sortie_egress.constants import POLICY_DIGEST_ANNOTATION

    return POLICY_DIGEST_ANNOTATION


def _owner(pod: dict[str, Any], controller: bool) -> dict[str, Any]:
    metadata = pod["metadata"]
    return {"apiVersion": "v1", "kind": "Pod", "name": metadata.get("name", ""), "uid": metadata.get("uid", ""),
            "controller": controller, "blockOwnerDeletion": True}


#: What an allowlist that names hosts or a backend's reference leaves out: a NetworkPolicy named so
#: that no real policy has it (a NetworkPolicy named like the session, as the original Sortie makes
#: them, is then judged too).
REFERENCE_NAME: Final = "(the session's egress policy)"


def addresses_only_reference(session: SessionPod, policy: EgressPolicy, dns: DnsDestination,
                             canary: Canary | None) -> dict[str, Any]:
    """The session's policy without its named hosts, as a NetworkPolicy: what an allow of others is
    judged against where names cannot be compared (an allow to one of their addresses is flagged)."""
    from sortie_egress.policy.model import EgressPolicy as Policy
    from sortie_egress.render.networkpolicy import render_network_policy

    addresses_only = Policy(policy.mode, tuple(rule for rule in policy.rules if rule.fqdn is None))
    reference = render_network_policy(session, addresses_only, dns, canary)
    reference["metadata"]["name"] = REFERENCE_NAME
    return reference
