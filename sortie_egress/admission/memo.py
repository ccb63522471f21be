"""Memoised mutation answers: the same app policy arrives again and again.

A burst of sessions is many pods of a few apps. The answer to a session pod's
CREATE depends on seven things only: the policy annotation, the mode label, the
scheduling gate names, the init container names, whether the pod has a volume list
(ours is appended to it, or the list made), whether the session id can name a
NetworkPolicy, and whether the pod is already bound to a node (and on the server's
fixed enforcement-wait and backend settings, which are part of the cache key too).
Everything else that varies from pod to pod (uid, name, user labels,
containers) never enters it. So the encoded answer is memoised on those
things, and per request only the request uid is spliced in: decision and
encoding (parse, patch, base64, JSON) become a dictionary lookup.

The memo cannot disagree with the decision it stands for, by construction:
a miss rebuilds a minimal pod from the key alone and asks the real
``mutate_pod`` about it, so an answer can only depend on what the key holds.
If ``mutate_pod`` ever reads a field the key lacks, memoised and direct
answers differ, and the property test in tests/test_memo.py fails.

Pods the memo does not cover (not a Pod CREATE, not a session pod, a session
id that cannot name a NetworkPolicy, an annotation over ``MAX_MEMO_ANNOTATION``
characters, gate and init container names over ``MAX_MEMO_KEY`` characters together,
fields that are not strings, an init container or volume already named
like ours, whose whole spec matters, or a pod that sets ``hostNetwork``, ``privileged``
or capabilities, which sortie_egress/admission/pod_shape.py judges) take the direct path.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import msgspec

from sortie_egress.backends import DEFAULT_BACKEND
from sortie_egress.constants import EGRESS_MODE_LABEL, EGRESS_POLICY_ANNOTATION, MAX_MEMO_ANNOTATION, SESSION_ID_LABEL
from sortie_egress.enforcement_wait.injection import INIT_CONTAINER_NAME, NO_TOKEN_VOLUME, EnforcementWait
from sortie_egress.admission.session import session_id_problem
from sortie_egress.admission.mutate import mutate_pod
from sortie_egress.admission.response import Decision, encode_response
from sortie_egress.admission.review import AdmissionRequest, ReviewRequest, SpecView

#: 1024 answers of at most a few times MAX_MEMO_ANNOTATION each: a few MiB at most.
MEMO_ENTRIES = 1024

_PLACEHOLDER_SESSION = "memo"  # any session id that can name a NetworkPolicy decides alike
_UID_MARK = "\x00uid\x00"
_NONE: dict[str, Any] = {}
_encode = msgspec.json.Encoder().encode


@dataclass(frozen=True, slots=True)
class EncodedAnswer:
    """An encoded AdmissionReview response, cut open where the request uid goes."""

    verdict: str
    warnings: int
    head: bytes
    tail: bytes

    def for_uid(self, uid: str) -> bytes:
        return self.head + _encode(uid) + self.tail


def _plain(value: Any) -> bool:
    return value is None or type(value) is str


#: The most a key's gate and init container names may weigh (characters, one more per name): with
#: the annotation's own bound, 1024 entries stay a few MiB whatever reviews arrive. Real pods have a
#: handful of short names; 60 reviews of 1.1 MiB of names once left 73 MiB in the memo.
MAX_MEMO_KEY = MAX_MEMO_ANNOTATION


def _key_size(names: tuple[str | None, ...] | None) -> int:
    return 0 if names is None else sum(1 + len(name or "") for name in names)


def _may_escape(spec: SpecView) -> bool:
    """Host network, or a container with ``privileged`` or added capabilities: the answer then
    depends on them (sortie_egress/admission/pod_shape.py), so such a pod is decided directly. Sessions seldom
    are; the key stays as small as the common pod needs."""
    if spec.hostNetwork is not None:
        return True
    for containers in (spec.initContainers, spec.containers, spec.ephemeralContainers):
        for container in containers or ():
            context = container.securityContext
            if context is not None and (context.privileged is not None or context.capabilities is not None):
                return True
    return False


def mutation_key(request: ReviewRequest) -> tuple[Hashable, ...] | None:
    """What a session pod's CREATE answer depends on, or None when the memo does not apply.

    Reads the decoded request's typed projection directly, not the plain-dict
    manifest the decisions take: a memo hit never builds that at all.
    """
    kind, pod = request.kind, request.object
    if request.operation != "CREATE" or kind is None or kind.kind != "Pod" or pod is None:
        return None
    metadata = pod.metadata
    labels = None if metadata is None else metadata.labels
    if labels is None:
        return None  # no labels, no session id: not a session pod
    session_id = labels.get(SESSION_ID_LABEL)
    if type(session_id) is not str or session_id_problem(session_id) is not None:
        return None
    annotations = metadata.annotations or _NONE  # type: ignore[union-attr]  # metadata has labels, so it is there
    annotation = annotations.get(EGRESS_POLICY_ANNOTATION)
    if not _plain(annotation) or (annotation is not None and len(annotation) > MAX_MEMO_ANNOTATION):
        return None
    mode = labels.get(EGRESS_MODE_LABEL)
    if not _plain(mode):
        return None
    spec = pod.spec
    bound = spec is not None and spec.nodeName not in (None, "")
    raw_gates = None if spec is None else spec.schedulingGates
    gates: tuple[str | None, ...] | None = None
    if raw_gates is not None:
        names = tuple(gate.name for gate in raw_gates)
        if not all(_plain(name) for name in names):
            return None
        gates = names
    raw_inits = None if spec is None else spec.initContainers
    inits: tuple[str | None, ...] | None = None
    if raw_inits is not None:
        init_names = tuple(container.name for container in raw_inits)
        if not all(_plain(name) for name in init_names) or INIT_CONTAINER_NAME in init_names:
            return None
        inits = init_names
    if _key_size(gates) + _key_size(inits) > MAX_MEMO_KEY:
        return None  # a key this large would make the memo hold what any pod's creator sends
    raw_volumes = None if spec is None else spec.volumes
    if raw_volumes is not None and any(volume.name == NO_TOKEN_VOLUME for volume in raw_volumes):
        return None
    if spec is not None and _may_escape(spec):
        return None
    return (annotation, EGRESS_POLICY_ANNOTATION in annotations, mode, EGRESS_MODE_LABEL in labels, gates, bound,
            inits, raw_volumes is not None)


def _pod_from_key(key: tuple[Hashable, ...]) -> dict[str, Any]:
    annotation, has_annotation, mode, has_mode, gates, bound, inits, has_volumes = key
    labels: dict[str, Any] = {SESSION_ID_LABEL: _PLACEHOLDER_SESSION}
    if has_mode:
        labels[EGRESS_MODE_LABEL] = mode
    metadata: dict[str, Any] = {"labels": labels, "annotations": {}}
    if has_annotation:
        metadata["annotations"][EGRESS_POLICY_ANNOTATION] = annotation
    pod: dict[str, Any] = {"metadata": metadata, "spec": {}}
    if gates is not None:
        pod["spec"]["schedulingGates"] = [{"name": name} for name in gates]  # type: ignore[attr-defined]
    if bound:
        pod["spec"]["nodeName"] = "memo-node"
    if inits is not None:
        pod["spec"]["initContainers"] = [{"name": name} for name in inits]  # type: ignore[attr-defined]
    if has_volumes:
        pod["spec"]["volumes"] = []
    return pod


def encoded(decision: Decision) -> EncodedAnswer:
    """A decision's AdmissionReview response, cut open where the uid goes."""
    head, tail = encode_response(_UID_MARK, decision).split(_encode(_UID_MARK), 1)
    return EncodedAnswer(decision.verdict, len(decision.warnings), head, tail)


@lru_cache(maxsize=MEMO_ENTRIES)
def _answer_for(key: tuple[Hashable, ...], wait: EnforcementWait | None, backend: str) -> EncodedAnswer:
    request = AdmissionRequest(uid=_UID_MARK, kind="Pod", operation="CREATE", namespace="memo", name=None,
                               username="", obj=_pod_from_key(key), old_obj=None, dry_run=False)
    return encoded(mutate_pod(request, wait, backend))


def memoised_mutation(request: ReviewRequest, wait: EnforcementWait | None = None,
                      backend: str = DEFAULT_BACKEND) -> EncodedAnswer | None:
    """The memoised answer to ``request``, or None when it must be decided directly."""
    key = mutation_key(request)
    return None if key is None else _answer_for(key, wait, backend)
