"""What the clusternetworkpolicy and cilium renderers write, validated by a real API server against
the CRDs their projects publish (network-policy-api v0.3.0 and v0.2.0, Cilium v1.20.2; fetched by
tests/cluster/fetch-policy-crds.sh), and the schema rules our renderings are shaped by, shown to be
real: each refused object here is one our renderers must never write."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cluster.harness import ControlPlane, wait_for
from tests.support import control_plane_binaries, policy_crds
from sortie_egress.policy.model import parse_policy
from sortie_egress.render.session import Canary, DnsDestination
from sortie_egress.render.cilium import render_cilium_network_policy
from sortie_egress.render.clusternetworkpolicy import render_cluster_network_policy
from sortie_egress.admission.session import session_pod

pytestmark = pytest.mark.cluster

POLICIES = [
    {"mode": "allowlist", "rules": [
        {"cidr": "10.20.0.0/16", "port": 443, "protocol": "TCP"}, {"fqdn": "api.example.com", "port": 443, "protocol": "TCP"},
        {"cidr": "2001:db8::/32", "port": 8000, "end_port": 8100}, {"fqdn": "*.cdn.example.net", "protocol": "UDP"},
        {"cidr": "192.0.2.0/24"}, {"cidr": "198.51.100.7", "protocol": "SCTP", "port": 9}, {"fqdn": "a_b.example.org"}]},
    {"mode": "allowlist", "rules": [{"cidr": f"10.{i}.0.0/16"} for i in range(60)]},
    {"mode": "allowlist"},
    {"mode": "denylist", "rules": [{"cidr": "10.0.0.0/8", "port": 22, "protocol": "TCP"}, {"cidr": "169.254.0.0/16"},
                                   {"cidr": "::/0", "protocol": "UDP"}, {"cidr": "0.0.0.0/0", "port": 25, "end_port": 26}]},
    {"mode": "denylist", "rules": []},
]
DNS = [DnsDestination(), DnsDestination.parse("any"), DnsDestination.parse("cluster,169.254.20.10,fd00::a")]
CANARY = Canary(namespace="sortie-system", pod_labels=(("app.kubernetes.io/name", "sortie-egress-canary"),), open_port=9445)


def _pod(policy: dict[str, Any]) -> Any:
    session = session_pod({"metadata": {"name": "desk-1", "namespace": "team-a", "uid": "0f0e0d0c-aaaa-bbbb-cccc-000000000001",
                                        "labels": {"sortie.io/session-id": "s-1", "sortie.io/app-id": "firefox"},
                                        "annotations": {"sortie.io/egress-policy": json.dumps(policy)}}})
    assert session is not None
    return session


def _renderings(render: Any, **options: Any) -> list[dict[str, Any]]:
    out = []
    for index, document in enumerate(POLICIES):
        parsed = parse_policy(json.dumps(document))
        assert parsed.ok and parsed.policy is not None, parsed.errors
        for dns_index, dns in enumerate(DNS):
            for canary in (None, CANARY):
                rendered = render(_pod(document), parsed.policy, dns, canary, **options)
                rendered["metadata"]["name"] += f"-{index}-{dns_index}-{0 if canary is None else 1}"
                out.append(rendered)
    return out


def _dry_run(plane: ControlPlane, documents: list[dict[str, Any]]) -> Any:
    return plane.kubectl("create", "--dry-run=server", "--validate=strict", "-f", "-",
                         input=yaml.safe_dump_all(documents, sort_keys=False))


def _apply_crd(plane: ControlPlane, path: Path, resource: str) -> None:
    applied = plane.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(path))
    assert applied.returncode == 0, applied.stderr
    wait_for(lambda: plane.kubectl("get", resource, "-A").returncode == 0, 30, f"{resource} served")


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    plane = ControlPlane(control_plane_binaries(), root=tmp_path_factory.mktemp("backend-crds"), with_scheduler=False).start()
    for namespace in ("team-a", "sortie-system"):
        assert plane.kubectl("create", "namespace", namespace).returncode == 0
    yield plane
    plane.stop()


@pytest.fixture(scope="module")
def crds() -> Path:
    return policy_crds()


def test_cilium_network_policies_validate_against_cilium_1_20(plane: ControlPlane, crds: Path) -> None:
    _apply_crd(plane, crds / "cilium-v1.20.2-ciliumnetworkpolicies.yaml", "ciliumnetworkpolicies.cilium.io")
    documents = _renderings(render_cilium_network_policy)
    result = _dry_run(plane, documents)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("created (server dry run)") == len(documents) == 30


def test_cilium_schema_refuses_what_we_never_write(plane: ControlPlane, crds: Path) -> None:
    _apply_crd(plane, crds / "cilium-v1.20.2-ciliumnetworkpolicies.yaml", "ciliumnetworkpolicies.cilium.io")
    good = render_cilium_network_policy(_pod(POLICIES[0]), parse_policy(json.dumps(POLICIES[0])).policy, DNS[0])
    assert _dry_run(plane, [good]).returncode == 0
    bad_protocol = copy.deepcopy(good)  # Cilium does not match ICMP by port rules: our rules never name it
    bad_protocol["spec"]["egress"][1]["toPorts"][0]["ports"][0]["protocol"] = "ICMP"
    bad_range = copy.deepcopy(good)
    bad_range["spec"]["egress"][1]["toPorts"][0]["ports"][0]["endPort"] = 70000
    bad_name = copy.deepcopy(good)  # what parse_fqdn refuses at admission, the CRD refuses too
    bad_name["spec"]["egress"][2]["toFQDNs"] = [{"matchName": "a b.example.com"}]
    for bad, reason in ((bad_protocol, "protocol"), (bad_range, "endPort"), (bad_name, "matchName")):
        result = _dry_run(plane, [bad])
        assert result.returncode != 0 and reason in result.stderr, result.stdout + result.stderr


def test_cluster_network_policies_validate_in_both_versions_of_network_policy_api_0_3(plane: ControlPlane, crds: Path) -> None:
    _apply_crd(plane, crds / "network-policy-api-v0.3.0-experimental.yaml", "clusternetworkpolicies.policy.networking.k8s.io")
    for version in ("v1beta1", "v1alpha2"):
        documents = _renderings(render_cluster_network_policy, version=version)
        result = _dry_run(plane, documents)
        assert result.returncode == 0, result.stderr
        assert result.stdout.count("created (server dry run)") == len(documents) == 30


def test_cluster_network_policy_schema_shapes_our_rendering(plane: ControlPlane, crds: Path) -> None:
    """Each rule below is why the renderer writes what it writes; the CRD must refuse the alternative."""
    _apply_crd(plane, crds / "network-policy-api-v0.3.0-experimental.yaml", "clusternetworkpolicies.policy.networking.k8s.io")
    good = render_cluster_network_policy(_pod(POLICIES[0]), parse_policy(json.dumps(POLICIES[0])).policy, DNS[0])
    assert _dry_run(plane, [good]).returncode == 0
    too_many = copy.deepcopy(good)  # 26 rules: why backends/ refuses more than 21 port sets
    too_many["spec"]["egress"] = [too_many["spec"]["egress"][-1]] * 26
    empty_tcp = copy.deepcopy(good)  # "every TCP port" cannot be {}: we write the range 1-65535
    empty_tcp["spec"]["egress"][1]["protocols"] = [{"tcp": {}}]
    one_port_range = copy.deepcopy(good)  # a range must have start < end: a single port is a number
    one_port_range["spec"]["egress"][1]["protocols"] = [{"tcp": {"destinationPort": {"range": {"start": 80, "end": 80}}}}]
    wide_peer = copy.deepcopy(good)  # at most 25 networks in a peer: we write chunks of 25
    wide_peer["spec"]["egress"][1]["to"] = [{"networks": [f"10.{i}.0.0/16" for i in range(26)]}]
    host_bits = copy.deepcopy(good)  # networks must be masked: ours are canonical
    host_bits["spec"]["egress"][1]["to"] = [{"networks": ["10.0.0.1/8"]}]
    for bad, reason in ((too_many, "egress"), (empty_tcp, "tcp"), (one_port_range, "Start port must be less than End port"),
                        (wide_peer, "networks"), (host_bits, "Invalid CIDR format provided")):
        result = _dry_run(plane, [bad])
        assert result.returncode != 0 and reason in result.stderr, result.stdout + result.stderr


def test_the_standard_channel_cannot_hold_domain_names(plane: ControlPlane, crds: Path) -> None:
    """Without the experimental CRD, FQDN rules cannot be written: what capability detection must see."""
    _apply_crd(plane, crds / "network-policy-api-v0.3.0-standard.yaml", "clusternetworkpolicies.policy.networking.k8s.io")
    try:
        with_names = render_cluster_network_policy(_pod(POLICIES[0]), parse_policy(json.dumps(POLICIES[0])).policy, DNS[0],
                                                   version="v1alpha2")
        result = _dry_run(plane, [with_names])
        assert result.returncode != 0 and "domainNames" in result.stderr, result.stdout + result.stderr
        without = render_cluster_network_policy(_pod(POLICIES[3]), parse_policy(json.dumps(POLICIES[3])).policy, DNS[0],
                                                version="v1alpha2")
        assert _dry_run(plane, [without]).returncode == 0
    finally:
        _apply_crd(plane, crds / "network-policy-api-v0.3.0-experimental.yaml", "clusternetworkpolicies.policy.networking.k8s.io")


def test_cluster_network_policies_validate_against_v1alpha2_as_cilium_ships_it(plane: ControlPlane, crds: Path) -> None:
    """network-policy-api v0.2.0 serves v1alpha2 only (Cilium 1.20 wants this CRD)."""
    assert plane.kubectl("delete", "crd", "clusternetworkpolicies.policy.networking.k8s.io", "--wait").returncode == 0
    _apply_crd(plane, crds / "network-policy-api-v0.2.0-experimental.yaml", "clusternetworkpolicies.policy.networking.k8s.io")
    documents = _renderings(render_cluster_network_policy, version="v1alpha2")
    result = _dry_run(plane, documents)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("created (server dry run)") == len(documents)
