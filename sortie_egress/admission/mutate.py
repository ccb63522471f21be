"""The session-pod mutation (CONTRACT §2): validate, normalise, label, gate."""

from __future__ import annotations

from sortie_egress.backends import DEFAULT_BACKEND, backend_problems, backend_warnings
from sortie_egress.constants import EGRESS_POLICY_ANNOTATION
from sortie_egress.enforcement_wait.injection import EnforcementWait
from sortie_egress.admission.patch import enforce_patch, no_policy_patch, pointer
from sortie_egress.admission.pod_shape import pod_shape_problems
from sortie_egress.policy.model import PolicyParse, parse_policy
from sortie_egress.admission.session import SessionPod, session_id_problem, session_pod
from sortie_egress.admission.response import Decision, allow, deny
from sortie_egress.admission.review import AdmissionRequest


def judge(session: SessionPod, shape_problems: list[str] | tuple[str, ...] = (),
          backend: str = DEFAULT_BACKEND) -> tuple[PolicyParse, list[str], tuple[str, ...]]:
    """The parsed policy, every reason to refuse the pod and every warning: what admission and
    ``sortie-egress check``/``render`` all decide by. ``shape_problems``: why the pod itself could
    not be held by a policy (``pod_shape_problems``: bound, host network, raw sockets), which
    refuse it only when it has one. ``backend``: what the cluster enforces with; a policy it
    cannot enforce exactly is refused, never weakened."""
    parsed = parse_policy(session.annotation)
    problems = list(parsed.errors) + backend_problems(parsed.policy, backend)
    warnings = parsed.warnings + tuple(backend_warnings(parsed.policy, backend))
    if parsed.errors or parsed.policy is not None:
        # The session id only has to name a NetworkPolicy when one will be made,
        # and only a pod that will be enforced has to wait for it.
        naming = session_id_problem(session.session_id)
        if naming:
            problems.append(naming)
        problems.extend(shape_problems)
    return parsed, problems, warnings


RESTORED = (
    f"{EGRESS_POLICY_ANNOTATION}: kept as the canonical form the pod was admitted with "
    "(the new text states the same policy)"
)


def _reapplied(request: AdmissionRequest) -> Decision:
    """A Pod UPDATE that rewrites the policy annotation: ``kubectl apply`` of the unchanged
    manifest sends the creator's text back over our canonical form. Where the new text means
    exactly the admitted policy, the canonical text is kept, so re-applying succeeds; any
    other change is left alone for the admission policy to refuse (sortie_egress/protection/tamper.py)."""
    old, new = session_pod(request.old_obj or {}), session_pod(request.obj or {})
    if old is None or new is None or old.annotation is None or new.annotation == old.annotation:
        return allow()
    parsed = parse_policy(new.annotation)
    if parsed.canonical is None or parsed.canonical != old.annotation:
        return allow()
    return allow((RESTORED,), [{"op": "replace", "path": pointer("metadata", "annotations", EGRESS_POLICY_ANNOTATION),
                                "value": old.annotation}])


def mutate_pod(request: AdmissionRequest, wait: EnforcementWait | None = None, backend: str = DEFAULT_BACKEND) -> Decision:
    """Decide a Pod CREATE (or an UPDATE re-stating its policy). Pure: a dryRun request gets the same answer.

    ``wait``: the init container that holds an enforced pod's containers back (enforcement_wait/injection.py);
    None where the operator runs without one. ``backend``: the operator's --backend."""
    if request.kind != "Pod" or request.obj is None:
        return allow()
    if request.operation == "UPDATE" and not request.sub_resource:
        return _reapplied(request)
    if request.operation != "CREATE":
        return allow()
    pod = request.obj
    session = session_pod(pod, request.namespace)
    if session is None:
        return allow()
    parsed, problems, warnings = judge(session, pod_shape_problems(pod), backend)
    if problems:
        prefix = f"sortie-egress refused the session pod ({EGRESS_POLICY_ANNOTATION})"
        return deny(problems, prefix, warnings)
    if parsed.policy is None:
        return allow(warnings, no_policy_patch(pod))
    assert parsed.canonical is not None  # set whenever a policy is
    return allow(warnings, enforce_patch(pod, parsed.canonical, parsed.policy.mode, wait))
