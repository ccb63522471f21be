"""The controller's own identity, narrowed inside the API server (CONTRACT §5).

RBAC cannot say "patch pods, but only to lift one scheduling gate on session pods": its verbs
name whole resources, cluster-wide. So the controller's ClusterRole can patch any pod, write any
NetworkPolicy and patch its webhook configuration, and a stolen controller token would be near
cluster-admin for egress. This policy matches every request the controller's ServiceAccount
makes on those resources and allows exactly what the controller does:

- on pods, an update of a session pod that removes our gate and/or adds a missing mode label,
  nothing else (no other field, no subresource, no create or delete);
- on session policy objects, only those named as ours (``sortie-egress-<id>``, or
  ``sortie-egress.<ns>.<id>`` cluster-scoped) and carrying (or, when retired, having carried)
  our managed-by label; a NetworkPolicy must select exactly its own session; dry runs (which
  write nothing: the capability probe of sortie_egress/kube/policy_objects.py) pass;
- on webhook configurations, an update of ours that changes nothing but ``caBundle``.

The parameter names the controller (its ServiceAccount). Where it is missing the binding allows:
parameters are resolved before match conditions, so Deny would refuse every pod update in the
cluster, and without that ServiceAccount no token of the controller is valid anyway (the API
server looks a ServiceAccount token's account up on every request).
"""

from __future__ import annotations

from typing import Any

from sortie_egress.admission.registration import MUTATING_NAME
from sortie_egress.constants import EGRESS_MODE_LABEL, MANAGED_BY_LABEL, MANAGED_BY_VALUE, POLICY_NAME_PREFIX, SCHEDULING_GATE, SESSION_ID_LABEL
from sortie_egress.render.clusternetworkpolicy import CLUSTER_POLICY_PREFIX
from sortie_egress.protection.tamper import (_CONTROLLER, CILIUM_NETWORK_POLICIES, CLUSTER_NETWORK_POLICIES, NETWORK_POLICIES, _policy,
                     binding, cel_string)

CONTROLLER_SCOPE_POLICY = "sortie-egress-controller-scope"
_POLICY_KINDS = (NETWORK_POLICIES, CILIUM_NETWORK_POLICIES, CLUSTER_NETWORK_POLICIES)
_WEBHOOK_KINDS = ("mutatingwebhookconfigurations", "validatingwebhookconfigurations",
                  "validatingadmissionpolicies", "validatingadmissionpolicybindings",
                  "mutatingadmissionpolicies", "mutatingadmissionpolicybindings")
#: The pod spec fields an update can change (everything else is immutable by Kubernetes' own
#: validation); the controller changes none of them but the scheduling gates.
_MUTABLE_SPEC = ("containers", "initContainers", "activeDeadlineSeconds", "tolerations", "nodeSelector", "affinity",
                 "terminationGracePeriodSeconds")
#: What a webhook entry holds besides its caBundle, compared old against new.
_WEBHOOK_FIELDS = ("rules", "objectSelector", "namespaceSelector", "matchConditions", "failurePolicy", "sideEffects",
                   "timeoutSeconds", "matchPolicy", "reinvocationPolicy", "admissionReviewVersions")


def _same(*fields: str, base: str) -> str:
    return " && ".join(f"object.{base}.?{field} == oldObject.{base}.?{field}" for field in fields)


def _pod_change() -> str:
    """Only our gate removed and a missing mode label added, on a session pod."""
    gate, mode = cel_string(SCHEDULING_GATE), cel_string(EGRESS_MODE_LABEL)
    gates_new, gates_old = "object.spec.?schedulingGates.orValue([])", "oldObject.spec.?schedulingGates.orValue([])"
    return (
        f"request.?subResource.orValue('') == '' && request.operation == 'UPDATE'"
        f" && {cel_string(SESSION_ID_LABEL)} in variables.oldLabels"
        f" && ({gates_new} == {gates_old} || {gates_new} == {gates_old}.filter(g, g.name != {gate}))"
        f" && {_same(*_MUTABLE_SPEC, base='spec')}"
        f" && {_same('annotations', 'ownerReferences', 'finalizers', base='metadata')}"
        " && variables.oldLabels.all(k, k in variables.newLabels && variables.newLabels[k] == variables.oldLabels[k])"
        f" && variables.newLabels.all(k, k in variables.oldLabels || k == {mode})"
    )


def _own_policy_object() -> str:
    """A session object of ours, by name and label (the label may go: that is how it is retired)."""
    managed, value = cel_string(MANAGED_BY_LABEL), cel_string(MANAGED_BY_VALUE)
    prefix = (f"(request.resource.resource == {cel_string(CLUSTER_NETWORK_POLICIES[4])}"
              f" ? {cel_string(CLUSTER_POLICY_PREFIX)} : {cel_string(POLICY_NAME_PREFIX)})")
    labelled = "{}.metadata.?labels[?" + managed + "].orValue('') == " + value
    return (
        # A dry run writes nothing: the controller probes what the API accepts (domainNames) with one.
        "request.?dryRun.orValue(false) || "
        f"request.name.startsWith({prefix}) && (request.operation == 'DELETE' || {labelled.format('object')}"
        f" || (request.operation == 'UPDATE' && {labelled.format('oldObject')}))"
        # A NetworkPolicy of ours selects its own session's pods with a policy and nothing else
        # (render.session_selector).
        f" && (request.resource.resource != {cel_string(NETWORK_POLICIES[4])} || request.operation == 'DELETE'"
        f" || (object.spec.podSelector.?matchLabels.orValue({{}}) == {{{cel_string(SESSION_ID_LABEL)}: "
        f"request.name.substring({len(POLICY_NAME_PREFIX)})}}"
        " && object.spec.podSelector.?matchExpressions.orValue([]).size() == 1"
        f" && object.spec.podSelector.matchExpressions[0].key == {cel_string(EGRESS_MODE_LABEL)}"
        " && object.spec.podSelector.matchExpressions[0].operator == 'Exists'"
        " && object.spec.podSelector.matchExpressions[0].?values.orValue([]).size() == 0))"
    )


def _only_ca_bundle() -> str:
    fields = " && ".join(f"o.?{field} == w.?{field}" for field in _WEBHOOK_FIELDS)
    return (
        f"request.operation == 'UPDATE' && request.name == {cel_string(MUTATING_NAME)}"
        f" && {_same('labels', 'annotations', base='metadata')}"
        " && object.webhooks.size() == oldObject.webhooks.size()"
        " && object.webhooks.all(w, oldObject.webhooks.exists(o, o.name == w.name && "
        + fields + " && o.clientConfig.?url == w.clientConfig.?url && o.clientConfig.?service == w.clientConfig.?service))"
    )


_WHO = "' + request.userInfo.username + '"


def _scoped(suffix: str, rules: list[dict[str, Any]], expression: str, message: str,
            variables: list[dict[str, str]] | None = None) -> dict[str, Any]:
    """One policy per family of kinds: CEL is type-checked against each kind a policy matches, so
    a pod's fields in a policy that also matches NetworkPolicies would not compile there."""
    policy = _policy(f"{CONTROLLER_SCOPE_POLICY}-{suffix}", rules, {}, variables or [],
                     [{"expression": expression, "messageExpression": message, "reason": "Forbidden"}])
    spec = policy["spec"]
    del spec["matchConstraints"]["objectSelector"]
    spec["matchConditions"] = [{"name": "the-controller", "expression": f"request.userInfo.username == {_CONTROLLER}"}]
    return policy


def _writes(group: str, versions: list[str], resources: list[str]) -> dict[str, Any]:
    return {"apiGroups": [group], "apiVersions": versions, "operations": ["CREATE", "UPDATE", "DELETE"],
            "resources": resources}


def controller_scope_policy_objects() -> list[dict[str, Any]]:
    pods = _scoped(
        "pods", [_writes("", ["v1"], ["pods", "pods/*"])], _pod_change(),
        f"'sortie-egress narrows its controller: {_WHO} may only lift the scheduling gate {SCHEDULING_GATE} and add "
        f"a missing {EGRESS_MODE_LABEL} label on session pods, not ' + request.operation.lowerAscii() + ' pod '"
        " + request.namespace + '/' + request.name + (request.?subResource.orValue('') == '' ? '' : '/' + request.subResource)",
        [{"name": "oldLabels", "expression": "oldObject.metadata.?labels.orValue({})"},
         {"name": "newLabels", "expression": "object.metadata.?labels.orValue({})"}])
    policies = _scoped(
        "policies", [_writes(group, list(versions), [resource]) for _, _, group, versions, resource in _POLICY_KINDS],
        _own_policy_object(),
        f"'sortie-egress narrows its controller: {_WHO} may only write the session policies it manages "
        "(named sortie-egress-<session-id>, labelled managed-by sortie-egress, selecting their session), not '"
        " + request.resource.resource + ' ' + request.name")
    message = (f"'sortie-egress narrows its controller: {_WHO} may only update the caBundle of the webhook "
               f"configuration {MUTATING_NAME}, not ' + request.operation.lowerAscii() + ' ' + request.resource.resource"
               " + ' ' + request.name")
    webhook = _scoped("webhook", [_writes("admissionregistration.k8s.io", ["*"], ["mutatingwebhookconfigurations"])],
                      _only_ca_bundle(), message)
    admission = _scoped("admission", [_writes("admissionregistration.k8s.io", ["*"], list(_WEBHOOK_KINDS[1:]))],
                        "false", message)
    return [pods, policies, webhook, admission]


def controller_scope_policies(namespace: str, account: str) -> list[dict[str, Any]]:
    """The policies and their bindings, which allow where the parameter is missing (module docstring)."""
    policies = controller_scope_policy_objects()
    bindings = []
    for policy in policies:
        scope = binding(policy["metadata"]["name"], namespace, account)
        scope["spec"]["paramRef"]["parameterNotFoundAction"] = "Allow"
        bindings.append(scope)
    return policies + bindings


__all__ = ["CONTROLLER_SCOPE_POLICY", "controller_scope_policies", "controller_scope_policy_objects"]
