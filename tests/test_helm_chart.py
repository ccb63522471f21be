"""The Helm chart without a cluster: lint (Helm 3 and 4, yamllint, Chart.yaml's schema, as
chart-testing would), every ci/ values file rendered and validated strictly against Kubernetes
1.37, bad values refused with a message that says what to fix, template logic against
expectations written out here, and parity with the kustomize overlays object by object."""

from __future__ import annotations

import difflib
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.support import helm_tools

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "manifests" / "helm" / "sortie-egress"
VALUES_FILES = sorted((CHART / "ci").glob("*-values.yaml"))
KUBECTL = str(Path(sys.executable).parent / "kubectl")
MAJORS = ["helm3", "helm4"]
# Kinds with no schema in kubernetes-validate: the cluster test dry-runs them against their real CRDs.
# Validated against their own CRDs by the API server instead (tests/test_helm_cluster.py).
CUSTOM_KINDS = {"cert-manager.io/v1", "monitoring.coreos.com/v1", "cilium.io/v2"}
# Helm's standard labels: the only thing the parity comparison ignores.
HELM_LABELS = {"helm.sh/chart", "app.kubernetes.io/instance", "app.kubernetes.io/version"}


@pytest.fixture(scope="module")
def helm() -> dict[str, Path]:
    return helm_tools().by_major()


def template(binary: Path, *args: str, namespace: str = "sortie-system") -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(binary), "template", "sortie-egress", str(CHART), "-n", namespace, *args],
                          capture_output=True, text=True)


def rendered(binary: Path, *args: str, namespace: str = "sortie-system") -> list[dict[str, Any]]:
    result = template(binary, *args, namespace=namespace)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [doc for doc in docs if doc["kind"] == kind and doc["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} rendered"
    return found[0]


def container(docs: list[dict[str, Any]], deployment: str) -> dict[str, Any]:
    return one(docs, "Deployment", deployment)["spec"]["template"]["spec"]["containers"][0]


# --- lint, as chart-testing would ------------------------------------------------------------

@pytest.mark.parametrize("major", MAJORS)
@pytest.mark.parametrize("values", VALUES_FILES, ids=lambda path: path.stem)
def test_helm_lint_is_clean(helm: dict[str, Path], major: str, values: Path) -> None:
    result = subprocess.run([str(helm[major]), "lint", "--strict", str(CHART), "-f", str(values)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout
    # --strict turns warnings into failures; the one INFO line Helm prints (no icon) is not one.
    assert "[WARNING]" not in result.stdout and "[ERROR]" not in result.stdout


YAMLLINT_CONFIG = ("{extends: default, rules: {line-length: {max: 120}, document-start: disable, "
                   "indentation: {spaces: consistent, indent-sequences: whatever}, "
                   "braces: {max-spaces-inside: 1}, brackets: {max-spaces-inside: 1}}}")


def test_yamllint_is_clean() -> None:
    files = [CHART / "Chart.yaml", CHART / "values.yaml", *VALUES_FILES]
    result = subprocess.run([str(Path(sys.executable).parent / "yamllint"), "-f", "parsable", "-d", YAMLLINT_CONFIG,
                             *map(str, files)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


# Chart.yaml's fields as chart-testing's chart schema has them, written out here.
CHART_YAML_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["apiVersion", "name", "version", "description", "type", "appVersion"],
    "properties": {
        "apiVersion": {"const": "v2"},
        "name": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
        "version": {"type": "string", "pattern": r"^\d+\.\d+\.\d+(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?$"},
        "appVersion": {"type": "string"},
        "description": {"type": "string", "minLength": 1},
        "type": {"enum": ["application", "library"]},
        "kubeVersion": {"type": "string"},
        "keywords": {"type": "array", "items": {"type": "string"}},
        "home": {"type": "string"},
        "sources": {"type": "array", "items": {"type": "string"}},
        "icon": {"type": "string"},
        "deprecated": {"type": "boolean"},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
        "dependencies": {"type": "array"},
        "maintainers": {"type": "array", "items": {"type": "object", "required": ["name"]}},
    },
}


def test_chart_yaml_matches_the_chart_schema_and_the_product_version() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    jsonschema.validate(chart, CHART_YAML_SCHEMA)
    product = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert chart["appVersion"] == product, "appVersion is the image tag by default: it must be the product's version"
    assert chart["version"] == product


def test_values_yaml_satisfies_its_own_schema() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    jsonschema.validate(yaml.safe_load((CHART / "values.yaml").read_text()), schema)


def test_ci_folder_is_left_out_of_the_package() -> None:
    assert "ci/" in (CHART / ".helmignore").read_text().split()


# --- every ci/ values file renders to objects valid for Kubernetes 1.37 ----------------------

@pytest.mark.parametrize("major", MAJORS)
@pytest.mark.parametrize("namespace", ["sortie-system", "egress-team"])
@pytest.mark.parametrize("values", VALUES_FILES, ids=lambda path: path.stem)
def test_every_rendered_object_validates_strictly_for_1_37(helm: dict[str, Path], major: str, namespace: str,
                                                          values: Path) -> None:
    docs = rendered(helm[major], "-f", str(values), namespace=namespace)
    assert docs
    for doc in docs:
        if doc["apiVersion"] in CUSTOM_KINDS:
            continue
        kubernetes_validate.validate(doc, "1.37.0", strict=True)
        if doc["kind"] not in ("ClusterRole", "ClusterRoleBinding", "PriorityClass", "MutatingWebhookConfiguration", "CustomResourceDefinition",
                               "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding", "NetworkPolicy"):
            assert doc["metadata"]["namespace"] == namespace, f"{doc['kind']}/{doc['metadata']['name']} elsewhere"
    # Nothing of the default namespace is left behind when installing elsewhere.
    if namespace != "sortie-system":
        assert "sortie-system" not in yaml.safe_dump_all(docs)


# --- bad values: refused, with a message that says what to set -------------------------------

BAD_VALUES = [
    # (values, what the message must say), the message as Helm prints it
    ({"webhok": {"replicas": 3}}, "at '': additional properties 'webhok' not allowed"),
    ({"webhook": {"replica": 3}}, "at '/webhook': additional properties 'replica' not allowed"),
    ({"certificates": {"mode": "cert-manager"}},
     "at '/certificates/mode': value must be one of 'selfManaged', 'certManager', 'existingSecret'"),
    ({"webhook": {"failurePolicy": "fail"}}, "at '/webhook/failurePolicy': value must be one of 'Fail', 'Ignore'"),
    ({"webhook": {"timeoutSeconds": 31}}, "at '/webhook/timeoutSeconds': maximum: got 31, want 30"),
    ({"webhook": {"port": 0}}, "at '/webhook/port': minimum: got 0, want 1"),
    ({"webhook": {"url": "https://hooks.example.com/mutate"}}, "at '/webhook/url': 'https://hooks.example.com/mutate'"),
    ({"image": {"digest": "sha256:abc"}}, "at '/image/digest': 'sha256:abc' does not match"),
    ({"dns": {"destination": "everywhere"}}, "at '/dns/destination': value must be one of 'cluster', 'any', 'cidrs'"),
    ({"privilegedUsers": ["alice,bob"]}, "at '/privilegedUsers/0': 'alice,bob' does not match"),
    ({"baseline": {"namespaces": ["Sessions"]}}, "at '/baseline/namespaces/0': 'Sessions' does not match"),
]
# Combinations the schema cannot explain well: refused when rendered (template, install, upgrade),
# by the chart's own checks. `helm lint` only logs a template's fail() (lint mode), so lint is
# not asked to refuse these.
BAD_COMBINATIONS = [
    ({"certificates": {"mode": "existingSecret"}},
     "certificates.mode=existingSecret needs certificates.existingSecret.name"),
    ({"certificates": {"mode": "existingSecret", "existingSecret": {"name": "corp-tls"}}},
     "certificates.mode=existingSecret needs certificates.existingSecret.caBundle"),
    ({"certificates": {"existingSecret": {"name": "corp-tls", "caBundle": "Zm9v"}}},
     "certificates.existingSecret is only used with certificates.mode=existingSecret (mode is selfManaged)"),
    ({"certificates": {"certManager": {"issuerRef": {"name": "corp-ca"}}}},
     "certificates.certManager.issuerRef is only used with certificates.mode=certManager"),
    ({"certificates": {"mode": "certManager", "certManager": {"issuerRef": {"kind": "ClusterIssuer"}}}},
     "certificates.certManager.issuerRef needs a name"),
    ({"dns": {"destination": "cidrs"}}, "dns.destination=cidrs needs dns.cidrs"),
    ({"dns": {"cidrs": ["10.0.0.0/8"]}}, "dns.cidrs is only used with dns.destination=cidrs"),
    ({"dns": {"destination": "any", "nodeLocal": ["169.254.20.10/32"]}}, "dns.nodeLocal is only used with"),
    ({"baseline": {"enabled": True}}, "baseline.enabled needs baseline.namespaces"),
]


def _ids(cases: list[tuple[dict[str, Any], str]]) -> list[str]:
    return [json.dumps(values, separators=(",", ":"))[:48] for values, _ in cases]


@pytest.mark.parametrize("major", MAJORS)
@pytest.mark.parametrize(("values", "message"), BAD_VALUES + BAD_COMBINATIONS, ids=_ids(BAD_VALUES + BAD_COMBINATIONS))
def test_bad_values_are_refused_with_what_to_set(helm: dict[str, Path], tmp_path: Path, major: str,
                                                 values: dict[str, Any], message: str) -> None:
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    for command in ("template", "lint") if (values, message) in BAD_VALUES else ("template",):
        args = [str(helm[major]), command, *(["sortie-egress"] if command == "template" else []), str(CHART), "-f", str(path)]
        result = subprocess.run(args, capture_output=True, text=True)
        output = result.stdout + result.stderr
        assert result.returncode != 0, f"helm {command} accepted {values}"
        assert message in output, output
        assert "panic" not in output and "goroutine" not in output


# --- template logic, against expectations written out here -----------------------------------

def test_defaults_render_the_self_managed_install(helm: dict[str, Path]) -> None:
    docs = rendered(helm["helm3"])
    webhook = container(docs, "sortie-egress-webhook")
    assert webhook["image"] == "sortie-egress:0.1.0"
    assert webhook["args"] == ["serve", "--host", "0.0.0.0", "--port", "8443", "--tls-secret", "sortie-egress-tls",
                               "--enforcement-canary", "sortie-egress-canary", "--enforcement-port", "9445"]
    assert {"name": "SORTIE_EGRESS_IMAGE", "value": "sortie-egress:0.1.0"} in webhook["env"]
    assert container(docs, "sortie-egress-controller")["args"] == [
        "controller", "--metrics-port", "8080", "--dns", "cluster", "--canary-port", "9445", "--canary-tls-secret", "sortie-egress-tls",
        "--manage-certificates"]
    hook = one(docs, "MutatingWebhookConfiguration", "sortie-egress")["webhooks"][0]
    assert hook["failurePolicy"] == "Fail" and hook["timeoutSeconds"] == 5
    assert "caBundle" not in hook["clientConfig"], "the controller injects it; a chart value would fight it"
    assert not [doc for doc in docs if doc["kind"] in ("ServiceMonitor", "NetworkPolicy", "Certificate", "Issuer")]


def test_image_digest_and_the_injected_image_are_one(helm: dict[str, Path]) -> None:
    digest = "sha256:" + "ab" * 32
    docs = rendered(helm["helm3"], "--set", "image.repository=registry.example.com/sortie-egress",
                    "--set", f"image.digest={digest}")
    expected = f"registry.example.com/sortie-egress:0.1.0@{digest}"
    webhook = container(docs, "sortie-egress-webhook")
    assert webhook["image"] == expected
    assert {"name": "SORTIE_EGRESS_IMAGE", "value": expected} in webhook["env"]
    assert container(docs, "sortie-egress-controller")["image"] == expected


def test_extra_selectors_narrow_and_never_widen(helm: dict[str, Path]) -> None:
    docs = rendered(helm["helm3"], "-f", str(CHART / "ci" / "production-values.yaml"))
    hook = one(docs, "MutatingWebhookConfiguration", "sortie-egress")["webhooks"][0]
    assert hook["namespaceSelector"] == {"matchExpressions": [
        {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["kube-system"]},
        {"key": "sortie.io/sessions", "operator": "In", "values": ["true"]}]}
    assert hook["objectSelector"] == {"matchExpressions": [{"key": "sortie.io/session-id", "operator": "Exists"}],
                                      "matchLabels": {"sortie.io/app-tier": "desktop"}}
    assert hook["timeoutSeconds"] == 3


def test_production_knobs_reach_the_pods(helm: dict[str, Path]) -> None:
    docs = rendered(helm["helm3"], "-f", str(CHART / "ci" / "production-values.yaml"), namespace="egress-team")
    webhook = one(docs, "Deployment", "sortie-egress-webhook")
    pod = webhook["spec"]["template"]
    assert webhook["spec"]["replicas"] == 3
    assert pod["metadata"]["labels"] == {"app.kubernetes.io/name": "sortie-egress", "app.kubernetes.io/component": "webhook",
                                         "example.com/cost-centre": "42"}
    assert pod["metadata"]["annotations"] == {"example.com/team": "platform"}
    assert pod["spec"]["priorityClassName"] == "system-cluster-critical"
    assert pod["spec"]["imagePullSecrets"] == [{"name": "registry-credentials"}]
    assert pod["spec"]["serviceAccountName"] == "egress-webhook"
    assert pod["spec"]["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert pod["spec"]["topologySpreadConstraints"][0]["topologyKey"] == "topology.kubernetes.io/zone"
    assert pod["spec"]["affinity"]["podAntiAffinity"], "the default spread stays next to added constraints"
    assert pod["spec"]["containers"][0]["args"][-4:] == ["--log-level", "WARNING", "--request-timeout", "5"]
    assert {"name": "TZ", "value": "UTC"} in pod["spec"]["containers"][0]["env"]
    controller = one(docs, "Deployment", "sortie-egress-controller")["spec"]["template"]["spec"]
    assert controller["containers"][0]["args"] == ["controller", "--metrics-port", "8080", "--dns", "cluster,169.254.20.10/32",
                                                   "--canary-port", "9445", "--canary-tls-secret", "sortie-egress-tls",
                                                   "--manage-certificates", "--log-level", "DEBUG",
                                                   "--workers", "8"]
    assert list(controller["affinity"]) == ["nodeAffinity"]
    assert not [doc for doc in docs if doc["kind"] == "PriorityClass"]
    assert not [doc for doc in docs if doc["kind"] == "PodDisruptionBudget" and "controller" in doc["metadata"]["name"]]
    assert one(docs, "PodDisruptionBudget", "sortie-egress-webhook")["spec"]["minAvailable"] == 2
    account = one(docs, "ServiceAccount", "egress-controller")
    assert account["metadata"]["annotations"] == {
        "example.com/owner": "platform",
        "sortie.io/privileged-users": "alice@example.com,system:serviceaccount:platform:break-glass"}
    # The controller's identity follows its ServiceAccount's name everywhere it is used.
    assert one(docs, "ClusterRoleBinding", "sortie-egress-controller")["subjects"] == [
        {"kind": "ServiceAccount", "name": "egress-controller", "namespace": "egress-team"}]
    binding = one(docs, "ValidatingAdmissionPolicyBinding", "sortie-egress-session-pods")
    assert binding["spec"]["paramRef"]["name"] == "egress-controller"
    assert binding["spec"]["paramRef"]["namespace"] == "egress-team"


def test_the_ingress_policy_opens_both_canary_ports_and_scopes_metrics(helm: dict[str, Path]) -> None:
    docs = rendered(helm["helm3"], "-f", str(CHART / "ci" / "production-values.yaml"))
    policy = one(docs, "NetworkPolicy", "sortie-egress-ingress")
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    assert policy["spec"]["ingress"] == [
        {"ports": [{"protocol": "TCP", "port": 8443}]},
        {"ports": [{"protocol": "TCP", "port": 9445}, {"protocol": "TCP", "port": 9446}]},
        {"ports": [{"protocol": "TCP", "port": 8080}],
         "from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]}]


def test_host_network_moves_the_port_everywhere_it_is_named(helm: dict[str, Path]) -> None:
    docs = rendered(helm["helm3"], "-f", str(CHART / "ci" / "host-network-values.yaml"),
                    "--set", "networkPolicy.enabled=true")
    pod = one(docs, "Deployment", "sortie-egress-webhook")["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True and pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert pod["containers"][0]["args"][:5] == ["serve", "--host", "0.0.0.0", "--port", "9443"]
    assert pod["containers"][0]["ports"] == [{"name": "https", "containerPort": 9443, "protocol": "TCP"}]
    assert one(docs, "Service", "sortie-egress")["spec"]["ports"] == [
        {"name": "https", "port": 443, "targetPort": "https", "protocol": "TCP"}]
    assert one(docs, "NetworkPolicy", "sortie-egress-ingress")["spec"]["ingress"][0] == {
        "ports": [{"protocol": "TCP", "port": 9443}]}


def test_certificate_modes_wire_secret_ca_and_rbac(helm: dict[str, Path]) -> None:
    existing = rendered(helm["helm3"], "-f", str(CHART / "ci" / "existing-secret-values.yaml"))
    pod = one(existing, "Deployment", "sortie-egress-webhook")["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert {"name": "tls", "secret": {"secretName": "corp-webhook-tls", "defaultMode": 0o440}} in pod["volumes"]
    assert "--tls-cert" in pod["containers"][0]["args"]
    hook = one(existing, "MutatingWebhookConfiguration", "sortie-egress")
    assert hook["webhooks"][0]["clientConfig"]["caBundle"].startswith("LS0tLS1CRUdJTi")
    assert "--manage-certificates" not in container(existing, "sortie-egress-controller")["args"]
    assert not [doc for doc in existing if doc["metadata"]["name"] in ("sortie-egress-certificates",
                                                                       "sortie-egress-webhook-configurations")]
    issuer = rendered(helm["helm3"], "-f", str(CHART / "ci" / "cert-manager-issuer-values.yaml"), namespace="egress-team")
    assert not [doc for doc in issuer if doc["kind"] == "Issuer"], "an existing issuer needs no self-signed CA"
    serving = one(issuer, "Certificate", "sortie-egress-serving")["spec"]
    assert serving["issuerRef"] == {"name": "corp-ca", "kind": "ClusterIssuer", "group": "cert-manager.io"}
    assert serving["dnsNames"] == ["sortie-egress.egress-team.svc", "sortie-egress.egress-team.svc.cluster.local"]
    assert one(issuer, "MutatingWebhookConfiguration", "sortie-egress")["metadata"]["annotations"] == {
        "cert-manager.io/inject-ca-from": "egress-team/sortie-egress-serving"}


@pytest.mark.parametrize(("url", "names"), [
    ("https://127.0.0.1:9443", {"ipAddresses": ["127.0.0.1"]}),
    ("https://[::1]:9443", {"ipAddresses": ["::1"]}),
    ("https://hooks.example.com", {"dnsNames": ["hooks.example.com"]}),
])
def test_a_webhook_url_is_named_by_the_cert_manager_certificate(helm: dict[str, Path], url: str,
                                                               names: dict[str, list[str]]) -> None:
    docs = rendered(helm["helm3"], "--set", "certificates.mode=certManager", "--set", f"webhook.url={url}")
    serving = one(docs, "Certificate", "sortie-egress-serving")["spec"]
    service_names = ["sortie-egress.sortie-system.svc", "sortie-egress.sortie-system.svc.cluster.local"]
    assert serving["dnsNames"] == service_names + names.get("dnsNames", [])
    assert serving.get("ipAddresses", []) == names.get("ipAddresses", [])
    assert one(docs, "MutatingWebhookConfiguration", "sortie-egress")["webhooks"][0]["clientConfig"] == {"url": f"{url}/mutate"}


def test_service_monitor_verifies_the_webhook_with_its_ca(helm: dict[str, Path]) -> None:
    docs = rendered(helm["helm3"], "-f", str(CHART / "ci" / "service-monitor-values.yaml"), namespace="egress-team")
    monitor = one(docs, "ServiceMonitor", "sortie-egress")
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert monitor["spec"]["endpoints"] == [
        {"port": "metrics", "path": "/metrics", "interval": "15s"},
        {"port": "https", "path": "/metrics", "scheme": "https", "interval": "15s",
         "tlsConfig": {"serverName": "sortie-egress.egress-team.svc",
                       "ca": {"secret": {"name": "sortie-egress-tls", "key": "ca.crt"}}}}]
    assert one(docs, "Service", "sortie-egress-controller-metrics")["spec"]["ports"] == [
        {"name": "metrics", "port": 8080, "targetPort": "metrics", "protocol": "TCP"}]


def test_baseline_goes_to_every_listed_namespace(helm: dict[str, Path]) -> None:
    docs = rendered(helm["helm3"], "-f", str(CHART / "ci" / "baseline-values.yaml"))
    placed = sorted((doc["metadata"]["namespace"], doc["metadata"]["name"]) for doc in docs if doc["kind"] == "NetworkPolicy")
    assert placed == [("sessions", "sortie-default-egress"), ("sessions", "sortie-session-baseline"),
                      ("sessions-eu", "sortie-default-egress"), ("sessions-eu", "sortie-session-baseline")]


def test_turning_the_wait_off_removes_every_trace_of_the_canary(helm: dict[str, Path]) -> None:
    docs = rendered(helm["helm3"], "-f", str(CHART / "ci" / "no-wait-any-dns-values.yaml"))
    text = yaml.safe_dump_all(docs)
    assert "canary" not in text and "9445" not in text and "9446" not in text
    assert container(docs, "sortie-egress-controller")["args"] == [
        "controller", "--metrics-port", "8080", "--dns", "any", "--manage-certificates"]


def test_admission_policies_can_be_left_out_and_are_the_generated_ones_otherwise(helm: dict[str, Path]) -> None:
    off = rendered(helm["helm3"], "--set", "admissionPolicies.enabled=false")
    assert not [doc for doc in off if doc["kind"].startswith("ValidatingAdmissionPolicy")]
    from sortie_egress.protection.tamper import admission_policies

    on = rendered(helm["helm3"], namespace="egress-team")
    chart = [_without_helm_labels(doc) for doc in on if doc["kind"].startswith("ValidatingAdmissionPolicy")]
    expected = admission_policies("egress-team")
    for doc in expected:
        doc["metadata"]["labels"]["app.kubernetes.io/part-of"] = "sortie-egress"
    # Helm renders kind by kind (policies, then bindings); the objects are the same.
    assert sorted(chart, key=_identity) == sorted(expected, key=_identity)


# --- parity with kustomize ---------------------------------------------------------------------

def _identity(doc: dict[str, Any]) -> tuple[str, str]:
    return doc["kind"], doc["metadata"]["name"]


def _without_helm_labels(doc: dict[str, Any]) -> dict[str, Any]:
    labels = doc["metadata"].get("labels") or {}
    for key in list(labels):
        if key in HELM_LABELS or (key == "app.kubernetes.io/managed-by" and labels[key] == "Helm"):
            del labels[key]
    if not labels:
        doc["metadata"].pop("labels", None)
    return doc


def _kustomize(path: Path) -> list[dict[str, Any]]:
    result = subprocess.run([KUBECTL, "kustomize", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def _by_identity(docs: list[dict[str, Any]]) -> dict[tuple[str, str, str], dict[str, Any]]:
    return {(doc["kind"], doc["metadata"].get("namespace", ""), doc["metadata"]["name"]): doc for doc in docs}


def _differences(kustomized: list[dict[str, Any]], charted: list[dict[str, Any]]) -> list[str]:
    # The Namespace is the one object only kustomize makes: with Helm it is the release's namespace,
    # created before the install (values.yaml's first lines show the command, with its label).
    ours = _by_identity([doc for doc in kustomized if doc["kind"] != "Namespace"])
    theirs = _by_identity([_without_helm_labels(doc) for doc in charted])
    problems = [f"only in kustomize: {key}" for key in sorted(set(ours) - set(theirs))]
    problems += [f"only in the chart: {key}" for key in sorted(set(theirs) - set(ours))]
    for key in sorted(set(ours) & set(theirs)):
        if ours[key] != theirs[key]:
            diff = difflib.unified_diff(yaml.safe_dump(ours[key]).splitlines(), yaml.safe_dump(theirs[key]).splitlines(),
                                        "kustomize", "chart", lineterm="", n=1)
            problems.append(f"{key}:\n" + "\n".join(diff))
    return problems


@pytest.mark.parametrize("major", MAJORS)
@pytest.mark.parametrize(("overlay", "values"), [
    ("overlays/self-managed", ()),
    ("overlays/cert-manager", ("--set", "certificates.mode=certManager")),
    ("examples/cilium", ("--set", "backend=cilium")),
    ("examples/cilium-auto", ("--set", "backend=cilium", "--set", "enforcementWait.auto=true")),
    ("examples/clusternetworkpolicy", ("--set", "backend=clusternetworkpolicy")),
    # Where Cilium is the dataplane (helm sees its clusterwide kind served): the node guard too.
    ("examples/cilium-clusternetworkpolicy", ("--set", "backend=clusternetworkpolicy", "--api-versions",
                                              "cilium.io/v2/CiliumClusterwideNetworkPolicy")),
])
def test_chart_defaults_equal_the_kustomize_overlay(helm: dict[str, Path], major: str, overlay: str,
                                                    values: tuple[str, ...]) -> None:
    kustomized = _kustomize(ROOT / "manifests" / overlay)
    assert [doc for doc in kustomized if doc["kind"] == "Namespace"] == [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "sortie-system", "labels": {
            "app.kubernetes.io/name": "sortie-egress", "app.kubernetes.io/part-of": "sortie-egress",
            "pod-security.kubernetes.io/enforce": "restricted"}}}]
    problems = _differences(kustomized, rendered(helm[major], *values))
    assert not problems, "\n".join(problems)


def test_existing_secret_equals_the_base_with_its_ca_set_by_hand(helm: dict[str, Path]) -> None:
    """The base is what an operator with their own certificate applies; they set caBundle by hand."""
    ca_bundle = "Zm9vYmFy"
    kustomized = _kustomize(ROOT / "manifests" / "base")
    for doc in kustomized:
        if doc["kind"] == "MutatingWebhookConfiguration":
            for hook in doc["webhooks"]:
                hook["clientConfig"]["caBundle"] = ca_bundle
    charted = rendered(helm["helm3"], "--set", "certificates.mode=existingSecret",
                       "--set", "certificates.existingSecret.name=sortie-egress-tls",
                       "--set", f"certificates.existingSecret.caBundle={ca_bundle}")
    problems = _differences(kustomized, charted)
    assert not problems, "\n".join(problems)


def test_the_parity_check_sees_a_drift(helm: dict[str, Path]) -> None:
    """The comparison itself can fail: one changed argument is reported."""
    kustomized = _kustomize(ROOT / "manifests" / "overlays" / "self-managed")
    drifted = rendered(helm["helm3"], "--set", "controller.extraArgs={--workers,2}")
    problems = _differences(kustomized, drifted)
    assert len(problems) == 1 and "sortie-egress-controller" in problems[0] and re.search(r"\+.*--workers", problems[0])


# --- the node guard (sortie_egress/guards/node_guard.py): where the chart ships it, and which one ----------

CILIUM_SERVED = ("--api-versions", "cilium.io/v2/CiliumClusterwideNetworkPolicy")


def _guards(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [doc["spec"] for doc in docs if doc["kind"] == "CiliumClusterwideNetworkPolicy"
            and doc["metadata"]["name"] == "sortie-egress-node-guard"]


@pytest.mark.parametrize(("values", "shipped"), [
    (("--set", "backend=cilium"), True),
    (("--set", "backend=cilium", *CILIUM_SERVED), True),
    (("--set", "backend=clusternetworkpolicy"), False),  # Cilium not seen: another dataplane
    (("--set", "backend=clusternetworkpolicy", *CILIUM_SERVED), True),
    (("--set", "backend=clusternetworkpolicy", "--set", "ciliumNodeGuard=true"), True),
    (("--set", "backend=cilium", "--set", "ciliumNodeGuard=false"), False),
    (("--set", "backend=networkpolicy", *CILIUM_SERVED), False),  # Cilium matches no CIDR against nodes there
    (("--set", "backend=networkpolicy", "--set", "ciliumNodeGuard=true"), False),
])
def test_the_node_guard_is_shipped_where_the_controller_requires_it(helm: dict[str, Path], values: tuple[str, ...],
                                                                     shipped: bool) -> None:
    guards = _guards(rendered(helm["helm3"], *values))
    assert len(guards) == (1 if shipped else 0), guards


@pytest.mark.parametrize(("dns", "port_53_left"), [
    ((), False),
    (("--set", "dns.nodeLocal={169.254.20.10}"), True),
    (("--set", "dns.destination=any"), True),
    (("--set", "dns.destination=cidrs", "--set", "dns.cidrs={10.0.0.10/32}"), True),
])
def test_the_node_guard_follows_the_dns_settings(helm: dict[str, Path], dns: tuple[str, ...], port_53_left: bool) -> None:
    [guard] = _guards(rendered(helm["helm3"], "--set", "backend=cilium", *dns))
    assert guard["endpointSelector"] == {"matchLabels": {"k8s:sortie.io/egress-mode": "allowlist"}}
    assert guard["enableDefaultDeny"] == {"egress": False, "ingress": False}
    [deny] = guard["egressDeny"]
    assert deny["toEntities"] == ["host", "remote-node", "health"]
    if port_53_left:
        ports = {(p["protocol"], p["port"], p.get("endPort")) for entry in deny["toPorts"] for p in entry["ports"]}
        assert ports == {("TCP", "1", 52), ("TCP", "54", 65535), ("UDP", "1", 52), ("UDP", "54", 65535),
                         ("SCTP", "0", None)}
    else:
        assert "toPorts" not in deny


def test_the_dashboard_and_openreports_are_shipped_only_when_asked(helm: dict[str, Path]) -> None:
    """Issue 24: the dashboard ConfigMap carries the sidecar's label and the JSON byte for byte; the
    OpenReports switch adds the controller's flag, its RBAC and (unless told not to) the CRD."""
    binary = helm["helm3"]
    plain = rendered(binary)
    assert not [d for d in plain if d["kind"] in ("ConfigMap", "CustomResourceDefinition")]
    assert "--report-interval" not in container(plain, "sortie-egress-controller")["args"]
    docs = rendered(binary, "--set", "grafanaDashboard.enabled=true", "--set", "openReports.enabled=true")
    board = one(docs, "ConfigMap", "sortie-egress-dashboard")
    assert board["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = CHART / "dashboards" / "sortie-egress.json"
    assert board["data"]["sortie-egress.json"] == dashboard.read_text().rstrip("\n")
    args = container(docs, "sortie-egress-controller")["args"]
    assert args[args.index("--report-interval") + 1] == "60"
    role = one(docs, "ClusterRole", "sortie-egress-controller-reports")
    assert role["rules"] == [{"apiGroups": ["openreports.io"], "resources": ["reports"],
                              "verbs": ["get", "list", "create", "update", "delete"]}]
    binding = one(docs, "ClusterRoleBinding", "sortie-egress-controller-reports")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "sortie-egress", "namespace": "sortie-system"}]
    assert one(docs, "CustomResourceDefinition", "reports.openreports.io")["spec"]["group"] == "openreports.io"
    without_crd = rendered(binary, "--set", "openReports.enabled=true", "--set", "openReports.installCRD=false")
    assert not [d for d in without_crd if d["kind"] == "CustomResourceDefinition"]
