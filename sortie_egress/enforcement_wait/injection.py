"""Holding a session pod's containers back until its egress policy is enforced (CONTRACT §6).

The scheduling gate proves only that the NetworkPolicy *object* exists; dataplanes such as
kube-router program a pod's rules after its address is known, which is after its
containers have started. So the webhook puts one init container first in every session
pod: it runs inside the pod's own network namespace and exits only once it sees the policy
at work there, with the canary the controller serves:

- the canary's *open* port answers with a token: every session policy allows it (a rule
  the controller adds), so the pod's network and the canary are up;
- the canary's *closed* port, on the same pods, answers with the same token unless a policy
  blocks it, and every session policy blocks it (no rule allows it, and the canary's
  addresses are cut out of every address block that would).

Enforced = on one canary endpoint, the closed port completes no handshake while the open port,
before and after, shows that endpoint's closed listener up (enforcement_wait/protocol.py: what makes that
sound), several rounds in a row. A canary that is down, restarting, stalled or flooded makes a
round inconclusive, and the pod waits (fails closed) rather than starting unprotected. Pure:
the container and the patch that puts it first; the probing lives in ``wait.py``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sortie_egress.enforcement_wait.protocol import CANARY_TOKEN, closed_port
from sortie_egress.admission.session import spec_names

INIT_CONTAINER_NAME = "sortie-egress-wait"
#: An empty volume over the ServiceAccount token's path in our container: the wait needs no API
#: token, and the API server's ServiceAccount plugin, finding that path taken, adds none. Without it
#: the plugin mounts a token into our container after our patch, the API server re-invokes us
#: (reinvocationPolicy IfNeeded), and every session start costs two webhook calls instead of one.
NO_TOKEN_VOLUME = "sortie-egress-wait-no-token"
SERVICE_ACCOUNT_PATH = "/var/run/secrets/kubernetes.io/serviceaccount"
DEFAULT_OPEN_PORT = 9445
#: The module the injected container runs (``python -m``).
WAIT_MODULE = "sortie_egress.wait"
#: What the final-pod check (protection/authorship.py) accepts: the module, and its name before the
#: rename, which pods admitted by the release before still carry (issue 23; a shim runs it). The
#: old name goes one release after the webhook stopped injecting it.
WAIT_MODULES_ACCEPTED = (WAIT_MODULE, "webhook.wait")
#: Canary pods: the controller's. A session policy allows the open port to exactly these.
CANARY_POD_LABELS = {"app.kubernetes.io/name": "sortie-egress", "app.kubernetes.io/component": "controller"}

#: The install's choice (the controller ServiceAccount's ``sortie.io/enforcement-wait``, the
#: webhook's and the controller's ``--enforcement-wait``): ``required`` (absent, or anything
#: unknown: fail closed), ``auto`` (the wait where the backend's dataplane does not keep the
#: promise itself), ``off`` (never; the operator's risk).
WAIT_MODES = ("required", "auto", "off")


@dataclass(frozen=True, slots=True)
class EnforcementWait:
    """The init container the webhook injects: our image, and where the canary answers."""

    image: str
    canary_host: str  # the canary Service's name (or address)
    open_port: int = DEFAULT_OPEN_PORT
    timeout_seconds: int = 600
    #: What the canary must prove (enforcement_wait/pin.py): the CAs it may present a certificate from (their
    #: DER in base64) and the name on it. Empty: not authenticated (only tests and a wait run by hand).
    ca_bundle: str = ""
    identity: str = ""

    @property
    def pinned(self) -> bool:
        return bool(self.ca_bundle and self.identity)

    def _arguments(self) -> list[str]:
        arguments = ["--canary", self.canary_host, "--port", str(self.open_port), "--timeout", str(self.timeout_seconds)]
        if self.pinned:
            arguments += ["--ca-bundle", self.ca_bundle, "--identity", self.identity]
        return arguments

    def container(self) -> dict[str, Any]:
        return {
            "name": INIT_CONTAINER_NAME,
            "image": self.image,
            "imagePullPolicy": "IfNotPresent",
            # `python -m sortie_egress.wait`, not the `sortie-egress` CLI: the standard library only, so it
            # starts in a few tens of milliseconds and a few MiB in every session pod.
            "command": ["python", "-m", WAIT_MODULE, *self._arguments()],
            "resources": {"requests": {"cpu": "10m", "memory": "32Mi"},
                          "limits": {"cpu": "200m", "memory": "64Mi"}},
            "securityContext": {
                "runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532,
                "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"},
            },
            "volumeMounts": [{"name": NO_TOKEN_VOLUME, "mountPath": SERVICE_ACCOUNT_PATH, "readOnly": True}],
            # Written out although they are the API server's defaults: a re-invoked webhook then finds
            # the container exactly as it left it.
            "terminationMessagePath": "/dev/termination-log",
            "terminationMessagePolicy": "FallbackToLogsOnError",
        }

    @staticmethod
    def volume() -> dict[str, Any]:
        return {"name": NO_TOKEN_VOLUME, "emptyDir": {"sizeLimit": "1Ki"}}


def init_container_names(pod: Mapping[str, Any]) -> list[Any] | None:
    return spec_names(pod, "initContainers")


def wait_patch(pod: Mapping[str, Any], wait: EnforcementWait) -> list[dict[str, Any]]:
    """Ours first among the init containers (they are containers too, and run before the rest),
    and its token-less volume among the pod's volumes.

    One already named like ours, container or volume, is replaced by ours (the container in first
    place): a re-invoked webhook finds both as it left them (no change), and a creator cannot
    bring a look-alike that waits for nothing."""
    return (_placed(pod, "initContainers", wait.container(), first=True)
            + _placed(pod, "volumes", wait.volume(), first=False))


def _placed(pod: Mapping[str, Any], field: str, ours: dict[str, Any], first: bool) -> list[dict[str, Any]]:
    """The ops that leave exactly ``ours`` under its name in ``spec.<field>``: first in the list
    (``first``) or appended, never by rewriting the list, so the pod's own entries stay put."""
    names = spec_names(pod, field)
    if names is None:
        return [{"op": "add", "path": f"/spec/{field}", "value": [ours]}]
    found = [i for i, name in enumerate(names) if name == ours["name"]]
    if len(found) == 1 and (found[0] == 0 or not first) and pod["spec"][field][found[0]] == ours:
        return []
    removals = [{"op": "remove", "path": f"/spec/{field}/{i}"} for i in reversed(found)]
    return removals + [{"op": "add", "path": f"/spec/{field}/{0 if first else '-'}", "value": ours}]


__all__ = ["CANARY_POD_LABELS", "CANARY_TOKEN", "DEFAULT_OPEN_PORT", "EnforcementWait", "INIT_CONTAINER_NAME",
           "NO_TOKEN_VOLUME", "SERVICE_ACCOUNT_PATH", "WAIT_MODES", "closed_port",
           "init_container_names", "wait_patch"]
