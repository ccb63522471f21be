"""What every backend's session object shares: where DNS may go, the enforcement canary, and how
a session's pods are selected and its object labelled. Pure.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from sortie_egress.admission.session import SessionPod
from sortie_egress.constants import (
    APP_ID_LABEL,
    EGRESS_MODE_LABEL,
    EGRESS_POLICY_LABEL,
    MANAGED_BY_LABEL,
    MANAGED_BY_VALUE,
    SESSION_ID_LABEL,
)
from sortie_egress.policy.destinations import parse_network


@dataclass(frozen=True, slots=True)
class DnsDestination:
    """Where session pods may send DNS queries: an operator's choice.

    ``cluster`` keeps queries inside the cluster's resolver (no DNS tunnel
    to the outside from a locked-down pod); ``any`` matches the original Sortie;
    CIDRs point at, say, a node-local cache. ``cluster`` may be combined with
    CIDRs: NodeLocal DNSCache answers on a link-local address on every node
    while its misses still go to the cluster's resolver pods.
    """

    kind: Literal["cluster", "any", "cidrs"] = "cluster"
    cidrs: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str) -> DnsDestination:
        """``cluster``, ``any``, a comma-separated list of networks, or ``cluster`` followed by
        networks; ValueError otherwise (``any`` with networks is refused: it would say less
        than it seems to)."""
        parts = [part.strip() for part in text.strip().split(",") if part.strip()]
        if parts == ["any"]:
            return cls(kind="any")
        kind: Literal["cluster", "cidrs"] = "cidrs"
        if parts and parts[0] == "cluster":
            kind, parts = "cluster", parts[1:]
        elif not parts:
            raise ValueError('the DNS destination must be "cluster", "any" or a list of CIDRs')
        networks = []
        for part in parts:
            if part in ("cluster", "any"):
                raise ValueError(f'DNS destination: "{part}" must come first and "any" alone (got {text.strip()!r})')
            try:
                network, _ = parse_network(part)
            except ValueError as exc:
                raise ValueError(f"DNS destination: {exc}") from None
            networks.append(str(network))
        return cls(kind=kind, cidrs=tuple(dict.fromkeys(networks)))

    def __str__(self) -> str:
        return ",".join(((self.kind,) if self.kind != "cidrs" else ()) + self.cidrs)

    def peers(self) -> list[dict[str, Any]] | None:
        if self.kind == "any":
            return None
        blocks: list[dict[str, Any]] = [{"ipBlock": {"cidr": cidr}} for cidr in self.cidrs]
        if self.kind == "cluster":
            return [
                {
                    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
                    "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
                },
                *blocks,
            ]
        return blocks


@dataclass(frozen=True, slots=True)
class Canary:
    """The controller's enforcement canary (enforcement_wait/injection.py), as every session policy must treat it:
    its open port allowed (to its pods, by selector), and its addresses cut out of every
    address block of the app's rules, so that its closed port is blocked whatever they allow."""

    namespace: str
    pod_labels: tuple[tuple[str, str], ...]
    open_port: int
    addresses: tuple[str, ...] = field(default=())

    def rule(self) -> dict[str, Any]:
        return {"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": self.namespace}},
                        "podSelector": {"matchLabels": dict(self.pod_labels)}}],
                "ports": [{"protocol": "TCP", "port": self.open_port}]}


def session_selector(session_id: str) -> dict[str, Any]:
    """The session's pods that were admitted with a policy, as every backend's object selects them.

    Not the session id alone: a pod without a policy may carry any session's id (its creator
    chooses its labels), and it must not borrow the egress that session's policy author granted
    (CONTRACT §7, "joining"). Only pods admitted with a policy carry the mode label: our webhook
    sets it on them and removes it from every other pod, the admission policies refuse a pod with
    it that skipped the webhook's checks, and nobody but the controller may add it later (to a pod
    with a policy). So the label can stand for "admitted with a policy" at no cost on the hot path.
    """
    return {"matchLabels": {SESSION_ID_LABEL: session_id},
            "matchExpressions": [{"key": EGRESS_MODE_LABEL, "operator": "Exists"}]}


def session_labels(pod: SessionPod, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The labels every backend's session policy carries (``extra`` after the session id)."""
    labels = {SESSION_ID_LABEL: pod.session_id, **(extra or {})}
    if pod.app_id:
        labels[APP_ID_LABEL] = pod.app_id
    labels[EGRESS_POLICY_LABEL] = "true"
    labels[MANAGED_BY_LABEL] = MANAGED_BY_VALUE
    return labels


def pod_owner(pod: SessionPod) -> dict[str, Any]:
    """The pod as the controlling owner of a namespaced session policy."""
    return {"apiVersion": "v1", "kind": "Pod", "name": pod.name, "uid": pod.uid, "controller": True,
            "blockOwnerDeletion": True}
