"""Fixtures: the real control plane, our webhook process registered in it, namespaces."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster.harness import ControlPlane, ControlPlaneError, wait_for
from tests.support import WebhookProcess, control_plane_binaries, generate_certs, session_pod
from sortie_egress.admission.registration import mutating_configuration
from sortie_egress.protection.tamper import admission_policies

#: Stands for an operator listed in the admission policies' privilegedUsers: someone who may
#: change managed NetworkPolicies, so the tests can make the drift the controller repairs.
DRIFT_MAKER = "drift-maker"


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    binaries = control_plane_binaries()
    try:
        plane = ControlPlane(binaries, root=tmp_path_factory.mktemp("control-plane")).start()
    except ControlPlaneError as exc:
        pytest.fail(str(exc), pytrace=False)
    yield plane
    plane.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebhookProcess]:
    """``sortie-egress serve`` on fresh certificates, one per test module, outside any control plane."""
    folder = tmp_path_factory.mktemp("server-certs")
    generate_certs(folder)
    process = WebhookProcess(folder, folder / "webhook.log").start()
    yield process
    process.stop()


@pytest.fixture(scope="session")
def webhook_certs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    folder = tmp_path_factory.mktemp("webhook-certs")
    return folder, generate_certs(folder)


@pytest.fixture(scope="session")
def webhook_process(webhook_certs: tuple[Path, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebhookProcess]:
    folder, _ = webhook_certs
    process = WebhookProcess(folder, tmp_path_factory.mktemp("webhook-logs") / "webhook.log").start()
    yield process
    process.stop()


@pytest.fixture(scope="session")
def registered_webhook(control_plane: ControlPlane, webhook_process: WebhookProcess,
                       webhook_certs: tuple[Path, str]) -> WebhookProcess:
    """Our webhook, registered by URL in the API server, and seen to be in effect; and the
    admission policies of tamper protection, as shipped (parameters in sortie-system)."""
    from kubernetes import client

    _, ca_bundle = webhook_certs
    install_admission_policies(control_plane, (DRIFT_MAKER,))
    with control_plane.admin.api_client() as api:
        admission = client.AdmissionregistrationV1Api(api)
        admission.create_mutating_webhook_configuration(mutating_configuration(url=webhook_process.url, ca_bundle=ca_bundle))
        core = client.CoreV1Api(api)
        probe = session_pod(policy={"mode": "allowlist", "rules": []})

        def mutating() -> bool:
            created = core.create_namespaced_pod("default", probe, dry_run="All")
            return (created.metadata.labels or {}).get("sortie.io/egress-mode") == "allowlist"

        wait_for(mutating, 30, "the API server to call the registered webhook")
    return webhook_process


ROOT = Path(__file__).resolve().parent.parent


def describe_install(plane: ControlPlane, backend: str | None = None, wait: bool = False) -> None:
    """Say on the admission policies' parameter what this install runs, as the backend components
    and the chart do: its backend (the kind a policy author must be able to create) and whether
    the webhook injects the start-up wait (most tests' webhook does not)."""
    annotations = [f"sortie.io/enforcement-wait={'required' if wait else 'off'}"]
    if backend is not None:
        annotations.append(f"sortie.io/backend={backend}")
    annotated = plane.kubectl("annotate", "--overwrite", "serviceaccount", "sortie-egress", "-n", "sortie-system",
                              *annotations)
    assert annotated.returncode == 0, annotated.stderr


def install_admission_policies(plane: ControlPlane, privileged_users: tuple[str, ...] = ()) -> None:
    """Apply tamper protection as the manifests ship it (with the controller's ServiceAccount, its
    parameter), list ``privileged_users``, and wait until the API server enforces it."""
    import json

    import yaml

    for manifest in ("namespace.yaml", "rbac.yaml"):
        applied = plane.kubectl("apply", "-f", str(ROOT / "manifests" / "base" / manifest))
        assert applied.returncode == 0, applied.stderr
    annotated = plane.kubectl("annotate", "--overwrite", "serviceaccount", "sortie-egress", "-n", "sortie-system",
                              f"sortie.io/privileged-users={','.join(privileged_users)}")
    assert annotated.returncode == 0, annotated.stderr
    describe_install(plane)
    applied = plane.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-",
                            input=yaml.safe_dump_all(admission_policies("sortie-system")))
    assert applied.returncode == 0, applied.stderr
    # Policies take effect asynchronously: wait for a refused forged create (dry run)...
    forged = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
              "metadata": {"name": "forged", "labels": {"app.kubernetes.io/managed-by": "sortie-egress"}},
              "spec": {"podSelector": {}, "policyTypes": ["Egress"]}}
    # ...by a cluster admin who is not ours (admission policies bind system:masters too)...
    forger = plane.kubeconfig_for("forger", plane.credentials_for_user("forger", ("system:masters",)))

    def refused(kubeconfig: Path) -> bool:
        result = plane.kubectl("create", "--dry-run=server", "-n", "default", "-f", "-", input=json.dumps(forged),
                               kubeconfig=kubeconfig)
        return result.returncode != 0 and "cannot be created by forger" in result.stderr

    wait_for(lambda: refused(forger), 30, "the admission policies to be enforced")
    # ...and for the listed users to be seen (the parameter is read through an informer).
    for user in privileged_users:
        listed = plane.kubeconfig_for(user, plane.credentials_for_user(user, ("system:masters",)))
        wait_for(lambda listed=listed: plane.kubectl("create", "--dry-run=server", "-n", "default", "-f", "-",
                                                     input=json.dumps(forged), kubeconfig=listed).returncode == 0,
                 30, f"{user} to be allowed")


@pytest.fixture
def namespace(control_plane: ControlPlane) -> Iterator[str]:
    """A fresh namespace whose default ServiceAccount exists (pods need it to be admitted)."""
    from kubernetes import client

    name = f"t-{uuid.uuid4().hex[:10]}"
    with control_plane.admin.api_client() as api:
        core = client.CoreV1Api(api)
        core.create_namespace({"metadata": {"name": name}})
        wait_for(lambda: core.read_namespaced_service_account("default", name), 30, f"ServiceAccount {name}/default")
        yield name
        core.delete_namespace(name)


@pytest.fixture(scope="session")
def controller_kubeconfig(control_plane: ControlPlane) -> Path:
    """The shipped RBAC applied, and a kubeconfig for the controller's own service account."""
    for manifest in ("namespace.yaml", "rbac.yaml"):
        applied = control_plane.kubectl("apply", "-f", str(ROOT / "manifests" / "base" / manifest))
        assert applied.returncode == 0, applied.stderr
    credentials = control_plane.credentials_for_service_account("sortie-system", "sortie-egress", create=False)
    return control_plane.kubeconfig_for("sortie-egress-controller", credentials)
