"""The control plane itself: real garbage collection, real RBAC, a clean stop."""

from __future__ import annotations

import json

import pytest

from tests.cluster.binaries import find_binaries
from tests.cluster.harness import NODE_PORTS, ControlPlane, free_port, port_is_bound, wait_for

pytestmark = pytest.mark.cluster


def test_garbage_collector_removes_networkpolicy_owned_by_deleted_pod(control_plane: ControlPlane, namespace: str) -> None:
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "owner", "namespace": namespace},
           "spec": {"containers": [{"name": "c", "image": "registry.invalid/x:1"}]}}
    applied = control_plane.kubectl("apply", "-f", "-", "-o", "json", input=json.dumps(pod))
    assert applied.returncode == 0, applied.stderr
    uid = json.loads(applied.stdout)["metadata"]["uid"]
    policy = {
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "owned", "namespace": namespace,
                     "ownerReferences": [{"apiVersion": "v1", "kind": "Pod", "name": "owner", "uid": uid,
                                          "controller": True, "blockOwnerDeletion": True}]},
        "spec": {"podSelector": {}, "policyTypes": ["Egress"]},
    }
    created = control_plane.kubectl("apply", "-f", "-", input=json.dumps(policy))
    assert created.returncode == 0, created.stderr

    # Bound to a node with no kubelet, a pod would wait forever for graceful termination.
    deleted = control_plane.kubectl("delete", "pod", "owner", "-n", namespace, "--grace-period=0", "--force")
    assert deleted.returncode == 0, deleted.stderr

    def policy_gone() -> bool:
        result = control_plane.kubectl("get", "networkpolicy", "owned", "-n", namespace)
        return result.returncode != 0 and "NotFound" in result.stderr

    wait_for(policy_gone, 60, "the garbage collector to delete the owned NetworkPolicy")


def test_rbac_is_enforced_for_service_accounts(control_plane: ControlPlane, namespace: str) -> None:
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    credentials = control_plane.credentials_for_service_account(namespace, "nobody")
    with credentials.api_client() as api:
        with pytest.raises(ApiException) as refused:
            client.NetworkingV1Api(api).list_namespaced_network_policy(namespace)
    assert refused.value.status == 403
    kubeconfig = control_plane.kubeconfig_for("nobody", credentials)
    who = control_plane.kubectl("auth", "whoami", "-o", "jsonpath={.status.userInfo.username}", kubeconfig=kubeconfig)
    assert who.stdout == f"system:serviceaccount:{namespace}:nobody", who.stderr


def test_control_plane_starts_fast_and_stops_cleanly(tmp_path) -> None:
    plane = ControlPlane(find_binaries(build=False), root=tmp_path / "second", with_scheduler=False)
    plane.start()
    try:
        assert plane.startup_seconds < 20, f"took {plane.startup_seconds:.1f} s"
        ports = [component.port for component in plane.components]
        pids = [component.process.pid for component in plane.components if component.process]
        assert all(port_is_bound(port) for port in ports)
    finally:
        plane.stop()
    assert not any(port_is_bound(port) for port in ports)
    assert all(component.process.poll() is not None for component in plane.components if component.process)
    assert len(pids) == 3


def test_free_ports_stay_out_of_the_node_port_and_ephemeral_ranges() -> None:
    """A component on a NodePort-range port is reachable from every pod on kube-router, policies or
    not (the node matrix's node column was open in one run of four); an ephemeral one may be taken."""
    low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
    ports = [free_port() for _ in range(2000)]
    assert all(20000 <= port < min(low, 30000) for port in ports), sorted(set(ports))[-5:]
    assert NODE_PORTS == (30000, 32767)  # the API server's default range, which the harness keeps
