"""Helpers shared by the tests: manifests, a webhook process, waiting on conditions."""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
import urllib.request
import uuid
from pathlib import Path
from typing import Any, NoReturn

from tests.cluster.harness import free_port, stop_process_group, wait_for

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
BIN = Path(sys.executable).parent
CLI = str(BIN / "sortie-egress")


#: What a session's policy object selects besides the session id, written out by hand: only the
#: session's pods admitted with a policy carry the mode label (CONTRACT §7, "joining").
MODE_EXISTS = [{"key": "sortie.io/egress-mode", "operator": "Exists"}]


def session_pod(
    name: str | None = None,
    session_id: str | None = None,
    policy: dict[str, Any] | str | None = None,
    namespace: str | None = None,
    app_id: str | None = "firefox",
    extra_labels: dict[str, str] | None = None,
    gates: list[str] | None = None,
) -> dict[str, Any]:
    """A session pod manifest; ``policy`` as a dict is JSON-encoded, as a str used verbatim."""
    session_id = session_id or uuid.uuid4().hex[:12]
    labels = {"sortie.io/session-id": session_id, **(extra_labels or {})}
    if app_id:
        labels["sortie.io/app-id"] = app_id
    metadata: dict[str, Any] = {"name": name or f"session-{session_id}", "labels": labels}
    if namespace:
        metadata["namespace"] = namespace
    if policy is not None:
        metadata["annotations"] = {"sortie.io/egress-policy": policy if isinstance(policy, str) else json.dumps(policy)}
    spec: dict[str, Any] = {"containers": [{"name": "app", "image": "registry.invalid/app:1"}]}
    if gates:
        spec["schedulingGates"] = [{"name": gate} for gate in gates]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}


def admission_failure(core: Any, namespace: str = "default") -> str | None:
    """One session pod CREATE through the API server (dry run): None when it was admitted and
    mutated, else why not (a refusal of any kind, or an admission without our mutation)."""
    try:
        created = core.create_namespaced_pod(namespace, session_pod(policy={"mode": "allowlist"}), dry_run="All")
    except Exception as exc:  # every refusal counts
        return str(exc)[:300]
    if (created.metadata.labels or {}).get("sortie.io/egress-mode") != "allowlist":
        return "admitted without mutation"
    return None


def generate_certs(folder: Path, hosts: str = "127.0.0.1,localhost") -> str:
    """Run the real ``certs generate``; returns the printed caBundle."""
    result = subprocess.run([CLI, "certs", "generate", "--out", str(folder), "--hosts", hosts],
                            capture_output=True, text=True, check=True)
    return result.stdout.strip()


class WebhookProcess:
    """``sortie-egress serve`` as a separate process, exactly as an operator runs it."""

    def __init__(self, cert_dir: Path, log_path: Path, extra_args: tuple[str, ...] = ()) -> None:
        self.cert_dir = cert_dir
        self.port = free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.extra_args = extra_args
        self.process: subprocess.Popen[bytes] | None = None

    def context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.cert_dir / "ca.crt"))

    def start(self) -> WebhookProcess:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [CLI, "serve", "--host", "127.0.0.1", "--port", str(self.port),
             "--tls-cert", str(self.cert_dir / "tls.crt"), "--tls-key", str(self.cert_dir / "tls.key"),
             *self.extra_args],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        log.close()

        def healthy() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"webhook exited {self.process.returncode}; log: {self.log_path}")
            with urllib.request.urlopen(f"{self.url}/healthz", context=self.context(), timeout=2) as reply:
                return reply.status == 200

        wait_for(healthy, 30, f"the webhook on {self.url} (log: {self.log_path})")
        return self

    def stop(self) -> None:
        stop_process_group(self.process, 15)

    def log_lines(self) -> list[dict[str, Any]]:
        lines = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                lines.append(json.loads(line))
            except ValueError:
                pass
        return lines


class ControllerProcess:
    """``sortie-egress controller`` as its own process, under its own service account."""

    def __init__(self, kubeconfig: Path, log_path: Path, extra_args: tuple[str, ...] = (), sync_seconds: float = 30) -> None:
        self.kubeconfig = kubeconfig
        self.log_path = log_path
        self.extra_args = extra_args
        #: How long start() waits for the caches (50,000 sessions take about 40 s to list).
        self.sync_seconds = sync_seconds
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> ControllerProcess:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [CLI, "controller", "--kubeconfig", str(self.kubeconfig), "--metrics-port", "0", *self.extra_args],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        log.close()
        wait_for(lambda: self._alive() and "caches synced" in self.log_path.read_text(errors="replace"),
                 self.sync_seconds, f"the controller to sync (log: {self.log_path})")
        return self

    def _alive(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"controller exited {self.process.returncode}; log: {self.log_path}")
        return True

    def kill(self) -> None:
        """SIGKILL: no clean shutdown, no lease hand-back, as when a node dies."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> int | None:
        return stop_process_group(self.process, 20)


def unavailable(what: str, why: object) -> NoReturn:
    """A part the tests need cannot be had: a failure in CI, a skip (saying how to get it) elsewhere."""
    import pytest

    if IN_CI:
        pytest.fail(f"{what} unavailable in CI: {why}", pytrace=False)
    pytest.skip(f"{what} unavailable: {why}")


def control_plane_binaries() -> Any:
    """The control-plane binaries (built or reused)."""
    from tests.cluster.binaries import BinariesMissing, find_binaries

    try:
        return find_binaries(build=True)
    except BinariesMissing as exc:
        unavailable("control plane", exc)


def helm_tools() -> Any:
    """Helm 3, Helm 4 and the chart's CRDs (built or reused)."""
    from tests.cluster.helm import HelmMissing, find_helm

    try:
        return find_helm()
    except HelmMissing as exc:
        unavailable("helm", exc)


def pod_events(core: Any, namespace: str, pod: str, reason: str) -> list[Any]:
    """The Events recorded on one pod for one reason (kubernetes client objects)."""
    events = core.list_namespaced_event(namespace, field_selector=f"involvedObject.name={pod}").items
    return [event for event in events if event.reason == reason]


def backend_audit(plane: Any, backend: str, namespace: str) -> tuple[int, dict[str, tuple[str, str]], str]:
    """``sortie-egress audit --backend``, as the controller's identity: (exit code, rows by session, stderr)."""
    credentials = plane.credentials_for_service_account("sortie-system", "sortie-egress", create=False)
    kubeconfig = plane.kubeconfig_for("sortie-egress-audit", credentials)
    result = subprocess.run([CLI, "audit", "--kubeconfig", str(kubeconfig), "--namespace", namespace, "--backend", backend],
                            capture_output=True, text=True, timeout=60)
    rows = {}
    for line in result.stdout.splitlines()[1:]:
        columns = line.split(None, 4)
        rows[columns[2]] = (columns[3], columns[4] if len(columns) > 4 else "")
    return result.returncode, rows, result.stderr


def policy_crds() -> Path:
    """The backends' CRDs (ClusterNetworkPolicy, CiliumNetworkPolicy) as their projects publish them
    (tests/cluster/fetch-policy-crds.sh, fetched or reused)."""
    from tests.cluster.binaries import BuildFailed, run_build_script

    script = Path(__file__).resolve().parent / "cluster" / "fetch-policy-crds.sh"
    try:
        folder = run_build_script(script)
    except BuildFailed as exc:
        unavailable("the backends' CRDs", f"{exc} (fetching them needs Go and the module proxy)")
    if not list(folder.glob("*.yaml")):
        unavailable("the backends' CRDs", f"{script} left none in {folder}")
    return folder


def cert_manager_tool() -> Path:
    """cert-manager's controllers and CA injector (tests/cluster/build-cert-manager.sh, built or reused)."""
    from tests.cluster.binaries import BuildFailed, run_build_script

    script = Path(__file__).resolve().parent / "cluster" / "build-cert-manager.sh"
    try:
        binary = run_build_script(script) / "cert-manager"
    except BuildFailed as exc:
        unavailable("cert-manager", f"{exc} (it needs Go)")
    if not os.access(binary, os.X_OK):
        unavailable("cert-manager", f"{script} left no {binary}")
    return binary


def held_by_our_gate(core: Any, namespace: str, name: str) -> bool:
    """Whether the pod still carries our scheduling gate (the controller has not released it)."""
    gates = core.read_namespaced_pod(name, namespace).spec.scheduling_gates or []
    return any(gate.name == "sortie.io/egress-policy" for gate in gates)


def register_webhook_and_namespace(plane: Any, webhook: WebhookProcess, cert_dir: Path, namespace: str) -> Any:
    """Our webhook registered in ``plane`` (trusted through the CA in ``cert_dir``), and
    ``namespace`` created with its default ServiceAccount there (pods need it): the CoreV1Api."""
    import base64

    from kubernetes import client

    from sortie_egress.admission.registration import mutating_configuration

    api = plane.admin.api_client()
    client.AdmissionregistrationV1Api(api).create_mutating_webhook_configuration(
        mutating_configuration(url=webhook.url, ca_bundle=base64.b64encode((cert_dir / "ca.crt").read_bytes()).decode()))
    core = client.CoreV1Api(api)
    core.create_namespace({"metadata": {"name": namespace}})
    wait_for(lambda: core.read_namespaced_service_account("default", namespace), 30, "the default ServiceAccount")
    # The API server calls a new webhook configuration only once its informer has it.
    probe = session_pod(policy={"mode": "allowlist"}, namespace=namespace)
    wait_for(lambda: (core.create_namespaced_pod(namespace, probe, dry_run="All").metadata.labels or {})
             .get("sortie.io/egress-mode") == "allowlist", 30, "the webhook to be called")
    return core


def controller_as_installed(plane: Any, log_path: Path, *args: str) -> ControllerProcess:
    """``sortie-egress controller`` under the shipped ServiceAccount's token (its RBAC, its
    admission-policy identity), started."""
    credentials = plane.credentials_for_service_account("sortie-system", "sortie-egress", create=False)
    return ControllerProcess(plane.kubeconfig_for("sortie-egress-controller", credentials), log_path, args).start()
