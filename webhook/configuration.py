"""The admission webhook registrations, as data.

One definition serves the shipped manifests' tests, the control-plane tests
(which register by URL) and the certificate manager (which injects the
caBundle), so the scoping that keeps an outage small cannot drift apart:
the mutating webhook fails closed but only sees session pods; the validating
one fails open, because the controller repairs drift anyway and an outage
must never block garbage collection or namespace deletion.
"""

from __future__ import annotations

from typing import Any

from .constants import MANAGED_BY_LABEL, MANAGED_BY_VALUE, SESSION_ID_LABEL

MUTATING_NAME = "sortie-egress"
VALIDATING_NAME = "sortie-egress-protect"
EXCLUDED_NAMESPACES = ("kube-system", "sortie-system")
TIMEOUT_SECONDS = 5

_SESSION_PODS = {"matchExpressions": [{"key": SESSION_ID_LABEL, "operator": "Exists"}]}
_MANAGED_POLICIES = {"matchLabels": {MANAGED_BY_LABEL: MANAGED_BY_VALUE}}
_NOT_SYSTEM_NAMESPACES = {
    "matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": list(EXCLUDED_NAMESPACES)}]
}


def client_config(path: str, url: str | None = None, service: tuple[str, str] | None = None,
                  ca_bundle: str | None = None) -> dict[str, Any]:
    """Either ``url`` (base, e.g. https://127.0.0.1:8443) or ``service`` (namespace, name) on port 443."""
    config: dict[str, Any]
    if url is not None:
        config = {"url": url.rstrip("/") + path}
    elif service is not None:
        config = {"service": {"namespace": service[0], "name": service[1], "path": path, "port": 443}}
    else:
        raise ValueError("a webhook needs a url or a service")
    if ca_bundle:
        config["caBundle"] = ca_bundle
    return config


def _common(failure_policy: str) -> dict[str, Any]:
    return {
        "admissionReviewVersions": ["v1"],
        "sideEffects": "None",
        "timeoutSeconds": TIMEOUT_SECONDS,
        "failurePolicy": failure_policy,
        "matchPolicy": "Equivalent",
    }


def mutating_configuration(url: str | None = None, service: tuple[str, str] | None = None,
                           ca_bundle: str | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": MUTATING_NAME, "labels": {MANAGED_BY_LABEL: MANAGED_BY_VALUE}},
        "webhooks": [
            {
                "name": "pods.egress.sortie.io",
                "clientConfig": client_config("/mutate", url, service, ca_bundle),
                "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"],
                           "resources": ["pods"], "scope": "Namespaced"}],
                "objectSelector": _SESSION_PODS,
                "namespaceSelector": _NOT_SYSTEM_NAMESPACES,
                # Re-run if a later webhook edits the pod: our patch is idempotent.
                "reinvocationPolicy": "IfNeeded",
                **_common("Fail"),
            }
        ],
    }


def validating_configuration(url: str | None = None, service: tuple[str, str] | None = None,
                             ca_bundle: str | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": VALIDATING_NAME, "labels": {MANAGED_BY_LABEL: MANAGED_BY_VALUE}},
        "webhooks": [
            {
                "name": "pods.protect.sortie.io",
                "clientConfig": client_config("/validate", url, service, ca_bundle),
                "rules": [{"operations": ["UPDATE"], "apiGroups": [""], "apiVersions": ["v1"],
                           "resources": ["pods"], "scope": "Namespaced"}],
                "objectSelector": _SESSION_PODS,
                "namespaceSelector": _NOT_SYSTEM_NAMESPACES,
                **_common("Ignore"),
            },
            {
                "name": "networkpolicies.protect.sortie.io",
                "clientConfig": client_config("/validate", url, service, ca_bundle),
                "rules": [{"operations": ["UPDATE", "DELETE"], "apiGroups": ["networking.k8s.io"],
                           "apiVersions": ["v1"], "resources": ["networkpolicies"], "scope": "Namespaced"}],
                "objectSelector": _MANAGED_POLICIES,
                **_common("Ignore"),
            },
        ],
    }
