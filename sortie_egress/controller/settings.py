"""The controller's settings, published where the tools that judge its work can read them.

``audit`` (and ``explain``) judge a session against what the *installed* controller would write,
which depends on its flags (--backend, --dns, --canary-port, --cluster-policy-priority): an
operator who did not repeat them saw healthy sessions reported drifted (issue 24). So the leader
writes its settings on its Lease (an annotation: no new permission, one object that exists exactly
while a controller leads), and the tools read them there, say so, and say when they cannot. Pure;
the Lease write is controller/lease.py's, the read kube/snapshot.py's caller's.

Trust: anyone who may update Leases in the system namespace may change this annotation; it steers
only what the tools compare against, never what the controller enforces, and the tools print the
settings they used.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Final

SETTINGS_ANNOTATION: Final = "sortie.io/controller-settings"
#: The settings that change what the controller writes for a session, by the audit flag's dest.
JUDGED: Final = ("backend", "dns", "canary_port", "cluster_policy_priority")
_FLAGS: Final = {"backend": "--backend", "dns": "--dns", "canary_port": "--canary-port",
                 "cluster_policy_priority": "--cluster-policy-priority"}


@dataclass(frozen=True, slots=True)
class Published:
    """What a controller said it runs with, as text and numbers (the tools parse them as flags)."""

    backend: str
    dns: str
    canary_port: int
    cluster_policy_priority: int
    enforcement_wait: str
    version: str

    def encode(self) -> str:
        return json.dumps({"backend": self.backend, "dns": self.dns, "canaryPort": self.canary_port,
                           "clusterPolicyPriority": self.cluster_policy_priority,
                           "enforcementWait": self.enforcement_wait, "version": self.version}, sort_keys=True)

    @classmethod
    def decode(cls, text: str) -> Published:
        """ValueError with the reason for anything but what ``encode`` writes."""
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ValueError(f"not JSON ({exc})") from None
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        expected = {"backend": str, "dns": str, "canaryPort": int, "clusterPolicyPriority": int,
                    "enforcementWait": str, "version": str}
        for key, kind in expected.items():
            if not isinstance(data.get(key), kind) or isinstance(data.get(key), bool):
                raise ValueError(f"{key} is missing or not a {kind.__name__}")
        return cls(data["backend"], data["dns"], data["canaryPort"], data["clusterPolicyPriority"],
                   data["enforcementWait"], data["version"])

    def value(self, name: str) -> Any:
        return getattr(self, name)


def resolve(given: dict[str, Any], published: Published | None, defaults: dict[str, Any],
            why_unpublished: str | None = None) -> tuple[dict[str, Any], list[str]]:
    """The settings to judge with, and what to tell the operator about them.

    ``given``: the flags the operator wrote (None where not given), as text or numbers like
    ``published``'s; ``defaults``: the flags' defaults. A flag given wins (it may be a question:
    "what if"), with a warning where it differs from the installed controller's; otherwise the
    published value; with nothing published, the default and a warning that it must match."""
    chosen: dict[str, Any] = {}
    notes: list[str] = []
    for name in JUDGED:
        flag = given.get(name)
        if flag is not None:
            chosen[name] = flag
            if published is not None and str(flag) != str(published.value(name)):
                notes.append(f"warning: {_FLAGS[name]} {flag} differs from the installed controller's "
                             f"({published.value(name)}): judging with the flag")
        elif published is not None:
            chosen[name] = published.value(name)
        else:
            chosen[name] = defaults[name]
    if published is not None:
        notes.insert(0, "judging with the installed controller's settings: " + ", ".join(
            f"{_FLAGS[name]} {published.value(name)}" for name in JUDGED) + f" (sortie-egress {published.version})")
    else:
        notes.insert(0, f"warning: the installed controller's settings are unknown ({why_unpublished}): judging with "
                        "this command's flags and their defaults, which must be the controller's (" + ", ".join(
                            f"{_FLAGS[name]} {chosen[name]}" for name in JUDGED) + ")")
    return chosen, notes


__all__ = ["JUDGED", "Published", "SETTINGS_ANNOTATION", "resolve"]
