"""The node guard (issue 22's hole: on Cilium, allowlist sessions reached their node's kubelet on
the clusternetworkpolicy backend, and beside an allow-all policy on the cilium backend). Pure;
expectations written out by hand."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from sortie_egress.guards import node_guard
from sortie_egress.render.session import DnsDestination

NOW = dt.datetime(2026, 12, 7, 12, 0, 0, tzinfo=dt.timezone.utc)
ALLOWLIST_SESSIONS = {"matchLabels": {"k8s:sortie.io/egress-mode": "allowlist"}}
ONLY_TAKES_AWAY = {"egress": False, "ingress": False}
NODES = ["host", "remote-node", "health"]


def test_with_cluster_dns_every_port_of_every_node_is_denied_to_allowlist_sessions() -> None:
    assert node_guard.render(DnsDestination()) == {
        "apiVersion": "cilium.io/v2", "kind": "CiliumClusterwideNetworkPolicy",
        "metadata": {"name": "sortie-egress-node-guard"},
        "spec": {"endpointSelector": ALLOWLIST_SESSIONS,
                 "egressDeny": [{"toEntities": NODES}],
                 "enableDefaultDeny": ONLY_TAKES_AWAY}}


@pytest.mark.parametrize("dns", ["cluster,169.254.20.10", "any", "10.0.0.10"])
def test_where_a_resolver_may_answer_on_a_node_port_53_is_left_to_the_allows(dns: str) -> None:
    all_but_53 = [{"ports": [
        {"port": "1", "protocol": "TCP", "endPort": 52}, {"port": "54", "protocol": "TCP", "endPort": 65535},
        {"port": "1", "protocol": "UDP", "endPort": 52}, {"port": "54", "protocol": "UDP", "endPort": 65535},
        {"port": "0", "protocol": "SCTP"}]}]
    assert node_guard.render(DnsDestination.parse(dns))["spec"] == {
        "endpointSelector": ALLOWLIST_SESSIONS,
        "egressDeny": [{"toEntities": NODES, "toPorts": all_but_53}],
        "enableDefaultDeny": ONLY_TAKES_AWAY}


def _stored(age_seconds: float = 60.0, **spec_changes: Any) -> dict[str, Any]:
    created = (NOW - dt.timedelta(seconds=age_seconds)).isoformat().replace("+00:00", "Z")
    spec = {"endpointSelector": ALLOWLIST_SESSIONS, "egressDeny": [{"toEntities": NODES}],
            "enableDefaultDeny": ONLY_TAKES_AWAY, **spec_changes}
    return {"metadata": {"name": "sortie-egress-node-guard", "creationTimestamp": created}, "spec": spec}


def test_a_guard_in_place_for_long_enough_holds_nothing_back() -> None:
    assert node_guard.problem(_stored(), DnsDestination(), NOW) is None
    assert node_guard.problem(_stored(description="the install's"), DnsDestination(), NOW) is None


DIFFERS = ("the CiliumClusterwideNetworkPolicy sortie-egress-node-guard differs from the one this controller's "
           "--dns needs (cluster)")


@pytest.mark.parametrize(("found", "reason"), [
    (None, "the CiliumClusterwideNetworkPolicy sortie-egress-node-guard does not exist"),
    ({**_stored(), "metadata": {**_stored()["metadata"], "deletionTimestamp": "2026-12-07T11:59:00Z"}},
     "the CiliumClusterwideNetworkPolicy sortie-egress-node-guard is being deleted"),
    # A cluster admin narrows what it denies, or whom, or adds an allow, or turns default deny on
    # (which would close whatever else the Admin tier passes on, DNS on a node included).
    (_stored(egressDeny=[{"toEntities": ["host"]}]), DIFFERS),
    (_stored(egressDeny=[{"toEntities": NODES, "toPorts": [{"ports": [{"port": "22", "protocol": "TCP"}]}]}]), DIFFERS),
    (_stored(endpointSelector={"matchLabels": {"k8s:sortie.io/egress-mode": "allowlist", "k8s:app": "web"}}), DIFFERS),
    (_stored(egress=[{"toEntities": ["all"]}]), DIFFERS),
    (_stored(enableDefaultDeny={"egress": True, "ingress": False}), DIFFERS),
    ({"metadata": _stored()["metadata"]}, DIFFERS),
    (_stored(age_seconds=2.0),
     "the CiliumClusterwideNetworkPolicy sortie-egress-node-guard is younger than 5 s (time for every node's agent to have it)"),
    ({**_stored(), "metadata": {"name": "sortie-egress-node-guard"}},
     "the CiliumClusterwideNetworkPolicy sortie-egress-node-guard has no creation time"),
])
def test_a_guard_that_cannot_be_relied_on_says_why(found: dict[str, Any] | None, reason: str) -> None:
    assert node_guard.problem(found, DnsDestination(), NOW) == reason


def test_a_guard_written_for_cluster_dns_is_not_the_one_a_node_local_cache_needs() -> None:
    assert node_guard.problem(_stored(), DnsDestination.parse("cluster,169.254.20.10"), NOW) == (
        "the CiliumClusterwideNetworkPolicy sortie-egress-node-guard differs from the one this controller's "
        "--dns needs (cluster,169.254.20.10/32)")
