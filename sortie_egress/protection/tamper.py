"""Tamper protection (CONTRACT §5) as ValidatingAdmissionPolicies: CEL run inside the API server.

Why not a webhook: a validating webhook that fails closed would block garbage
collection and namespace deletion whenever it is down, so the old one failed
open, and during an outage anyone with pod patch rights could rewrite a
session's egress annotation. These policies run in the API server itself:
``failurePolicy: Fail`` costs no availability, there is no process to stop,
and no webhook round trip on the controller's gate removal.

Who may do what is decided by identity. The policies' parameter is the
controller's own ServiceAccount: its namespace and name *are* the controller's
identity, so installing into another namespace or under another account name
(kustomize ``namespace:``, Helm values) moves both together. Operators listed
in its annotation ``sortie.io/privileged-users`` (comma- or newline-separated)
may change managed NetworkPolicies too.

A parameter that cannot be found denies (``parameterNotFoundAction: Deny``),
and the API server looks parameters up *before* it evaluates match
conditions, so no exemption inside a parameterised policy can keep Kubernetes
working without them (tests/test_cluster_tamper.py showed the garbage
collector blocked that way). Deleting a managed NetworkPolicy is therefore
judged by a policy of its own without parameters: only the garbage collector
and the namespace controller may do it, in both of the forms Kubernetes runs
them in. Whatever happens to the ServiceAccount, sessions and namespaces can
still be cleaned up; the controller itself retires a policy it no longer
needs by removing its managed-by label first.

Nothing CEL cannot express is left, so no validating webhook remains: every
check is a comparison of old and new object and of the requesting user.
"""

from __future__ import annotations

from typing import Any

from sortie_egress import backends

from sortie_egress.constants import (
    EGRESS_MODE_LABEL,
    EGRESS_POLICY_ANNOTATION,
    MANAGED_BY_LABEL,
    MANAGED_BY_VALUE,
    SCHEDULING_GATE,
    SESSION_ID_LABEL,
)
from sortie_egress.enforcement_wait.injection import INIT_CONTAINER_NAME
from sortie_egress.admission.pod_shape import NETWORK_CAPABILITIES

API_VERSION = "admissionregistration.k8s.io/v1"
PODS_POLICY = "sortie-egress-session-pods"
NETWORK_POLICIES_POLICY = "sortie-egress-managed-networkpolicies"
DELETION_POLICY = "sortie-egress-managed-networkpolicy-deletion"
CONTROLLER_SERVICE_ACCOUNT = "sortie-egress"
PRIVILEGED_USERS_ANNOTATION = "sortie.io/privileged-users"
#: Kubernetes' own deleters: the garbage collector and namespace controller in both forms
#: (per-controller service accounts, or the controller manager's own identity).
KUBERNETES_DELETERS = (
    "system:serviceaccount:kube-system:generic-garbage-collector",
    "system:serviceaccount:kube-system:namespace-controller",
    "system:kube-controller-manager",
)


def cel_string(text: str) -> str:
    """A CEL string literal (single-quoted, backslash-escaped); the webhook registration uses it too."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _cel_list(items: tuple[str, ...] | list[str]) -> str:
    return "[" + ", ".join(cel_string(item) for item in items) + "]"


_CONTROLLER = "'system:serviceaccount:' + params.metadata.namespace + ':' + params.metadata.name"
_NOT_A_KUBERNETES_DELETER = {
    "name": "not-kubernetes-garbage-collection",
    "expression": f"!(request.userInfo.username in {_cel_list(KUBERNETES_DELETERS)})",
}
_LISTED_USERS = (
    f"params.metadata.?annotations[?{cel_string(PRIVILEGED_USERS_ANNOTATION)}].orValue('')"
    ".replace('\\n', ',').split(',').map(user, user.trim()).filter(user, user != '')"
)


def _policy(name: str, rules: list[dict[str, Any]], object_selector: dict[str, Any],
            variables: list[dict[str, str]], validations: list[dict[str, str]],
            parameterised: bool = True) -> dict[str, Any]:
    spec: dict[str, Any] = {"failurePolicy": "Fail"}
    if parameterised:
        spec["paramKind"] = {"apiVersion": "v1", "kind": "ServiceAccount"}
    spec["matchConstraints"] = {"resourceRules": rules, "objectSelector": object_selector}
    if parameterised:
        spec["matchConditions"] = [_NOT_A_KUBERNETES_DELETER]
    if variables:
        spec["variables"] = variables
    spec["validations"] = validations
    return {
        "apiVersion": API_VERSION,
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": name, "labels": {MANAGED_BY_LABEL: MANAGED_BY_VALUE}},
        "spec": spec,
    }


def _unchanged(variable: str, key: str) -> str:
    """Old and new value of a map entry are the same, absent included."""
    return f"variables.new{variable}[?{cel_string(key)}] == variables.old{variable}[?{cel_string(key)}]"


def pods_policy() -> dict[str, Any]:
    """A session pod's egress identity is fixed at admission; only the controller releases it.

    Every way a pod changes is matched, the object and each subresource (``pods/status`` can
    rewrite labels, ``pods/ephemeralcontainers`` adds a container to the pod's network): a
    protection a subresource walks around is none. The start-up machinery is fixed too: the
    injected wait (sortie_egress/enforcement_wait/injection.py; the only part of an init container an update can
    change is its image), its status (only a node reports it: a forged "terminated, exit 0"
    would open the door to ephemeral containers), and no ephemeral container joins a pod before
    its wait has seen the policy enforced (or, where no wait runs, before the gate is lifted).
    """
    mode_key, gate = cel_string(EGRESS_MODE_LABEL), cel_string(SCHEDULING_GATE)
    wait = cel_string(INIT_CONTAINER_NAME)
    has_gate = "{}.spec.?schedulingGates.orValue([]).exists(gate, gate.name == " + gate + ")"
    capabilities = _cel_list(tuple(NETWORK_CAPABILITIES) + tuple(f"CAP_{name}" for name in NETWORK_CAPABILITIES))
    variables = [
        {"name": "controller", "expression": _CONTROLLER},
        {"name": "oldLabels", "expression": "oldObject.metadata.?labels.orValue({})"},
        {"name": "newLabels", "expression": "object.metadata.?labels.orValue({})"},
        {"name": "oldAnnotations", "expression": "oldObject.metadata.?annotations.orValue({})"},
        {"name": "newAnnotations", "expression": "object.metadata.?annotations.orValue({})"},
        {"name": "oldWait", "expression": f"oldObject.spec.?initContainers.orValue([]).filter(c, c.name == {wait})"},
        {"name": "newWait", "expression": f"object.spec.?initContainers.orValue([]).filter(c, c.name == {wait})"},
        {"name": "oldWaitStatus",
         "expression": f"oldObject.status.?initContainerStatuses.orValue([]).filter(s, s.name == {wait})"},
        {"name": "newWaitStatus",
         "expression": f"object.status.?initContainerStatuses.orValue([]).filter(s, s.name == {wait})"},
        {"name": "addedEphemeral", "expression": (
            "object.spec.?ephemeralContainers.orValue([]).filter(e, "
            "!oldObject.spec.?ephemeralContainers.orValue([]).exists(o, o.name == e.name))")},
        {"name": "waitSucceeded",
         "expression": "variables.oldWaitStatus.exists(s, s.?state.?terminated.?exitCode.orValue(1) == 0)"},
    ]
    validations = [
        {
            "expression": _unchanged("Annotations", EGRESS_POLICY_ANNOTATION),
            "message": f"sortie-egress protects session pods: the annotation {EGRESS_POLICY_ANNOTATION} "
                       "cannot change after creation",
            "reason": "Forbidden",
        },
        {
            "expression": _unchanged("Labels", SESSION_ID_LABEL),
            "message": f"sortie-egress protects session pods: the label {SESSION_ID_LABEL} cannot change after creation",
            "reason": "Forbidden",
        },
        {
            # The controller may add a missing mode label (pods it enforces that admission never
            # saw), so the baseline split holds for them; nobody may change or remove one.
            "expression": (
                _unchanged("Labels", EGRESS_MODE_LABEL)
                + f" || (!({mode_key} in variables.oldLabels) && request.userInfo.username == variables.controller"
                f" && variables.newLabels[?{mode_key}].orValue('') in ['allowlist', 'denylist'])"
            ),
            "message": f"sortie-egress protects session pods: the label {EGRESS_MODE_LABEL} cannot change after "
                       "creation (only the sortie-egress controller may add a missing one)",
            "reason": "Forbidden",
        },
        {
            "expression": f"!{has_gate.format('oldObject')} || {has_gate.format('object')}"
                          " || request.userInfo.username == variables.controller",
            "message": f"sortie-egress protects session pods: only the sortie-egress controller removes the "
                       f"scheduling gate {SCHEDULING_GATE}, once the session's NetworkPolicy exists",
            "reason": "Forbidden",
        },
        {
            "expression": "variables.newWait == variables.oldWait",
            "message": f"sortie-egress protects session pods: the init container {INIT_CONTAINER_NAME} (it holds "
                       "the pod's containers until its egress policy is seen enforced) cannot change",
            "reason": "Forbidden",
        },
        {
            "expression": "variables.newWaitStatus == variables.oldWaitStatus"
                          " || request.userInfo.username.startsWith('system:node:')",
            "message": f"sortie-egress protects session pods: only the pod's node reports the status of "
                       f"{INIT_CONTAINER_NAME}",
            "reason": "Forbidden",
        },
        {
            "expression": ("variables.addedEphemeral.size() == 0 || (variables.oldWait.size() > 0"
                           f" ? variables.waitSucceeded : !{has_gate.format('oldObject')})"),
            "message": "sortie-egress protects session pods: no ephemeral container joins a session pod before "
                       f"{INIT_CONTAINER_NAME} has seen its egress policy enforced (it would share the pod's network "
                       "before the policy holds); try again once the pod's containers run",
            "reason": "Forbidden",
        },
        {
            "expression": (f"variables.addedEphemeral.size() == 0 || variables.oldLabels[?{mode_key}].orValue('') == ''"
                           " || !variables.addedEphemeral.exists(e, e.?securityContext.?privileged.orValue(false)"
                           " || e.?securityContext.?capabilities.?add.orValue([]).exists(c, c.upperAscii() in "
                           f"{capabilities}))"),
            "message": "sortie-egress protects session pods: an ephemeral container in a session pod with an egress "
                       "policy cannot be privileged or add NET_RAW/NET_ADMIN (it could forge another pod's source "
                       "address)",
            "reason": "Forbidden",
        },
    ]
    # The object and every subresource that updates it (status, ephemeralcontainers, resize...).
    rules = [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["UPDATE"], "resources": ["pods", "pods/*"]}]
    selector = {"matchExpressions": [{"key": SESSION_ID_LABEL, "operator": "Exists"}]}
    return _policy(PODS_POLICY, rules, selector, variables, validations)


_MANAGED = {"matchLabels": {MANAGED_BY_LABEL: MANAGED_BY_VALUE}}


_KindRules = tuple[str, str, str, tuple[str, ...], str]


def kind_rules(backend: str) -> _KindRules:
    """The kind a backend enforces sessions with, as its protection names it: (policy name suffix,
    what messages call them, rules' group, versions, resource). A cluster-scoped kind: nobody but
    the controller ever deletes a managed one (it retires it first, as it retires the others),
    since neither the garbage collector nor a namespace deletion reaches it."""
    kind = backends.get(backend).kind
    return (kind.plural, kind.kinds, kind.group, tuple(sorted(kind.versions)), kind.plural)


def protected_backends() -> list[str]:
    """The backends whose kind its component protects besides NetworkPolicies (which the base
    protects always: the default backend, and any installed before): the default first, then
    namespaced kinds, then cluster-scoped ones."""
    return [backend.name for backend in backends.in_docs_order() if backend.name != backends.DEFAULT_BACKEND]


NETWORK_POLICIES = kind_rules("networkpolicy")
CILIUM_NETWORK_POLICIES = kind_rules("cilium")
CLUSTER_NETWORK_POLICIES = kind_rules("clusternetworkpolicy")


def _where(kind: _KindRules) -> str:
    """The object, in a message: namespace/name, or the name alone for a cluster-scoped kind (a
    request for one has no namespace, and a message expression that fails is not shown)."""
    namespaced = next(b.kind.namespaced for b in backends.registered() if b.kind.plural == kind[4])
    return "request.namespace + '/' + request.name" if namespaced else "request.name"


def _rules(kind: _KindRules, operations: list[str]) -> list[dict[str, Any]]:
    _, _, group, versions, resource = kind
    return [{"apiGroups": [group], "apiVersions": list(versions), "operations": operations, "resources": [resource]}]


def network_policies_policy(kind: _KindRules = NETWORK_POLICIES) -> dict[str, Any]:
    """Managed NetworkPolicies are made and changed only by the controller (and listed operators).

    CREATE is covered too: a policy carrying our managed-by label is trusted as the
    controller's own (effective egress does not judge it), so nobody else may make one.
    """
    variables = [
        {"name": "privileged", "expression": f"[{_CONTROLLER}] + {_LISTED_USERS}"},
    ]
    validations = [
        {
            "expression": "request.userInfo.username in variables.privileged",
            "messageExpression": (
                f"'sortie-egress protects session {kind[1]}: ' + {_where(kind)}"
                " + ' is managed by sortie-egress and cannot be '"
                " + (request.operation == 'CREATE' ? 'created' : 'changed') + ' by ' + request.userInfo.username"
            ),
            "reason": "Forbidden",
        },
    ]
    name = NETWORK_POLICIES_POLICY if kind == NETWORK_POLICIES else f"sortie-egress-managed-{kind[0]}"
    return _policy(name, _rules(kind, ["CREATE", "UPDATE"]), _MANAGED, variables, validations)


def deletion_policy(kind: _KindRules = NETWORK_POLICIES) -> dict[str, Any]:
    """Managed NetworkPolicies are deleted by Kubernetes alone: when the session's last pod goes
    (garbage collector) or its namespace does. No parameters, so nothing can stop that."""
    validations = [
        {
            "expression": f"request.userInfo.username in {_cel_list(KUBERNETES_DELETERS)}",
            "messageExpression": (
                f"'sortie-egress protects session {kind[1]}: ' + {_where(kind)}"
                " + ' is managed by sortie-egress and cannot be deleted by ' + request.userInfo.username"
                " + '; it goes with the session\\'s last pod'"
            ),
            "reason": "Forbidden",
        },
    ]
    name = DELETION_POLICY if kind == NETWORK_POLICIES else f"sortie-egress-managed-{kind[0][:-3]}y-deletion"
    return _policy(name, _rules(kind, ["DELETE"]), _MANAGED, [], validations, parameterised=False)


def binding(policy_name: str, namespace: str | None, account: str = CONTROLLER_SERVICE_ACCOUNT) -> dict[str, Any]:
    """``namespace``/``account``: the controller's ServiceAccount, the parameter (None: no parameter)."""
    spec: dict[str, Any] = {"policyName": policy_name, "validationActions": ["Deny"]}
    if namespace is not None:
        spec["paramRef"] = {"name": account, "namespace": namespace, "parameterNotFoundAction": "Deny"}
    return {
        "apiVersion": API_VERSION,
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": policy_name, "labels": {MANAGED_BY_LABEL: MANAGED_BY_VALUE}},
        "spec": spec,
    }


def backend_admission_policies(kind: _KindRules, namespace: str,
                               account: str = CONTROLLER_SERVICE_ACCOUNT) -> list[dict[str, Any]]:
    """The same protection for the objects of another backend's kind (its component ships these)."""
    writes, deletes = network_policies_policy(kind), deletion_policy(kind)
    return [writes, deletes, binding(writes["metadata"]["name"], namespace, account),
            binding(deletes["metadata"]["name"], None)]


def admission_policies(namespace: str, account: str = CONTROLLER_SERVICE_ACCOUNT) -> list[dict[str, Any]]:
    """Everything tamper protection consists of (the ServiceAccount it names ships with the RBAC):
    updates of session pods and managed policies here, the final pod at CREATE and its author
    (authorship.py), and the controller's own identity narrowed (controller_scope.py)."""
    from sortie_egress.protection.authorship import authorship_policies
    from sortie_egress.protection.controller_scope import controller_scope_policies

    return [
        pods_policy(),
        network_policies_policy(),
        deletion_policy(),
        binding(PODS_POLICY, namespace, account),
        binding(NETWORK_POLICIES_POLICY, namespace, account),
        binding(DELETION_POLICY, None),
        *authorship_policies(namespace, account),
        *controller_scope_policies(namespace, account),
    ]
