"""The admission webhook registration, as data.

One definition serves the shipped manifests' tests, the control-plane tests
(which register by URL) and the certificate manager (which injects the
caBundle), so the scoping that keeps an outage small cannot drift apart: the
mutating webhook fails closed but only sees session pods, so an outage blocks
new sessions and nothing else. (Tamper protection is not a webhook: it runs
inside the API server, sortie_egress/protection/tamper.py.)

Only kube-system is exempt by namespace: the product's own pods carry no
session label, so the object selector already leaves them alone, wherever
the product is installed.
"""

from __future__ import annotations

from typing import Any

from sortie_egress.constants import EGRESS_POLICY_ANNOTATION, MANAGED_BY_LABEL, MANAGED_BY_VALUE, SESSION_ID_LABEL
from sortie_egress.protection.tamper import cel_string

MUTATING_NAME = "sortie-egress"
EXCLUDED_NAMESPACES = ("kube-system",)
TIMEOUT_SECONDS = 5

_SESSION_PODS = {"matchExpressions": [{"key": SESSION_ID_LABEL, "operator": "Exists"}]}
_NOT_SYSTEM_NAMESPACES = {
    "matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": list(EXCLUDED_NAMESPACES)}]
}


_ANNOTATION = cel_string(EGRESS_POLICY_ANNOTATION)
_CREATE_OR_REWRITE = (
    f"request.operation == 'CREATE' || "
    f"object.metadata.?annotations[?{_ANNOTATION}] != oldObject.metadata.?annotations[?{_ANNOTATION}]"
)


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
                "rules": [{"operations": ["CREATE", "UPDATE"], "apiGroups": [""], "apiVersions": ["v1"],
                           "resources": ["pods"], "scope": "Namespaced"}],
                # UPDATEs only where the policy annotation changes (a re-applied manifest): the
                # API server decides this itself, so the controller's gate removal and every
                # other pod update cost no webhook call.
                "matchConditions": [{"name": "creation-or-policy-rewrite", "expression": _CREATE_OR_REWRITE}],
                "objectSelector": _SESSION_PODS,
                "namespaceSelector": _NOT_SYSTEM_NAMESPACES,
                # Re-run if a later webhook edits the pod: our patch is idempotent.
                "reinvocationPolicy": "IfNeeded",
                **_common("Fail"),
            }
        ],
    }
