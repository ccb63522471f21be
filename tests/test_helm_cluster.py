"""The Helm chart against the real control plane: every ci/ values file accepted by the API server
(cert-manager's and the Prometheus Operator's real CRDs installed), and, with Helm 3 and Helm 4
(which applies server-side), install into a namespace other than sortie-system, a session pod
admitted and enforced through what the chart created, an upgrade that applies changed values
without dropping the injected CA, and an uninstall that leaves no webhook configuration,
admission policy, ClusterRole or binding behind."""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.harness import ControlPlane, free_port, wait_for
from tests.support import (CLI, MODE_EXISTS, ControllerProcess, control_plane_binaries, helm_tools, policy_crds,
                           session_pod)

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "manifests" / "helm" / "sortie-egress"
VALUES_FILES = sorted((CHART / "ci").glob("*-values.yaml"))
NAMESPACE = "egress-team"
SESSIONS = "sessions"

POLICY = {"mode": "allowlist", "rules": [{"cidr": "10.0.0.0/8", "port": 443, "protocol": "TCP"}]}
# What the controller must make of POLICY, written out by hand (CONTRACT §3), DNS to the cluster's resolver.
POLICY_EGRESS = [
    {"ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
     "to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
             "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}]},
    {"ports": [{"protocol": "TCP", "port": 443}], "to": [{"ipBlock": {"cidr": "10.0.0.0/8"}}]},
]


@pytest.fixture(scope="module")
def tools() -> Any:
    return helm_tools()


@pytest.fixture
def plane(tmp_path: Path) -> Iterator[ControlPlane]:
    """A control plane of its own per test: the chart registers cluster-wide objects."""
    control = ControlPlane(control_plane_binaries(), root=tmp_path / "plane", with_scheduler=False).start()
    yield control
    control.stop()


def helm(tools: Any, major: str, plane: ControlPlane, *args: str) -> subprocess.CompletedProcess[str]:
    binary = tools.by_major()[major]
    return subprocess.run([str(binary), "--kubeconfig", str(plane.kubeconfig_path), *args], capture_output=True,
                          text=True, timeout=180)


def _create_namespaces(plane: ControlPlane, *names: str) -> None:
    for name in names:
        created = plane.kubectl("create", "namespace", name)
        assert created.returncode == 0, created.stderr


def test_every_ci_values_file_is_accepted_by_the_api_server(plane: ControlPlane, tools: Any) -> None:
    """A server-side dry run (strict field validation) of every rendering, custom kinds included."""
    # Cilium's clusterwide kind too: the cilium backend's values ship the node guard.
    for crd in [*tools.crds, policy_crds() / "cilium-v1.20.2-ciliumclusterwidenetworkpolicies.yaml"]:
        applied = plane.kubectl("apply", "--server-side", "-f", str(crd))
        assert applied.returncode == 0, applied.stderr
    wait_for(lambda: plane.kubectl("get", "certificates.cert-manager.io,servicemonitors.monitoring.coreos.com,"
                                   "ciliumclusterwidenetworkpolicies.cilium.io", "-A").returncode == 0,
             30, "the CRDs to be served")
    _create_namespaces(plane, NAMESPACE, "sessions", "sessions-eu")
    for values in VALUES_FILES:
        rendered = subprocess.run([str(tools.helm3), "template", "sortie-egress", str(CHART), "-n", NAMESPACE,
                                   "-f", str(values)], capture_output=True, text=True)
        assert rendered.returncode == 0, rendered.stderr
        result = plane.kubectl("apply", "--dry-run=server", "--validate=strict", "-f", "-", input=rendered.stdout)
        assert result.returncode == 0, f"{values.name}: {result.stderr}"


class Product:
    """The controller and the webhook as the tests run them (processes on loopback), under the
    ServiceAccounts, RBAC and Secrets the chart made in NAMESPACE."""

    def __init__(self, plane: ControlPlane, port: int, folder: Path) -> None:
        self.plane, self.port, self.folder = plane, port, folder
        self.controller: ControllerProcess | None = None
        self.webhook: subprocess.Popen[bytes] | None = None

    def start(self) -> Product:
        controller_config = self.plane.kubeconfig_for("chart-controller", self.plane.credentials_for_service_account(
            NAMESPACE, "sortie-egress", create=False))
        webhook_config = self.plane.kubeconfig_for("chart-webhook", self.plane.credentials_for_service_account(
            NAMESPACE, "sortie-egress-webhook", create=False))
        self.controller = ControllerProcess(controller_config, self.folder / "controller.log", extra_args=(
            "--system-namespace", NAMESPACE, "--manage-certificates", "--certificate-hosts", "127.0.0.1")).start()
        with (self.folder / "webhook.log").open("ab") as log:
            self.webhook = subprocess.Popen(
                [CLI, "serve", "--host", "127.0.0.1", "--port", str(self.port), "--tls-secret",
                 f"{NAMESPACE}/sortie-egress-tls", "--kubeconfig", str(webhook_config)],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()
        if self.webhook is not None and self.webhook.poll() is None:
            self.webhook.send_signal(signal.SIGTERM)
            self.webhook.wait(20)


def _api(plane: ControlPlane) -> tuple[Any, Any, Any]:
    from kubernetes import client

    api = plane.admin.api_client()
    return client.CoreV1Api(api), client.NetworkingV1Api(api), client.AdmissionregistrationV1Api(api)


def _read(call: Any, *args: str) -> dict[str, Any] | None:
    from kubernetes.client.exceptions import ApiException

    try:
        return json.loads(call(*args, _preload_content=False).data)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def _enforced_session(core: Any, networking: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """A real session pod: mutated and gated at creation, then its policy written and its gate lifted."""
    pod = session_pod(policy=POLICY, namespace=SESSIONS)
    created = core.create_namespaced_pod(SESSIONS, pod)
    assert created.metadata.labels.get("sortie.io/egress-mode") == "allowlist"
    assert [gate.name for gate in created.spec.scheduling_gates or []] == ["sortie.io/egress-policy"]
    session = pod["metadata"]["labels"]["sortie.io/session-id"]

    def released() -> dict[str, Any] | None:
        stored = _read(core.read_namespaced_pod, pod["metadata"]["name"], SESSIONS)
        policy = _read(networking.read_namespaced_network_policy, f"sortie-egress-{session}", SESSIONS)
        gates = [gate["name"] for gate in (stored or {}).get("spec", {}).get("schedulingGates") or []]
        return policy if policy is not None and "sortie.io/egress-policy" not in gates else None

    policy = wait_for(released, 30, "the session's policy and the gate lifted")
    assert policy["spec"] == {"podSelector": {"matchLabels": {"sortie.io/session-id": session}, "matchExpressions": MODE_EXISTS},
                              "policyTypes": ["Egress"], "egress": POLICY_EGRESS}
    return pod, policy


def _leftovers(plane: ControlPlane) -> dict[str, list[str]]:
    """Every cluster-scoped object of ours, listed the way an operator would look for them."""
    found: dict[str, list[str]] = {}
    for kind in ("mutatingwebhookconfigurations", "validatingwebhookconfigurations", "validatingadmissionpolicies",
                 "validatingadmissionpolicybindings", "clusterroles", "clusterrolebindings", "priorityclasses"):
        listed = plane.kubectl("get", kind, "-o", "json")
        assert listed.returncode == 0, listed.stderr
        names = [item["metadata"]["name"] for item in json.loads(listed.stdout)["items"]]
        found[kind] = [name for name in names if name.startswith("sortie-egress")]
    return found


@pytest.mark.parametrize("major", ["helm3", "helm4"])
def test_install_admit_enforce_upgrade_uninstall(plane: ControlPlane, tools: Any, major: str, tmp_path: Path) -> None:
    core, networking, admission = _api(plane)
    _create_namespaces(plane, NAMESPACE, SESSIONS)
    port = free_port()
    url = f"https://127.0.0.1:{port}"
    # The webhook runs here on loopback without the start-up wait (no canary to probe from a pod), so the
    # install says so: the admission policies would otherwise refuse session pods that lack it.
    installed = helm(tools, major, plane, "install", "sortie-egress", str(CHART), "-n", NAMESPACE,
                     "--set", f"webhook.url={url}", "--set", "enforcementWait.enabled=false")
    assert installed.returncode == 0, installed.stderr
    print(f"{major} install:\n{installed.stdout}")

    # Helm 4 applies server-side (field manager "helm", operation Apply); Helm 3 patches client-side.
    managers = {(entry["manager"], entry["operation"]) for entry in json.loads(plane.kubectl(
        "get", "mutatingwebhookconfiguration", "sortie-egress", "-o", "json", "--show-managed-fields", check=True)
        .stdout)["metadata"]["managedFields"]}
    assert ("helm", "Apply" if major == "helm4" else "Update") in managers, managers

    product = Product(plane, port, tmp_path).start()
    try:
        # The controller injects its CA into the chart's webhook configuration; the API server then
        # calls the webhook with it.
        wait_for(lambda: admission.read_mutating_webhook_configuration("sortie-egress").webhooks[0].client_config.ca_bundle,
                 30, "the controller to inject its CA")
        probe = session_pod(policy={"mode": "allowlist"})
        wait_for(lambda: (core.create_namespaced_pod(SESSIONS, probe, dry_run="All").metadata.labels or {}).get(
            "sortie.io/egress-mode") == "allowlist", 30, "admissions through the API server")
        pod, policy = _enforced_session(core, networking)

        # Tamper protection from the chart's admission policies, whose parameter is in NAMESPACE:
        # a namespace admin who is not our controller can neither delete nor widen the policy.
        plane.kubectl("create", "rolebinding", "mallory-admin", "-n", SESSIONS, "--clusterrole=admin", "--user=mallory",
                      check=True)
        mallory = plane.kubeconfig_for("mallory", plane.credentials_for_user("mallory"))
        # RBAC first (the authorizer sees a new binding through its cache): then only admission can refuse.
        wait_for(lambda: plane.kubectl("auth", "can-i", "delete", "networkpolicies", "-n", SESSIONS,
                                       kubeconfig=mallory).stdout.strip() == "yes", 30, "mallory's admin rights")
        deleted = plane.kubectl("delete", "networkpolicy", policy["metadata"]["name"], "-n", SESSIONS, kubeconfig=mallory)
        assert deleted.returncode != 0 and "cannot be deleted by mallory" in deleted.stderr, deleted.stderr
        widened = plane.kubectl("patch", "networkpolicy", policy["metadata"]["name"], "-n", SESSIONS, "--type=json",
                                "-p", json.dumps([{"op": "add", "path": "/spec/egress/-", "value": {}}]), kubeconfig=mallory)
        assert widened.returncode != 0 and "cannot be changed by mallory" in widened.stderr, widened.stderr

        # helm upgrade with changed values: applied, and the injected caBundle is not dropped.
        ca_bundle = admission.read_mutating_webhook_configuration("sortie-egress").webhooks[0].client_config.ca_bundle
        upgraded = helm(tools, major, plane, "upgrade", "sortie-egress", str(CHART), "-n", NAMESPACE,
                        "--set", f"webhook.url={url}", "--set", "enforcementWait.enabled=false",
                        "--set", "webhook.timeoutSeconds=9",
                        "--set", "privilegedUsers={mallory}")
        assert upgraded.returncode == 0, upgraded.stderr
        hook = admission.read_mutating_webhook_configuration("sortie-egress").webhooks[0]
        assert hook.timeout_seconds == 9
        assert hook.client_config.ca_bundle == ca_bundle, f"{major} upgrade dropped or changed the injected caBundle"
        account = core.read_namespaced_service_account("sortie-egress", NAMESPACE)
        assert account.metadata.annotations["sortie.io/privileged-users"] == "mallory"
        # The new privileged user is honoured by the admission policies (their parameter changed).
        wait_for(lambda: plane.kubectl("label", "--dry-run=server", "networkpolicy", policy["metadata"]["name"], "-n",
                                       SESSIONS, "example.com/checked=yes", kubeconfig=mallory).returncode == 0,
                 30, "mallory to be allowed after the upgrade")
        _enforced_session(core, networking)  # admissions keep working after the upgrade
    finally:
        product.stop()

    uninstalled = helm(tools, major, plane, "uninstall", "sortie-egress", "-n", NAMESPACE, "--wait")
    assert uninstalled.returncode == 0, uninstalled.stderr
    leftovers = _leftovers(plane)
    print(f"after {major} uninstall: {leftovers}")
    assert leftovers == {kind: [] for kind in leftovers}
    in_namespace = plane.kubectl("get", "all,serviceaccounts,roles,rolebindings,poddisruptionbudgets,secrets,leases",
                                 "-n", NAMESPACE, "-o", "json")
    assert in_namespace.returncode == 0, in_namespace.stderr
    remaining = sorted(f"{item['kind']}/{item['metadata']['name']}" for item in json.loads(in_namespace.stdout)["items"]
                       if item["metadata"]["name"] != "default" and not item["metadata"]["name"].startswith("kube-root-ca"))
    # What the controller made at run time, not the chart: its Lease and the certificate Secrets
    # (docs/operations.md says to delete them, or the namespace).
    assert remaining == ["Lease/sortie-egress-controller", "Secret/sortie-egress-ca", "Secret/sortie-egress-tls"]
    # Existing sessions keep their policies (owned by their pods, collected with them)...
    assert _read(networking.read_namespaced_network_policy, policy["metadata"]["name"], SESSIONS) is not None
    # ...and new session pods are admitted unchanged: nothing is left to block them.
    probe = session_pod(policy={"mode": "allowlist"})
    wait_for(lambda: "sortie.io/egress-mode" not in (core.create_namespaced_pod(SESSIONS, probe, dry_run="All")
                                                     .metadata.labels or {}), 30, "the webhook to be gone")
    assert _read(core.read_namespaced_pod, pod["metadata"]["name"], SESSIONS) is not None
