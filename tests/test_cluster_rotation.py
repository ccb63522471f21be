"""Self-managed certificates, end to end: the shipped self-managed overlay, the controller rotating
with short lifetimes, the webhook following its Secret, and admissions through the API server."""

from __future__ import annotations

import base64
import ssl
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from tests.cluster.harness import ControlPlane, free_port, wait_for
from tests.support import CLI, ControllerProcess, admission_failure, control_plane_binaries, session_pod
from tests.test_enforcement import free_port_pair
from sortie_egress.wait import Trust, ask

pytestmark = pytest.mark.cluster
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def plane(tmp_path: Path) -> Iterator[ControlPlane]:
    """A control plane of its own: the overlay registers webhooks cluster-wide and the controller rewrites their caBundle."""
    control = ControlPlane(control_plane_binaries(), root=tmp_path / "plane", with_scheduler=False).start()
    yield control
    control.stop()


def _serving(core, name: str = "sortie-egress-tls") -> tuple[bytes, bytes] | None:  # type: ignore[no-untyped-def]
    from kubernetes.client.exceptions import ApiException

    try:
        secret = core.read_namespaced_secret(name, "sortie-system")
    except ApiException:
        return None
    return base64.b64decode(secret.data["tls.crt"]), base64.b64decode(secret.data["ca.crt"])


def _injected_trust(core, pod: dict) -> Trust:  # type: ignore[no-untyped-def,type-arg]
    """The trust the webhook pins in a session pod's wait right now (a dry-run create)."""
    created = core.create_namespaced_pod("default", pod, dry_run="All")
    command = created.spec.init_containers[0].command
    return Trust.pinned(command[command.index("--ca-bundle") + 1], command[command.index("--identity") + 1])


def _canary_proves_itself(trust: Trust, port: int, seconds: float = 3.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if ask("127.0.0.1", port, 1.0, trust).status is not None:
            return True
        time.sleep(0.1)  # pacing retries, as the wait does
    return False


def test_admissions_keep_succeeding_across_rotations(plane: ControlPlane, tmp_path: Path) -> None:
    import signal
    import subprocess

    from kubernetes import client

    assert plane.kubectl("create", "namespace", "sortie-system").returncode == 0
    applied = plane.kubectl("apply", "-k", str(ROOT / "manifests" / "overlays" / "self-managed"))
    assert applied.returncode == 0, applied.stderr
    # The webhook runs on loopback here, without the start-up wait: the admission policies are told.
    plane.kubectl("annotate", "--overwrite", "serviceaccount", "sortie-egress", "-n", "sortie-system",
                  "sortie.io/enforcement-wait=off", check=True)
    port = free_port()
    url = f"https://127.0.0.1:{port}"
    api = plane.admin.api_client()
    admission = client.AdmissionregistrationV1Api(api)
    # The shipped configurations point at the in-cluster Service; here the webhook runs on loopback.
    hooks = admission.read_mutating_webhook_configuration("sortie-egress").webhooks
    admission.patch_mutating_webhook_configuration("sortie-egress", [
        {"op": "replace", "path": f"/webhooks/{i}/clientConfig", "value": {"url": f"{url}{hook.client_config.service.path}"}}
        for i, hook in enumerate(hooks)])

    controller_kubeconfig = plane.kubeconfig_for("controller", plane.credentials_for_service_account("sortie-system", "sortie-egress", create=False))
    webhook_kubeconfig = plane.kubeconfig_for("webhook", plane.credentials_for_service_account("sortie-system", "sortie-egress-webhook", create=False))
    # The canary serves the same Secret's pair; the webhook pins every injected wait to its CAs and
    # first DNS name (localhost here), and pins anew as the Secret rotates.
    canary_port = free_port_pair()
    controller = ControllerProcess(controller_kubeconfig, tmp_path / "controller.log", extra_args=(
        "--manage-certificates", "--certificate-hosts", "127.0.0.1,localhost", "--ca-lifetime", "45s",
        "--serving-lifetime", "15s", "--certificate-overlap", "3s",
        "--canary-port", str(canary_port), "--canary-tls-secret", "sortie-egress-tls")).start()
    webhook_log = (tmp_path / "webhook.log").open("wb")
    webhook = subprocess.Popen([CLI, "serve", "--host", "127.0.0.1", "--port", str(port), "--tls-secret",
                                "sortie-egress-tls", "--kubeconfig", str(webhook_kubeconfig),
                                "--enforcement-canary", "127.0.0.1", "--enforcement-port", str(canary_port),
                                "--enforcement-image", "registry.invalid/sortie-egress:1"],
                               stdout=webhook_log, stderr=subprocess.STDOUT, start_new_session=True)
    core = client.CoreV1Api(api)
    try:
        def ready() -> bool:
            served = _serving(core)
            if served is None:
                return False
            context = ssl.create_default_context(cadata=served[1].decode())
            with urllib.request.urlopen(f"{url}/readyz", context=context, timeout=2) as reply:
                return reply.status == 200

        wait_for(ready, 30, "the webhook to serve the controller's certificate")
        probe = session_pod(policy={"mode": "allowlist", "rules": [{"cidr": "10.0.0.0/8"}]})
        wait_for(lambda: (core.create_namespaced_pod("default", probe, dry_run="All").metadata.labels or {}).get(
            "sortie.io/egress-mode") == "allowlist", 30, "admissions through the API server")

        attempts, failures = 0, []
        serials: set[int] = set()
        cas: set[bytes] = set()
        pins: set[tuple[str, str]] = set()
        unproven: list[str] = []
        deadline = time.monotonic() + 50
        while time.monotonic() < deadline:
            attempts += 1
            failure = admission_failure(core)
            if failure is not None:
                failures.append(failure)
            if attempts % 20 == 0:  # a session pod's wait, as injected now, asks the canary
                trust = _injected_trust(core, probe)
                pins.add((trust.identity, base64.b64encode(trust.context.get_ca_certs(binary_form=True)[0]).decode()))
                if not _canary_proves_itself(trust, canary_port):
                    unproven.append(f"attempt {attempts}: {ask('127.0.0.1', canary_port, 2.0, trust).error}")
            served = _serving(core)
            if served:
                serials.add(x509.load_pem_x509_certificate(served[0]).serial_number)
                cas |= {ca.fingerprint(ca.signature_hash_algorithm) for ca in x509.load_pem_x509_certificates(served[1])}
            time.sleep(0.05)  # pacing the load loop, not waiting for a condition

        # An operator re-applies the webhook configuration without its caBundle: the CAs are
        # no longer trusted, and the controller's next round puts them back.
        hooks = admission.read_mutating_webhook_configuration("sortie-egress").webhooks
        admission.patch_mutating_webhook_configuration("sortie-egress", [
            {"op": "remove", "path": f"/webhooks/{index}/clientConfig/caBundle"} for index in range(len(hooks))])
        restored = wait_for(lambda: admission.read_mutating_webhook_configuration("sortie-egress").webhooks[0]
                            .client_config.ca_bundle, 15, "the controller to restore the caBundle")
        served = _serving(core)
        assert served is not None

        def fingerprints(bundle: bytes) -> set[bytes]:
            return {ca.fingerprint(ca.signature_hash_algorithm) for ca in x509.load_pem_x509_certificates(bundle)}

        assert fingerprints(served[1]) <= fingerprints(base64.b64decode(restored))
    finally:
        controller.stop()
        webhook.send_signal(signal.SIGTERM)
        webhook.wait(20)
    print(f"rotation: {attempts} admissions, {len(failures)} failed, {len(serials)} serving certificates, {len(cas)} CAs")
    assert failures == [], f"{len(failures)} of {attempts} admissions failed: {failures[:3]}"
    # Every wait injected during the rotations believed our canary (within the seconds a wait
    # retries), and the pins followed the CA's rotation.
    assert unproven == [], unproven
    assert len({ca for _, ca in pins}) >= 2 and {identity for identity, _ in pins} == {"localhost"}, pins
    assert attempts > 200
    assert len(serials) >= 3, f"only {len(serials)} serving certificates seen: fewer than two rotations"
    assert len(cas) >= 2, "the CA never rotated"
    log = (tmp_path / "controller.log").read_text()
    assert "pending CA activated" in log and "new CA pending" in log
