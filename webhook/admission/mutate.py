"""The session-pod mutation (CONTRACT §2): validate, normalise, label, gate."""

from __future__ import annotations

from ..constants import EGRESS_POLICY_ANNOTATION
from ..patch import enforce_patch, no_policy_patch
from ..policy import PolicyParse, parse_policy
from ..session import SessionPod, session_id_problem, session_pod
from .response import Decision, allow, deny
from .review import AdmissionRequest


def judge(session: SessionPod) -> tuple[PolicyParse, list[str]]:
    """The parsed policy and every reason to refuse the pod: what admission and
    ``sortie-egress check``/``render`` all decide by."""
    parsed = parse_policy(session.annotation)
    problems = list(parsed.errors)
    if parsed.errors or parsed.policy is not None:
        # The session id only has to name a NetworkPolicy when one will be made.
        naming = session_id_problem(session.session_id)
        if naming:
            problems.append(naming)
    return parsed, problems


def mutate_pod(request: AdmissionRequest) -> Decision:
    """Decide a Pod CREATE. Pure: a dryRun request gets the same answer."""
    if request.kind != "Pod" or request.operation != "CREATE" or request.obj is None:
        return allow()
    pod = request.obj
    session = session_pod(pod, request.namespace)
    if session is None:
        return allow()
    parsed, problems = judge(session)
    if problems:
        prefix = f"sortie-egress refused the session pod ({EGRESS_POLICY_ANNOTATION})"
        return deny(problems, prefix, parsed.warnings)
    if parsed.policy is None:
        return allow(parsed.warnings, no_policy_patch(pod))
    assert parsed.canonical is not None  # set whenever a policy is
    return allow(parsed.warnings, enforce_patch(pod, parsed.canonical, parsed.policy.mode))
