"""An in-memory object API: the seam that lets the reconciler's writes be tested in milliseconds.

In the spirit of controller-runtime's fake client: objects kept by (namespace, name), with the
few API-server semantics the reconciler relies on, and nothing it does not:

- create of an existing name: 409; replace or patch of a missing object: 404;
- replace with a resourceVersion other than the stored one: 409 (optimistic concurrency);
- a JSON patch whose ``test`` op fails: 422 (what the API server answers);
- delete with a uid precondition that does not match: 409;
- every accepted write bumps the resourceVersion, and is recorded in ``writes``.

The real-control-plane tests stay: they prove the API server behaves like this; these prove what
the reconciler does with it. Responses carry ``.data`` (the reconciler reads with
``_preload_content=False``), failures are the client's own ApiException.
"""

from __future__ import annotations

import copy
import itertools
import json
from dataclasses import dataclass, field
from typing import Any

from sortie_egress.kube.policy_objects import SessionObjects
from sortie_egress.admission.patch import apply_patch


@dataclass
class Response:
    data: bytes


def _refuse(status: int, reason: str) -> Exception:
    from kubernetes.client.exceptions import ApiException

    return ApiException(status=status, reason=reason)


@dataclass
class FakeObjects:
    """One kind's objects, and the writes made to them (verb, namespace, name)."""

    kind: str = "NetworkPolicy"
    objects: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    writes: list[tuple[str, str, str]] = field(default_factory=list)
    _versions: Any = field(default_factory=lambda: itertools.count(100))

    def _stamp(self, obj: dict[str, Any]) -> dict[str, Any]:
        obj["metadata"]["resourceVersion"] = str(next(self._versions))
        return obj

    def put(self, obj: dict[str, Any]) -> dict[str, Any]:
        """What someone else (or the test) stores: kept as given, with a uid and a new version."""
        stored = copy.deepcopy(obj)
        stored["metadata"].setdefault("uid", f"uid-{stored['metadata']['name']}")
        self.objects[(stored["metadata"].get("namespace", ""), stored["metadata"]["name"])] = self._stamp(stored)
        return copy.deepcopy(stored)

    def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        found = self.objects.get((namespace, name))
        return copy.deepcopy(found) if found is not None else None

    def create(self, namespace: str, body: dict[str, Any], **_: Any) -> Response:
        name = body["metadata"]["name"]
        if (namespace, name) in self.objects:
            raise _refuse(409, "AlreadyExists")
        self.writes.append(("create", namespace, name))
        return Response(json.dumps(self.put(body)).encode())

    def replace(self, namespace: str, name: str, body: dict[str, Any], **_: Any) -> Response:
        stored = self.objects.get((namespace, name))
        if stored is None:
            raise _refuse(404, "NotFound")
        if body["metadata"].get("resourceVersion") != stored["metadata"]["resourceVersion"]:
            raise _refuse(409, "Conflict")
        self.writes.append(("replace", namespace, name))
        replaced = copy.deepcopy(body)
        replaced["metadata"]["uid"] = stored["metadata"]["uid"]
        self.objects[(namespace, name)] = self._stamp(replaced)
        return Response(json.dumps(replaced).encode())

    def patch(self, namespace: str, name: str, patch: list[dict[str, Any]], **_: Any) -> Response:
        stored = self.objects.get((namespace, name))
        if stored is None:
            raise _refuse(404, "NotFound")
        try:
            patched = apply_patch(stored, patch)
        except (ValueError, KeyError, IndexError):
            raise _refuse(422, "Invalid") from None
        self.writes.append(("patch", namespace, name))
        self.objects[(namespace, name)] = self._stamp(patched)
        return Response(json.dumps(patched).encode())

    def delete(self, namespace: str, name: str, body: dict[str, Any] | None = None, **_: Any) -> Response:
        stored = self.objects.get((namespace, name))
        if stored is None:
            raise _refuse(404, "NotFound")
        wanted = ((body or {}).get("preconditions") or {}).get("uid")
        if wanted is not None and wanted != stored["metadata"]["uid"]:
            raise _refuse(409, "Conflict")
        self.writes.append(("delete", namespace, name))
        del self.objects[(namespace, name)]
        return Response(b"{}")

    def session_objects(self) -> SessionObjects:
        """The reconciler's view of this kind, as kube/policy_objects.network_policies builds it."""
        return SessionObjects(kind=self.kind, create_call=self.create, replace_call=self.replace,
                              patch_call=self.patch, delete_call=self.delete,
                              list_all=lambda **_: Response(json.dumps({"items": list(self.objects.values())}).encode()),
                              list_namespaced=lambda namespace: lambda **_: Response(json.dumps({"items": [
                                  obj for (ns, _), obj in self.objects.items() if ns == namespace]}).encode()))


@dataclass
class FakeCore:
    """The CoreV1Api calls the reconciler makes: pod patches and Events. ``refuse_events`` makes
    every Event fail, as an API server that refuses them would."""

    pods: FakeObjects = field(default_factory=lambda: FakeObjects(kind="Pod"))
    events: list[dict[str, Any]] = field(default_factory=list)
    refuse_events: bool = False

    def patch_namespaced_pod(self, name: str, namespace: str, patch: list[dict[str, Any]], **_: Any) -> Response:
        return self.pods.patch(namespace, name, patch)

    def create_namespaced_event(self, namespace: str, event: dict[str, Any], **_: Any) -> Response:
        if self.refuse_events:
            raise _refuse(403, "Forbidden")
        self.events.append(copy.deepcopy(event))
        return Response(json.dumps(event).encode())


__all__ = ["FakeCore", "FakeObjects", "Response"]
