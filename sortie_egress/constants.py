"""Names shared with the behaviour contract (shared/CONTRACT.md).

They live in one place because the webhook, the controller, the manifests and
the tests must agree on every one of them byte for byte.
"""

from typing import Final

SESSION_ID_LABEL: Final = "sortie.io/session-id"
APP_ID_LABEL: Final = "sortie.io/app-id"
EGRESS_MODE_LABEL: Final = "sortie.io/egress-mode"
EGRESS_POLICY_ANNOTATION: Final = "sortie.io/egress-policy"
EGRESS_POLICY_LABEL: Final = "sortie.io/egress-policy"
SCHEDULING_GATE: Final = "sortie.io/egress-policy"
MANAGED_BY_LABEL: Final = "app.kubernetes.io/managed-by"
MANAGED_BY_VALUE: Final = "sortie-egress"
POLICY_NAME_PREFIX: Final = "sortie-egress-"
#: On a managed NetworkPolicy: sha256 of the canonical policy it was rendered for (the session's pin).
POLICY_DIGEST_ANNOTATION: Final = "sortie.io/policy-digest"
#: On a cluster-scoped session policy (no owner references possible): the uids of the pods it is
#: for, oldest first, comma-separated. What owner references say on the namespaced kinds.
SESSION_PODS_ANNOTATION: Final = "sortie.io/session-pods"

MAX_RULES: Final = 256
MAX_ANNOTATION_BYTES: Final = 64 * 1024
#: Policy annotations up to this many characters are memoised (real ones are a few hundred);
#: longer ones are worked out each time, so memos stay small whatever pods are created.
MAX_MEMO_ANNOTATION: Final = 4096
# The API server caps an admission request well below this; anything larger
# is not from it and is refused before it is read whole.
MAX_REVIEW_BYTES: Final = 3 * 1024 * 1024

SERVICE_NAME: Final = "sortie-egress"
