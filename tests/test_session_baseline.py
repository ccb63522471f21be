"""enforcementWait auto (issue 22): which pods need the wait, and the session baseline that lets
the cilium backend do without it. Pure; expectations written out by hand."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from sortie_egress.guards import session_baseline
from sortie_egress.backends import wait_needed
from sortie_egress.render.session import DnsDestination

NOW = dt.datetime(2026, 12, 7, 12, 0, 0, tzinfo=dt.timezone.utc)
CLUSTER_DNS_EGRESS = [{"toEndpoints": [{"matchLabels": {"k8s:io.kubernetes.pod.namespace": "kube-system",
                                                        "k8s:k8s-app": "kube-dns"}}],
                       "toPorts": [{"ports": [{"port": "53", "protocol": "UDP"}, {"port": "53", "protocol": "TCP"}]}]}]


@pytest.mark.parametrize(("mode", "backend", "needed"), [
    ("required", "networkpolicy", True), ("required", "cilium", True), ("required", "clusternetworkpolicy", True),
    ("auto", "networkpolicy", True), ("auto", "cilium", False), ("auto", "clusternetworkpolicy", True),
    ("off", "networkpolicy", False), ("off", "cilium", False),
    ("Auto", "cilium", True), ("", "cilium", True),  # anything unknown: required (fail closed)
])
def test_which_pods_need_the_wait(mode: str, backend: str, needed: bool) -> None:
    assert wait_needed(mode, backend) is needed


def test_the_baseline_selects_every_pod_admitted_with_a_policy_and_allows_dns_only() -> None:
    assert session_baseline.render(DnsDestination()) == {
        "apiVersion": "cilium.io/v2", "kind": "CiliumClusterwideNetworkPolicy",
        "metadata": {"name": "sortie-egress-session-baseline"},
        "spec": {"endpointSelector": {"matchExpressions": [{"key": "k8s:sortie.io/egress-mode", "operator": "Exists"}]},
                 "egress": CLUSTER_DNS_EGRESS}}
    anywhere = session_baseline.render(DnsDestination.parse("any"))["spec"]["egress"]
    assert anywhere == [{"toPorts": [{"ports": [{"port": "53", "protocol": "UDP"}, {"port": "53", "protocol": "TCP"}]}]}]


def _stored(age_seconds: float = 60.0, **spec_changes: Any) -> dict[str, Any]:
    created = (NOW - dt.timedelta(seconds=age_seconds)).isoformat().replace("+00:00", "Z")
    spec = {**session_baseline.render(DnsDestination())["spec"], **spec_changes}
    return {"metadata": {"name": "sortie-egress-session-baseline", "creationTimestamp": created}, "spec": spec}


def test_a_baseline_in_place_for_long_enough_holds_nothing_back() -> None:
    assert session_baseline.problem(_stored(), DnsDestination(), NOW) is None
    assert session_baseline.problem(_stored(description="ours"), DnsDestination(), NOW) is None
    assert session_baseline.problem(_stored(enableDefaultDeny={"egress": True}), DnsDestination(), NOW) is None


@pytest.mark.parametrize(("found", "reason"), [
    (None, "the CiliumClusterwideNetworkPolicy sortie-egress-session-baseline does not exist"),
    ({**_stored(), "metadata": {**_stored()["metadata"], "deletionTimestamp": "2026-12-07T11:59:00Z"}},
     "the CiliumClusterwideNetworkPolicy sortie-egress-session-baseline is being deleted"),
    (_stored(egress=[{"toEntities": ["all"]}]),
     "the CiliumClusterwideNetworkPolicy sortie-egress-session-baseline differs from the one this controller's --dns needs (cluster)"),
    (_stored(endpointSelector={"matchLabels": {"k8s:app": "web"}}),
     "the CiliumClusterwideNetworkPolicy sortie-egress-session-baseline differs from the one this controller's --dns needs (cluster)"),
    (_stored(egressDeny=[]),
     "the CiliumClusterwideNetworkPolicy sortie-egress-session-baseline differs from the one this controller's --dns needs (cluster)"),
    (_stored(enableDefaultDeny={"egress": False}),
     "the CiliumClusterwideNetworkPolicy sortie-egress-session-baseline switches egress default deny off"),
    (_stored(age_seconds=2.0),
     "the CiliumClusterwideNetworkPolicy sortie-egress-session-baseline is younger than 5 s (time for every node's agent to have it)"),
])
def test_a_baseline_that_cannot_be_relied_on_says_why(found: dict[str, Any] | None, reason: str) -> None:
    assert session_baseline.problem(found, DnsDestination(), NOW) == reason


def test_a_baseline_for_another_dns_destination_is_not_this_controllers() -> None:
    assert session_baseline.problem(_stored(), DnsDestination.parse("any"), NOW) == (
        "the CiliumClusterwideNetworkPolicy sortie-egress-session-baseline differs from the one this controller's "
        "--dns needs (any)")


def test_the_webhook_injects_the_wait_as_the_mode_and_backend_say(tmp_path: Any) -> None:
    """`serve`'s flags as an operator writes them: with a canary configured, auto leaves the wait
    out on the cilium backend only; required and the default keep it everywhere."""
    from sortie_egress.cli import build_parser
    from sortie_egress.cli.processes import _enforcement_wait

    canary = ["--enforcement-canary", "sortie-egress-canary.sortie-system.svc", "--enforcement-image", "registry.invalid/x:1"]

    def injected(*flags: str) -> bool:
        args = build_parser().parse_args(["serve", *canary, *flags])
        return _enforcement_wait(args) is not None

    assert injected() and injected("--backend", "cilium") and injected("--enforcement-wait", "required", "--backend", "cilium")
    assert injected("--enforcement-wait", "auto") and injected("--enforcement-wait", "auto", "--backend", "clusternetworkpolicy")
    assert not injected("--enforcement-wait", "auto", "--backend", "cilium")
    assert not injected("--enforcement-wait", "off")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--enforcement-wait", "sometimes"])
