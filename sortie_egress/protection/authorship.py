"""Who may give a session egress, and the final pod checked at CREATE (CONTRACT §5, §7), as
ValidatingAdmissionPolicies run inside the API server.

Why here and not in the webhook: the webhook cannot ask the authorizer, and it is not the last
word on a pod. Validating admission runs after every mutating webhook, so these policies see the
pod exactly as it will be stored, whoever mutated it, and whether our webhook ran at all
(``failurePolicy: Ignore``, a narrowed selector, an outage). So:

- **the final pod** of a session with a policy must carry what holds it: the mode label, our
  scheduling gate and (where the install runs one) our wait first among the init containers, and
  none of the shapes no policy holds (sortie_egress/admission/pod_shape.py). A pod that reached the API server
  without us is refused, never run unenforced;
- **policy authors**: our controller writes the session's policy object with its own rights, so
  the pod's creator must be someone who could have written it: authorised (RBAC, asked through
  CEL's ``authorizer``) to create that kind (``networkpolicies``, ``ciliumnetworkpolicies`` in the
  namespace; ``clusternetworkpolicies`` cluster-wide), or to create the delegable
  ``sessionpolicies.egress.sortie.io`` in the namespace. Pods that Kubernetes' workload controllers
  create pass: their template was judged for its author when the workload was written
  (``workloads_policy``).

"Has a policy" must be decided without parsing JSON (CEL cannot): the mode label (our webhook
sets it on every pod with a policy and removes it from every other), else any annotation that is
not plainly "no policy" (empty, or ``{"mode": ""`` first). Text that only looks like no policy
but is not valid JSON is enforced by the controller as DNS only, never wider.

The parameter, as for tamper protection, is the controller's ServiceAccount; its annotations
say which backend the install runs (``sortie.io/backend``: the kind a policy author must be
able to create) and whether session pods must carry the wait (``sortie.io/enforcement-wait``:
``off``, ``auto`` or ``required``, read as backends.wait_needed reads it). A missing parameter refuses session pods (and only them: the object selector).
"""

from __future__ import annotations

from typing import Any

from sortie_egress.constants import EGRESS_MODE_LABEL, EGRESS_POLICY_ANNOTATION, SCHEDULING_GATE, SESSION_ID_LABEL
from sortie_egress import backends
from sortie_egress.admission.pod_shape import CONTAINER_LISTS, NETWORK_CAPABILITIES
from sortie_egress.enforcement_wait.injection import INIT_CONTAINER_NAME, WAIT_MODULES_ACCEPTED
from sortie_egress.protection.tamper import _policy, binding, cel_string, protected_backends

POD_CREATION_POLICY = "sortie-egress-session-pod-creation"
WORKLOADS_POLICY = "sortie-egress-session-workloads"
#: On the controller's ServiceAccount (the parameter): the install's backend, and "off" where no
#: wait is injected. Set by the backend components and the chart; absent means the defaults.
BACKEND_ANNOTATION = "sortie.io/backend"
WAIT_ANNOTATION = "sortie.io/enforcement-wait"
#: The delegable permission: verb create on this resource in a namespace makes a policy author there.
SESSION_POLICIES_GROUP = "egress.sortie.io"
SESSION_POLICIES_RESOURCE = "sessionpolicies"
POLICY_AUTHOR_ROLE = "sortie-egress:policy-author"
#: What each backend writes on the author's behalf: (group, resource, namespaced).
def author_kinds() -> dict[str, tuple[str, str, bool]]:
    """Every registered backend's kind, in the order the admission policies list them."""
    return {name: (backends.get(name).kind.group, backends.get(name).kind.plural, backends.get(name).kind.namespaced)
            for name in [backends.DEFAULT_BACKEND, *protected_backends()]}


AUTHOR_KINDS = author_kinds()
#: Kubernetes' workload controllers, as kube-controller-manager runs them (per-controller
#: ServiceAccounts, or its own identity): pods they create come from a template judged already.
POD_CREATING_CONTROLLERS = tuple(f"system:serviceaccount:kube-system:{name}" for name in (
    "replicaset-controller", "statefulset-controller", "job-controller", "daemon-set-controller",
    "replication-controller")) + ("system:kube-controller-manager",)
#: ...and those that write the workloads that create pods (a Deployment's ReplicaSets, a CronJob's Jobs).
WORKLOAD_WRITING_CONTROLLERS = POD_CREATING_CONTROLLERS + tuple(
    f"system:serviceaccount:kube-system:{name}" for name in ("deployment-controller", "cronjob-controller"))
#: "No policy", as text CEL can recognise: empty, or an object whose first member is ``"mode": ""``.
NO_POLICY_PATTERN = r'^\s*(\{\s*"mode"\s*:\s*""\s*(,\s*"rules"\s*:[\s\S]*)?\})?\s*$'


def _cel_list(items: tuple[str, ...] | list[str]) -> str:
    return "[" + ", ".join(cel_string(item) for item in items) + "]"


_ANNOTATION = cel_string(EGRESS_POLICY_ANNOTATION)
_BACKEND = f"params.metadata.?annotations[?{cel_string(BACKEND_ANNOTATION)}].orValue('networkpolicy')"
_SA_PREFIX = "system:serviceaccount:"


def _author_variables() -> list[dict[str, str]]:
    """``authorised``: the requester may write what the backend writes, or holds the delegable
    permission; evaluated lazily, so the authorizer is asked only about pods with a policy."""
    kinds = author_kinds()
    author_kind = "{" + ", ".join(f"{cel_string(backend)}: [{cel_string(group)}, {cel_string(resource)}]"
                                  for backend, (group, resource, _) in kinds.items()) + "}"
    cluster_scoped = _cel_list([backend for backend, (_, _, namespaced) in kinds.items() if not namespaced])
    return [
        {"name": "backend", "expression": _BACKEND},
        # An unknown backend fails the lookup, and the policy fails closed.
        {"name": "authorKind", "expression": f"{author_kind}[variables.backend]"},
        {"name": "clusterScoped", "expression": f"variables.backend in {cluster_scoped}"},
        {"name": "mayWriteKind", "expression": (
            "variables.clusterScoped"
            " ? authorizer.group(variables.authorKind[0]).resource(variables.authorKind[1]).check('create').allowed()"
            " : authorizer.group(variables.authorKind[0]).resource(variables.authorKind[1])"
            ".namespace(request.namespace).check('create').allowed()")},
        {"name": "delegated", "expression": (
            f"authorizer.group({cel_string(SESSION_POLICIES_GROUP)}).resource({cel_string(SESSION_POLICIES_RESOURCE)})"
            ".namespace(request.namespace).check('create').allowed()")},
        {"name": "authorised", "expression": "variables.mayWriteKind || variables.delegated"},
    ]


def _author_message(what: str) -> str:
    """The refusal: who, where, the missing permission, and the command that grants it."""
    user = "request.userInfo.username"
    subject = (f"({user}.startsWith({cel_string(_SA_PREFIX)}) ? '--serviceaccount=' + {user}.substring({len(_SA_PREFIX)})"
               f" : '--user=' + {user})")
    return (
        f"'sortie-egress refused the {what}: ' + {user} + ' may not give session pods egress in namespace '"
        " + request.namespace + ' (' + variables.backend + ' backend): it needs create on '"
        " + variables.authorKind[1] + '.' + variables.authorKind[0]"
        " + (variables.clusterScoped ? ' cluster-wide' : ' in that namespace')"
        f" + ', or create on {SESSION_POLICIES_RESOURCE}.{SESSION_POLICIES_GROUP} there; grant it with: "
        f"kubectl create rolebinding sortie-egress-policy-author -n ' + request.namespace"
        f" + ' --clusterrole={POLICY_AUTHOR_ROLE} ' + {subject}"
    )


def _network_capability(container: str) -> str:
    names = list(NETWORK_CAPABILITIES) + [f"CAP_{name}" for name in NETWORK_CAPABILITIES]
    return (f"{container}.?securityContext.?capabilities.?add.orValue([])"
            f".exists(capability, capability.upperAscii() in {_cel_list(names)})")


def _escapes(container: str) -> str:
    """A container that no policy holds (sortie_egress/admission/pod_shape.py): privileged, or NET_RAW/NET_ADMIN added."""
    return f"({container}.?securityContext.?privileged.orValue(false) || {_network_capability(container)})"


def containers_of(pod: str) -> str:
    return " + ".join(f"{pod}.spec.?{field}.orValue([])" for field in CONTAINER_LISTS)


_REFUSED = "sortie-egress refused the session pod: "
_UNADMITTED = ("it has an egress policy but reached the API server without sortie-egress's admission "
               "(the webhook is down with failurePolicy Ignore, its selectors skip this pod, or a later "
               "webhook changed what it added), so it would run unenforced: ")


def pod_creation_policy() -> dict[str, Any]:
    """A session pod with a policy, as it will be stored: held, holdable, and written by an author."""
    mode, gate, wait = cel_string(EGRESS_MODE_LABEL), cel_string(SCHEDULING_GATE), cel_string(INIT_CONTAINER_NAME)
    first = "object.spec.initContainers[0]"
    variables = [
        {"name": "annotation", "expression": f"object.metadata.?annotations[?{_ANNOTATION}].orValue('')"},
        {"name": "mode", "expression": f"object.metadata.?labels[?{mode}].orValue('')"},
        {"name": "hasPolicy", "expression": (
            f"variables.mode != '' || !variables.annotation.matches({cel_string(NO_POLICY_PATTERN)})")},
        # backends.wait_needed in CEL: "off" never, "auto" but on the self-enforcing backends.
        {"name": "waitMode", "expression": f"params.metadata.?annotations[?{cel_string(WAIT_ANNOTATION)}].orValue('required')"},
        {"name": "waitRequired", "expression": (
            f"variables.waitMode != 'off' && !(variables.waitMode == 'auto'"
            f" && {_BACKEND} in {_cel_list(list(backends.with_capability(backends.SELF_ENFORCING)))})")},
        {"name": "waitFirst", "expression": (
            f"object.spec.?initContainers.orValue([]).size() > 0 && {first}.name == {wait}"
            f" && {first}.?command.orValue([]).size() >= 3 && {first}.command[0] == 'python'"
            f" && {first}.command[1] == '-m' && {first}.command[2] in {_cel_list(list(WAIT_MODULES_ACCEPTED))}")},
        {"name": "containers", "expression": containers_of("object")},
        *_author_variables(),
        {"name": "podCreatingController", "expression": f"request.userInfo.username in {_cel_list(POD_CREATING_CONTROLLERS)}"},
    ]
    validations = [
        {"expression": f"!variables.hasPolicy || variables.mode in ['allowlist', 'denylist']",
         "message": _REFUSED + _UNADMITTED + f"the label {EGRESS_MODE_LABEL} is missing (for a pod without a policy, "
                    "write the annotation with mode first, {\"mode\": \"\", ...}, or leave it out)",
         "reason": "Invalid"},
        {"expression": f"!variables.hasPolicy || object.spec.?schedulingGates.orValue([]).exists(g, g.name == {gate})",
         "message": _REFUSED + _UNADMITTED + f"the scheduling gate {SCHEDULING_GATE} is missing",
         "reason": "Invalid"},
        {"expression": "!variables.hasPolicy || !variables.waitRequired || variables.waitFirst",
         "message": _REFUSED + _UNADMITTED + f"the init container {INIT_CONTAINER_NAME} is not first "
                    "(it holds the pod's containers until the policy is seen enforced)",
         "reason": "Invalid"},
        {"expression": "!variables.hasPolicy || object.spec.?nodeName.orValue('') == ''",
         "message": _REFUSED + "spec.nodeName is set: a pod bound at creation runs before its policy exists",
         "reason": "Invalid"},
        {"expression": "!variables.hasPolicy || !object.spec.?hostNetwork.orValue(false)",
         "message": _REFUSED + "spec.hostNetwork is true: no network policy selects a pod in the node's network",
         "reason": "Invalid"},
        {"expression": f"!variables.hasPolicy || !variables.containers.exists(c, {_escapes('c')})",
         "messageExpression": (
             f"{cel_string(_REFUSED)} + 'container ' + variables.containers.filter(c, {_escapes('c')})[0].name"
             " + ' is privileged or adds NET_RAW/NET_ADMIN: it could forge another pod\\'s source address, "
             "so no egress policy holds it'"),
         "reason": "Invalid"},
        {"expression": "!variables.hasPolicy || variables.podCreatingController || variables.authorised",
         "messageExpression": _author_message("session pod"),
         "reason": "Forbidden"},
    ]
    rules = [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"]}]
    selector = {"matchExpressions": [{"key": SESSION_ID_LABEL, "operator": "Exists"}]}
    policy = _policy(POD_CREATION_POLICY, rules, selector, variables, validations)
    del policy["spec"]["matchConditions"]  # every session pod create is judged, whoever makes it
    return policy


_WORKLOAD_RULES = [
    {"apiGroups": ["apps"], "apiVersions": ["v1"], "operations": ["CREATE", "UPDATE"],
     "resources": ["deployments", "replicasets", "statefulsets", "daemonsets"]},
    {"apiGroups": ["batch"], "apiVersions": ["v1"], "operations": ["CREATE", "UPDATE"], "resources": ["jobs", "cronjobs"]},
    {"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE", "UPDATE"], "resources": ["replicationcontrollers"]},
]


def _template(obj: str) -> str:
    """A workload's pod template, as an optional (a CronJob's is one level further down)."""
    return f"({obj}.kind == 'CronJob' ? {obj}.spec.?jobTemplate.?spec.?template : {obj}.spec.?template)"


def workloads_policy() -> dict[str, Any]:
    """A workload whose pod template carries a session label and a policy is written by a policy
    author: its controller creates the pods (and passes pod_creation_policy's author check), so
    the template is where the author is judged. An update is judged when it changes the
    template's policy or session id, so scaling or a new image needs no author."""
    session, template, old = cel_string(SESSION_ID_LABEL), _template("object"), _template("oldObject")
    variables = [
        {"name": "annotation", "expression": f"{template}.?metadata.?annotations[?{_ANNOTATION}].orValue('')"},
        {"name": "hasPolicy", "expression": f"!variables.annotation.matches({cel_string(NO_POLICY_PATTERN)})"},
        {"name": "changed", "expression": (
            f"request.operation == 'CREATE' || variables.annotation != {old}.?metadata.?annotations[?{_ANNOTATION}].orValue('')"
            f" || {template}.?metadata.?labels[?{session}] != {old}.?metadata.?labels[?{session}]")},
        *_author_variables(),
    ]
    validations = [
        {"expression": "!variables.hasPolicy || !variables.changed || variables.authorised",
         "messageExpression": _author_message("workload (its pod template is a session pod with an egress policy)"),
         "reason": "Forbidden"},
    ]
    policy = _policy(WORKLOADS_POLICY, _WORKLOAD_RULES, {}, variables, validations)
    spec = policy["spec"]
    del spec["matchConstraints"]["objectSelector"]  # the template's labels are not the workload's
    spec["matchConditions"] = [
        {"name": "session-template", "expression": f"{session} in {template}.?metadata.?labels.orValue({{}})"},
        {"name": "not-a-workload-controller",
         "expression": f"!(request.userInfo.username in {_cel_list(WORKLOAD_WRITING_CONTROLLERS)})"},
    ]
    return policy


def authorship_policies(namespace: str, account: str) -> list[dict[str, Any]]:
    """The policies and their bindings. The workloads' binding allows where its parameter is
    missing: parameters are resolved before match conditions, so Deny would stop every workload
    write in the cluster; pods made from such a workload still meet pod_creation_policy's gate
    and wait checks, and without the controller's account nothing releases them."""
    workloads = binding(WORKLOADS_POLICY, namespace, account)
    workloads["spec"]["paramRef"]["parameterNotFoundAction"] = "Allow"
    return [pod_creation_policy(), workloads_policy(), binding(POD_CREATION_POLICY, namespace, account), workloads]


__all__ = ["AUTHOR_KINDS", "author_kinds", "BACKEND_ANNOTATION", "NO_POLICY_PATTERN", "POD_CREATING_CONTROLLERS", "POD_CREATION_POLICY",
           "POLICY_AUTHOR_ROLE", "SESSION_POLICIES_GROUP", "SESSION_POLICIES_RESOURCE", "WAIT_ANNOTATION",
           "WORKLOADS_POLICY", "authorship_policies", "containers_of", "pod_creation_policy", "workloads_policy"]
