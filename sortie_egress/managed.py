"""Whether an object is one of ours: the managed-by label.

Trusted only because the admission policies (protection/tamper.py) let nobody but the controller
(and listed operators) set it on a policy object; code that relies on this must stay behind that
protection (docs/development.md, invariants).
"""

from __future__ import annotations

from typing import Any

from sortie_egress.constants import MANAGED_BY_LABEL, MANAGED_BY_VALUE


def is_managed(policy: dict[str, Any] | None) -> bool:
    return ((((policy or {}).get("metadata") or {}).get("labels")) or {}).get(MANAGED_BY_LABEL) == MANAGED_BY_VALUE
