"""cert-manager for real, in both install paths (the kustomize overlay and the chart's certManager
mode): cert-manager's own controllers and CA injector (v1.21.2, built from the Go module proxy:
tests/cluster/build-cert-manager.sh) run as processes against the control plane with its real
CRDs. The Certificate is issued, the CA is injected into our webhook configuration, admissions
through the API server succeed with it, and keep succeeding across a forced renewal.

The webhook runs on loopback as in every control-plane test, serving the Secret's files the way
kubelet mounts them (an atomic swap of a ..data link, seconds after the Secret changes)."""

from __future__ import annotations

import base64
import datetime
import json
import os
import signal
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from tests.cluster.harness import ControlPlane, free_port, stop_process_group, wait_for
from tests.support import CLI, admission_failure, cert_manager_tool, control_plane_binaries, helm_tools, session_pod

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "manifests" / "helm" / "sortie-egress"


@pytest.fixture
def plane(tmp_path: Path) -> Iterator[ControlPlane]:
    """A control plane of its own, cert-manager's CRDs installed and its controller and CA injector running."""
    binary = cert_manager_tool()
    crds = [path for path in helm_tools().crds if "cert-manager.io" in path.name]
    control = ControlPlane(control_plane_binaries(), root=tmp_path / "plane", with_scheduler=False).start()
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for crd in crds:
            control.kubectl("apply", "--server-side", "-f", str(crd), check=True)
        wait_for(lambda: control.kubectl("get", "certificates.cert-manager.io", "-A").returncode == 0, 30, "the CRDs")
        for command in ("controller", "cainjector"):
            log = (tmp_path / f"cert-manager-{command}.log").open("ab")
            processes.append(subprocess.Popen([str(binary), command, "--kubeconfig", str(control.kubeconfig_path)],
                                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
            log.close()
            wait_for(lambda command=command: "started" in (tmp_path / f"cert-manager-{command}.log").read_text(errors="replace"),
                     30, f"cert-manager's {command}")
        yield control
    finally:
        for process in processes:
            stop_process_group(process, 10)
        control.stop()


class KubeletMount:
    """The Secret's tls.crt and tls.key in a folder, updated as kubelet does it: the new files in a
    fresh folder, then the ..data link swapped in one rename, and late. Kubelet applies a Secret's
    change at its next sync of the pod (up to a minute and its cache's TTL later); here ``delay``
    seconds after the change is seen (polled every 0.2 s), long enough that the API server's new
    caBundle and the webhook's old certificate meet if they can disagree."""

    def __init__(self, core: Any, namespace: str, name: str, folder: Path, delay: float = 3.0) -> None:
        self.core, self.namespace, self.name, self.folder = core, namespace, name, folder
        self.delay = delay
        self.version = ""
        self.updates = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, daemon=True)

    def sync(self) -> bool:
        from kubernetes.client.exceptions import ApiException

        try:
            secret = self.core.read_namespaced_secret(self.name, self.namespace)
        except ApiException:
            return False
        if secret.metadata.resource_version == self.version or "tls.crt" not in (secret.data or {}):
            return bool(self.version)
        stamp = self.folder / f"..{secret.metadata.resource_version}"
        stamp.mkdir(parents=True)
        for key in ("tls.crt", "tls.key", "ca.crt"):
            (stamp / key).write_bytes(base64.b64decode(secret.data[key]))
        link = self.folder / "..data_tmp"
        link.unlink(missing_ok=True)
        link.symlink_to(stamp.name)
        os.replace(link, self.folder / "..data")
        for key in ("tls.crt", "tls.key"):
            if not (self.folder / key).is_symlink():
                (self.folder / key).symlink_to(f"..data/{key}")
        self.version = secret.metadata.resource_version
        self.updates += 1
        return True

    def _follow(self) -> None:
        seen: tuple[str, float] | None = None  # a newer version, and when it was first seen
        while not self._stop.wait(0.2):
            try:
                version = self.core.read_namespaced_secret(self.name, self.namespace).metadata.resource_version
            except Exception:  # the API may blink; kubelet retries too
                continue
            if version == self.version:
                continue
            if seen is None or seen[0] != version:
                seen = (version, time.monotonic())
            if time.monotonic() - seen[1] >= self.delay:
                self.sync()
                seen = None

    def start(self) -> KubeletMount:
        wait_for(self.sync, 60, f"cert-manager to write {self.namespace}/{self.name}")
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def _serving(core: Any, namespace: str) -> tuple[x509.Certificate, bytes]:
    secret = core.read_namespaced_secret("sortie-egress-tls", namespace)
    return x509.load_pem_x509_certificate(base64.b64decode(secret.data["tls.crt"])), base64.b64decode(secret.data["ca.crt"])


def _ready(plane: ControlPlane, namespace: str, name: str) -> bool:
    found = plane.kubectl("get", "certificate", name, "-n", namespace, "-o", "json")
    if found.returncode != 0:
        return False
    conditions = json.loads(found.stdout).get("status", {}).get("conditions", [])
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def _force_renewal(plane: ControlPlane, namespace: str, name: str) -> None:
    """What `cmctl renew` does: the Issuing condition, set by hand on the status."""
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    condition = {"type": "Issuing", "status": "True", "reason": "ManuallyTriggered",
                 "message": "re-issuance forced by the test", "lastTransitionTime": now}
    plane.kubectl("patch", "certificate", name, "-n", namespace, "--subresource=status", "--type=json",
                  "-p", json.dumps([{"op": "add", "path": "/status/conditions/-", "value": condition}]), check=True)


def _exercise(plane: ControlPlane, namespace: str, port: int, tmp_path: Path) -> None:
    """Issued, injected, admitting, and still admitting across a forced renewal."""
    from kubernetes import client

    api = plane.admin.api_client()
    core = client.CoreV1Api(api)
    admission = client.AdmissionregistrationV1Api(api)
    wait_for(lambda: _ready(plane, namespace, "sortie-egress-serving"), 60, "the serving Certificate to be issued")
    certificate, ca = _serving(core, namespace)
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert f"sortie-egress.{namespace}.svc" in names.get_values_for_type(x509.DNSName)
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    issuer = x509.load_pem_x509_certificate(ca)
    assert certificate.issuer == issuer.subject and issuer.subject.rfc4514_string() == "CN=sortie-egress webhook CA"
    # cert-manager's CA injector, not us, puts the CA into our webhook configuration.
    injected = wait_for(lambda: admission.read_mutating_webhook_configuration("sortie-egress").webhooks[0].client_config.ca_bundle,
                        30, "cert-manager's CA injector")
    assert base64.b64decode(injected) == ca

    mount = KubeletMount(core, namespace, "sortie-egress-tls", tmp_path / "tls").start()
    log = (tmp_path / "webhook.log").open("ab")
    webhook = subprocess.Popen([CLI, "serve", "--host", "127.0.0.1", "--port", str(port),
                                "--tls-cert", str(tmp_path / "tls" / "tls.crt"), "--tls-key", str(tmp_path / "tls" / "tls.key")],
                               stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    try:
        probe = session_pod(policy={"mode": "allowlist", "rules": [{"cidr": "10.0.0.0/8"}]})
        wait_for(lambda: (core.create_namespaced_pod("default", probe, dry_run="All").metadata.labels or {}).get(
            "sortie.io/egress-mode") == "allowlist", 30, "admissions through the API server")

        def admissions_while(changed: Any) -> tuple[int, list[str]]:
            """Admissions through the API server until ``changed()`` holds and five seconds after."""
            attempts, failures, changed_at = 0, [], None
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                attempts += 1
                failure = admission_failure(core)
                if failure is not None:
                    failures.append(failure)
                if changed_at is None and changed():
                    changed_at = time.monotonic()
                if changed_at is not None and time.monotonic() - changed_at > 5:
                    return attempts, failures
                time.sleep(0.05)  # pacing the load loop, not waiting for a condition
            raise AssertionError(f"no change within 60 s ({attempts} admissions, {len(failures)} failed)")

        # 1. The serving certificate, renewed by force: a new key, the same CA.
        _force_renewal(plane, namespace, "sortie-egress-serving")
        attempts, failures = admissions_while(lambda: _serving(core, namespace)[0].serial_number != certificate.serial_number)
        renewed, renewed_ca = _serving(core, namespace)
        assert renewed.public_key().public_numbers() != certificate.public_key().public_numbers(), "rotationPolicy Always: a new key"
        assert renewed_ca == ca, "the serving certificate's renewal keeps the CA the API server trusts"
        wait_for(lambda: mount.updates >= 2, 15, "the mount to follow the renewal")
        print(f"cert-manager serving renewal: {attempts} admissions, {len(failures)} failed")
        assert failures == [], f"{len(failures)} of {attempts} admissions failed across the renewal: {failures[:3]}"

        # 2. The CA, renewed by force (a new key: cert-manager's default rotationPolicy), then a
        # serving certificate from the renewed CA. The caBundle (cert-manager's injector) and the
        # served certificate (the late kubelet mount) change seconds apart; cert-manager keeps the
        # old CA next to the new one in ca.crt, so they never disagree.
        def ca_secret() -> x509.Certificate:
            secret = core.read_namespaced_secret("sortie-egress-ca", namespace)
            return x509.load_pem_x509_certificate(base64.b64decode(secret.data["tls.crt"]))

        old_ca = ca_secret()
        _force_renewal(plane, namespace, "sortie-egress-ca")
        attempts, failures = admissions_while(lambda: ca_secret().serial_number != old_ca.serial_number)
        new_ca = ca_secret()
        assert new_ca.public_key().public_numbers() != old_ca.public_key().public_numbers(), "a renewed CA, a new key"
        _force_renewal(plane, namespace, "sortie-egress-serving")
        more, more_failures = admissions_while(
            lambda: _serving(core, namespace)[1] != ca and base64.b64decode(
                admission.read_mutating_webhook_configuration("sortie-egress").webhooks[0].client_config.ca_bundle) != ca)
        attempts, failures = attempts + more, failures + more_failures
        renewed, renewed_ca = _serving(core, namespace)
        bundle = x509.load_pem_x509_certificates(base64.b64decode(
            admission.read_mutating_webhook_configuration("sortie-egress").webhooks[0].client_config.ca_bundle))
        assert new_ca.serial_number in {authority.serial_number for authority in bundle}
        print(f"cert-manager CA renewal: {attempts} admissions, {len(failures)} failed")
        assert failures == [], f"{len(failures)} of {attempts} admissions failed across the CA renewal: {failures[:3]}"
        # The webhook serves the renewed certificate (it reloads the mounted files when they change).
        wait_for(lambda: x509.load_pem_x509_certificate(ssl.get_server_certificate(("127.0.0.1", port)).encode())
                 .serial_number == renewed.serial_number, 15, "the webhook to serve the renewed certificate")
    finally:
        mount.stop()
        webhook.send_signal(signal.SIGTERM)
        webhook.wait(20)


def test_the_kustomize_overlay_with_cert_manager(plane: ControlPlane, tmp_path: Path) -> None:
    plane.kubectl("create", "namespace", "sortie-system", check=True)
    applied = plane.kubectl("apply", "-k", str(ROOT / "manifests" / "overlays" / "cert-manager"))
    assert applied.returncode == 0, applied.stderr
    # The overlay targets the in-cluster Service; here the webhook listens on loopback, so the test
    # points the configuration there and has the certificate name 127.0.0.1 too.
    port = free_port()
    plane.kubectl("patch", "certificate", "sortie-egress-serving", "-n", "sortie-system", "--type=merge",
                  "-p", json.dumps({"spec": {"ipAddresses": ["127.0.0.1"]}}), check=True)
    plane.kubectl("patch", "mutatingwebhookconfiguration", "sortie-egress", "--type=json", "-p", json.dumps(
        [{"op": "replace", "path": "/webhooks/0/clientConfig", "value": {"url": f"https://127.0.0.1:{port}/mutate"}}]),
        check=True)
    # ...and without the start-up wait (no canary here), which the admission policies must be told.
    plane.kubectl("annotate", "--overwrite", "serviceaccount", "sortie-egress", "-n", "sortie-system",
                  "sortie.io/enforcement-wait=off", check=True)
    _exercise(plane, "sortie-system", port, tmp_path)


def test_the_chart_in_cert_manager_mode(plane: ControlPlane, tmp_path: Path) -> None:
    tools = helm_tools()
    plane.kubectl("create", "namespace", "egress-team", check=True)
    port = free_port()
    installed = subprocess.run([str(tools.helm3), "--kubeconfig", str(plane.kubeconfig_path), "install", "sortie-egress",
                                str(CHART), "-n", "egress-team", "--set", "certificates.mode=certManager",
                                "--set", f"webhook.url=https://127.0.0.1:{port}", "--set", "enforcementWait.enabled=false"],
                               capture_output=True, text=True, timeout=120)
    assert installed.returncode == 0, installed.stderr
    _exercise(plane, "egress-team", port, tmp_path)
