"""The shipped manifests: valid for 1.37, hardened, consistent with the code, and least privilege for real."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.cluster.harness import ControlPlane, wait_for
from tests.support import control_plane_binaries, helm_tools, policy_crds
from sortie_egress.admission.registration import mutating_configuration
from sortie_egress.protection.tamper import admission_policies

ROOT = Path(__file__).resolve().parent.parent
MANIFESTS = ROOT / "manifests"
KUBECTL = str(Path(sys.executable).parent / "kubectl")
KUSTOMIZATIONS = ["base", "overlays/self-managed", "overlays/cert-manager", "examples/session-namespace", "examples/cilium",
                  "examples/cilium-auto", "examples/clusternetworkpolicy", "examples/cilium-clusternetworkpolicy",
                  "examples/openreports", "."]
# Custom resources have no schema in kubernetes-validate; they are checked by the
# API server (with their CRDs installed) in the dry-run test below.
CUSTOM_KINDS = {("cert-manager.io/v1", "Issuer"), ("cert-manager.io/v1", "Certificate"),
                ("cilium.io/v2", "CiliumClusterwideNetworkPolicy")}



def render(kustomization: str) -> list[dict[str, Any]]:
    result = subprocess.run([KUBECTL, "kustomize", str(MANIFESTS / kustomization)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [doc for doc in docs if doc["kind"] == kind]


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_every_manifest_validates_strictly_for_1_37(kustomization: str) -> None:
    docs = render(kustomization)
    assert docs
    for doc in docs:
        if (doc["apiVersion"], doc["kind"]) in CUSTOM_KINDS:
            continue
        kubernetes_validate.validate(doc, "1.37.0", strict=True)


def test_generated_manifests_are_what_the_code_generates() -> None:
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "generate-manifests.py")], capture_output=True,
                            text=True, cwd="/")
    assert result.returncode == 0, result.stderr
    changed = subprocess.run(["git", "status", "--porcelain", "--", "manifests/base",
                              "manifests/components/cilium-backend/admission-policies.yaml",
                              "manifests/components/clusternetworkpolicy-backend/admission-policies.yaml",
                              "manifests/helm/sortie-egress/templates/admission-policies.yaml"],
                             capture_output=True, text=True, cwd=ROOT).stdout
    assert changed == "" or "??" in changed, f"regenerating changed the shipped manifests:\n{changed}"


def test_webhook_configuration_and_admission_policies_match_the_code() -> None:
    docs = render("base")
    service = ("sortie-system", "sortie-egress")
    assert by_kind(docs, "MutatingWebhookConfiguration")[0]["webhooks"] == mutating_configuration(service=service)["webhooks"]
    assert by_kind(docs, "ValidatingWebhookConfiguration") == []  # tamper protection runs in the API server
    shipped = [doc for doc in docs if doc["kind"].startswith("ValidatingAdmissionPolicy")]
    expected = [doc for doc in admission_policies("sortie-system") if doc["kind"] != "ConfigMap"]
    for doc in shipped:
        doc["metadata"]["labels"].pop("app.kubernetes.io/part-of")

    def order(doc: dict[str, Any]) -> tuple[str, str]:
        return doc["kind"], doc["metadata"]["name"]

    assert sorted(shipped, key=order) == sorted(expected, key=order)


def test_webhook_scoping_keeps_an_outage_small() -> None:
    docs = render("base")
    mutating = by_kind(docs, "MutatingWebhookConfiguration")[0]["webhooks"][0]
    assert mutating["failurePolicy"] == "Fail" and mutating["sideEffects"] == "None"
    assert mutating["timeoutSeconds"] <= 5 and mutating["admissionReviewVersions"] == ["v1"]
    assert mutating["objectSelector"] == {"matchExpressions": [{"key": "sortie.io/session-id", "operator": "Exists"}]}
    excluded = mutating["namespaceSelector"]["matchExpressions"][0]
    assert excluded["operator"] == "NotIn" and set(excluded["values"]) == {"kube-system"}
    for policy in by_kind(docs, "ValidatingAdmissionPolicy"):
        assert policy["spec"]["failurePolicy"] == "Fail"
    on_missing_parameter = {}
    for binding in by_kind(docs, "ValidatingAdmissionPolicyBinding"):
        assert binding["spec"]["validationActions"] == ["Deny"]
        if "paramRef" in binding["spec"]:
            on_missing_parameter[binding["metadata"]["name"]] = binding["spec"]["paramRef"]["parameterNotFoundAction"]
    # The deletion policy has no parameter: nothing can block the garbage collector. A missing parameter
    # refuses only what the policy is about (session pods, managed policies); where a policy also matches
    # everyone's workloads or every pod update (the controller's scope: its match condition needs the
    # parameter), it allows, so a deleted ServiceAccount cannot stop the cluster.
    assert on_missing_parameter == {
        "sortie-egress-session-pods": "Deny", "sortie-egress-managed-networkpolicies": "Deny",
        "sortie-egress-session-pod-creation": "Deny", "sortie-egress-session-workloads": "Allow",
        "sortie-egress-controller-scope-pods": "Allow", "sortie-egress-controller-scope-policies": "Allow",
        "sortie-egress-controller-scope-webhook": "Allow", "sortie-egress-controller-scope-admission": "Allow"}


def _namespace_overlay(tmp_path: Path) -> Path:
    (tmp_path / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nnamespace: egress-team\n"
        f"resources: [{os.path.relpath(MANIFESTS / 'overlays' / 'self-managed', tmp_path)}]\n")
    return tmp_path


def test_another_namespace_moves_every_reference(tmp_path: Path) -> None:
    """An operator's overlay with only `namespace:` must leave nothing pointing at sortie-system."""
    result = subprocess.run([KUBECTL, "kustomize", str(_namespace_overlay(tmp_path))], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "sortie-system" not in result.stdout
    docs = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    webhook = by_kind(docs, "MutatingWebhookConfiguration")[0]["webhooks"][0]
    assert webhook["clientConfig"]["service"]["namespace"] == "egress-team"
    for binding in by_kind(docs, "ValidatingAdmissionPolicyBinding"):
        # (kustomize also stamps metadata.namespace on these cluster-scoped kinds, which it does not
        # know; kubectl drops it when applying: test_another_namespace_applies shows the overlay applies.)
        assert binding["spec"].get("paramRef", {"namespace": "egress-team"})["namespace"] == "egress-team"
    subjects = [s for b in by_kind(docs, "ClusterRoleBinding") + by_kind(docs, "RoleBinding") for s in b["subjects"]]
    assert {s["namespace"] for s in subjects} == {"egress-team"}
    for deployment in by_kind(docs, "Deployment"):
        env = deployment["spec"]["template"]["spec"]["containers"][0]["env"]
        assert {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}} in env


@pytest.mark.parametrize("name", ["sortie-egress-webhook", "sortie-egress-controller"])
def test_workloads_are_hardened(name: str) -> None:
    deployment = next(d for d in by_kind(render("base"), "Deployment") if d["metadata"]["name"] == name)
    spec = deployment["spec"]["template"]["spec"]
    assert deployment["spec"]["replicas"] == 2
    assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] > 0
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec["priorityClassName"] == "sortie-egress-critical"
    assert spec["affinity"]["podAntiAffinity"]
    for container in spec["containers"]:
        context = container["securityContext"]
        assert context == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]}}
        assert set(container["resources"]) == {"requests", "limits"}
        assert container["livenessProbe"] and container["readinessProbe"]


def test_the_canary_outlives_its_endpoint() -> None:
    """Issue 22: a terminating controller pod leaves the canary Service's endpoints at once, and
    its canary answers for 3 s more (the preStop sleep) before SIGTERM stops it, so a wait's round
    that began there is not cut off; the grace period leaves the controller its 10 s shutdown too."""
    controller = next(d for d in by_kind(render("base"), "Deployment") if d["metadata"]["name"] == "sortie-egress-controller")
    spec = controller["spec"]["template"]["spec"]
    assert spec["containers"][0]["lifecycle"] == {"preStop": {"sleep": {"seconds": 3}}}
    assert spec["terminationGracePeriodSeconds"] >= 3 + 10


def test_only_the_controller_gets_an_api_token_unless_the_webhook_follows_its_secret() -> None:
    deployments = {d["metadata"]["name"]: d["spec"]["template"]["spec"] for d in by_kind(render("base"), "Deployment")}
    assert deployments["sortie-egress-webhook"]["automountServiceAccountToken"] is False
    assert deployments["sortie-egress-controller"]["serviceAccountName"] == "sortie-egress"
    managed = {d["metadata"]["name"]: d["spec"]["template"]["spec"] for d in by_kind(render("overlays/self-managed"), "Deployment")}
    webhook = managed["sortie-egress-webhook"]
    assert webhook["automountServiceAccountToken"] is True and "volumes" not in webhook or webhook["volumes"] == [
        {"name": "tmp", "emptyDir": {"sizeLimit": "16Mi"}}]
    assert "--tls-secret" in webhook["containers"][0]["args"]
    assert "--manage-certificates" in managed["sortie-egress-controller"]["containers"][0]["args"]


def test_baseline_splits_session_pods_by_the_mode_label() -> None:
    policies = {p["metadata"]["name"]: p for p in render("examples/session-namespace")}
    assert all(p["metadata"]["namespace"] == "sessions" for p in policies.values())
    default = policies["sortie-default-egress"]["spec"]
    baseline = policies["sortie-session-baseline"]["spec"]
    assert default["podSelector"] == {"matchExpressions": [{"key": "sortie.io/egress-mode", "operator": "DoesNotExist"}]}
    assert baseline["podSelector"] == {"matchExpressions": [{"key": "sortie.io/egress-mode", "operator": "Exists"}]}
    assert [port["port"] for rule in baseline["egress"] for port in rule["ports"]] == [53, 53]


# --- against a control plane of its own (these manifests register webhooks cluster-wide) -----------------------

@pytest.fixture(scope="module")
def own_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    plane = ControlPlane(control_plane_binaries(), root=tmp_path_factory.mktemp("manifest-plane"), with_scheduler=False).start()
    # cert-manager's real CRDs (v1.21.2, from its module: tests/cluster/build-helm.sh), so the API
    # server validates our Issuers and Certificates against cert-manager's own schemas.
    for crd in helm_tools().crds:
        if "cert-manager.io" in crd.name:
            applied = plane.kubectl("apply", "--server-side", "-f", str(crd))
            assert applied.returncode == 0, applied.stderr
    # Cilium's clusterwide policy CRD: the Cilium examples ship the node guard, cilium-auto the session baseline.
    applied = plane.kubectl("apply", "--server-side", "-f",
                            str(policy_crds() / "cilium-v1.20.2-ciliumclusterwidenetworkpolicies.yaml"))
    assert applied.returncode == 0, applied.stderr
    wait_for(lambda: plane.kubectl("get", "certificates.cert-manager.io", "-A").returncode == 0
             and plane.kubectl("get", "ciliumclusterwidenetworkpolicies").returncode == 0, 30, "the CRDs")
    assert plane.kubectl("create", "namespace", "sessions").returncode == 0
    # A server-side dry run persists nothing, so the Namespace it would create does
    # not exist for the objects in it: kubectl's known limit. Operators create it first too.
    assert plane.kubectl("create", "namespace", "sortie-system").returncode == 0
    yield plane
    plane.stop()


@pytest.mark.cluster
@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_server_side_dry_run_of_every_kustomization(own_plane: ControlPlane, kustomization: str) -> None:
    result = own_plane.kubectl("apply", "--dry-run=server", "-k", str(MANIFESTS / kustomization))
    assert result.returncode == 0, result.stderr


@pytest.mark.cluster
def test_another_namespace_applies(own_plane: ControlPlane, tmp_path: Path) -> None:
    assert own_plane.kubectl("create", "namespace", "egress-team").returncode == 0
    result = own_plane.kubectl("apply", "--dry-run=server", "-k", str(_namespace_overlay(tmp_path)))
    assert result.returncode == 0, result.stderr


EXPECTED_CLUSTER_RIGHTS = {
    "pods": {"get", "list", "watch", "patch"},
    "pods/finalizers": {"update"},
    "networkpolicies.networking.k8s.io": {"get", "list", "watch", "create", "update", "patch", "delete"},
    # Read only, judged for effective egress where Cilium runs (issue 22), whatever the backend.
    "ciliumnetworkpolicies.cilium.io": {"get", "list", "watch"},
    "ciliumclusterwidenetworkpolicies.cilium.io": {"get", "list", "watch"},
    "events": {"create"},
}
# What every authenticated identity may do (system:basic-user, discovery): not ours to grant or remove.
DEFAULT_RESOURCES = {"selfsubjectreviews.authentication.k8s.io", "selfsubjectaccessreviews.authorization.k8s.io",
                     "selfsubjectrulesreviews.authorization.k8s.io", "clustertrustbundles.certificates.k8s.io"}


def _rights(plane: ControlPlane, namespace: str, account: str = "sortie-egress") -> dict[str, set[str]]:
    result = plane.kubectl("auth", "can-i", "--list", f"--as=system:serviceaccount:sortie-system:{account}",
                           "-n", namespace)
    assert result.returncode == 0, result.stderr
    rights: dict[str, set[str]] = {}
    for line in result.stdout.splitlines()[1:]:
        if line.startswith(" "):
            continue  # a non-resource URL (discovery, health): every identity has those
        resource = line.split()[0]
        groups = [group.split() for group in re.findall(r"\[([^\]]*)\]", line)]
        names, verbs = groups[-2] if len(groups) >= 3 else [], groups[-1]
        key = f"{resource}@{','.join(sorted(names))}" if names else resource
        if resource not in DEFAULT_RESOURCES:
            rights.setdefault(key, set()).update(verbs)
    return rights


CERTIFICATE_RIGHTS = {
    "mutatingwebhookconfigurations.admissionregistration.k8s.io@sortie-egress": {"get", "patch"},
}


@pytest.mark.cluster
def test_controller_identity_has_exactly_what_it_needs(own_plane: ControlPlane) -> None:
    result = own_plane.kubectl("apply", "-k", str(MANIFESTS / "overlays" / "self-managed"))
    assert result.returncode == 0, result.stderr
    assert _rights(own_plane, "sessions") == {**EXPECTED_CLUSTER_RIGHTS, **CERTIFICATE_RIGHTS}
    assert _rights(own_plane, "sortie-system") == {
        **EXPECTED_CLUSTER_RIGHTS, **CERTIFICATE_RIGHTS,
        "leases.coordination.k8s.io": {"get", "create", "update"},
        "secrets": {"create"},
        "secrets@sortie-egress-ca": {"get", "update"},
        # update: it renews the pair; get, list, watch: its canary serves it (the waits are pinned to it).
        "secrets@sortie-egress-tls": {"get", "update", "list", "watch"},
    }
    for namespace in ("sessions", "kube-system", "sortie-system"):
        denied = own_plane.kubectl("auth", "can-i", "get", "secrets", "-n", namespace,
                                   "--as=system:serviceaccount:sortie-system:sortie-egress")
        assert denied.stdout.strip() == "no"
    assert _rights(own_plane, "sortie-system", "sortie-egress-webhook") == {"secrets@sortie-egress-tls": {"get", "list", "watch"}}
    assert _rights(own_plane, "sessions", "sortie-egress-webhook") == {}


def test_an_image_pinned_by_digest_pins_the_injected_wait_too(tmp_path: Path) -> None:
    """Issue 21: the wait runs in every session pod, so where the install knows the image's digest,
    the wait is pulled by it too (kustomizeconfig.yaml's images entry; the chart's is in test_helm_chart)."""
    digest = "sha256:" + "cd" * 32
    (tmp_path / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        f"resources: [{os.path.relpath(MANIFESTS / 'overlays' / 'self-managed', tmp_path)}]\n"
        f"images:\n- name: sortie-egress\n  newName: registry.example/sortie-egress\n  digest: {digest}\n")
    result = subprocess.run([KUBECTL, "kustomize", str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    webhook = next(doc for doc in yaml.safe_load_all(result.stdout)
                   if doc and doc["kind"] == "Deployment" and doc["metadata"]["name"] == "sortie-egress-webhook")
    container = webhook["spec"]["template"]["spec"]["containers"][0]
    injected = next(env["value"] for env in container["env"] if env["name"] == "SORTIE_EGRESS_IMAGE")
    assert container["image"] == injected == f"registry.example/sortie-egress@{digest}"


def test_the_openreports_example_adds_the_flag_the_rbac_and_the_crd() -> None:
    """Issue 24: what `kubectl apply -k manifests/examples/openreports` installs besides the default."""
    docs = render("examples/openreports")
    controller = next(d for d in by_kind(docs, "Deployment") if d["metadata"]["name"] == "sortie-egress-controller")
    args = controller["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[-2:] == ["--report-interval", "60"], args
    role = next(d for d in by_kind(docs, "ClusterRole") if d["metadata"]["name"] == "sortie-egress-controller-reports")
    assert role["rules"] == [{"apiGroups": ["openreports.io"], "resources": ["reports"],
                              "verbs": ["get", "list", "create", "update", "delete"]}]
    assert [d["metadata"]["name"] for d in by_kind(docs, "CustomResourceDefinition")] == ["reports.openreports.io"]
    assert "--report-interval" not in str(render("overlays/self-managed"))
