"""Reconciling one session: its NetworkPolicy first, its gate after.

A session is keyed by (namespace, session id), so the pod and the policy it
names meet in one place however their events arrive. The normal path is two
writes: create the policy, remove the gate. Writes go through to the local
stores at once, so the reconcile that the gate removal itself triggers finds
everything in place and writes nothing.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from ..constants import POLICY_NAME_PREFIX, SESSION_ID_LABEL
from ..render import DnsDestination
from .desired import desired_for, gate_removal_patch, is_active, is_managed, policy_matches
from .informer import Store, project_policy, project_pod
from .metrics import ControllerMetrics

log = logging.getLogger("sortie.controller")

SessionKey = tuple[str, str]  # namespace, session id
EVENT_REASON = "InvalidEgressPolicy"


class Conflict(Exception):
    """Someone else changed the object between our read and our write: try again."""


@dataclass
class Reconciler:
    core: Any  # kubernetes.client.CoreV1Api
    networking: Any  # kubernetes.client.NetworkingV1Api
    pods: Store
    policies: Store
    dns: DnsDestination
    metrics: ControllerMetrics
    component: str = "sortie-egress"
    _warned: set[str] = field(default_factory=set)

    # --- keys -------------------------------------------------------------

    @staticmethod
    def key_for(obj: dict[str, Any]) -> SessionKey | None:
        metadata = obj.get("metadata") or {}
        session_id = (metadata.get("labels") or {}).get(SESSION_ID_LABEL)
        if not isinstance(session_id, str):
            name = metadata.get("name", "")
            if not name.startswith(POLICY_NAME_PREFIX):
                return None
            session_id = name[len(POLICY_NAME_PREFIX):]
        return metadata.get("namespace", ""), session_id

    def _session_pods(self, key: SessionKey) -> list[dict[str, Any]]:
        return self.pods.by_index(key)

    # --- the loop body ------------------------------------------------------

    def reconcile(self, key: SessionKey) -> str:
        """Bring one session to its desired state; returns what it did, for metrics and logs."""
        namespace, session_id = key
        name = POLICY_NAME_PREFIX + session_id
        existing = self.policies.get((namespace, name))
        pods = self._session_pods(key)
        active = sorted((pod for pod in pods if is_active(pod)),
                        key=lambda pod: pod["metadata"].get("creationTimestamp") or "")
        if not pods:
            if existing is not None and is_managed(existing):
                self._delete_policy(namespace, name)
                return "orphan_deleted"
            return "noop"
        if not active:
            return "noop"  # finishing or being deleted: the garbage collector takes its policy along
        pod = active[0]
        desired = desired_for(pod, self.dns)
        if desired.invalid_reason and not self._warn_once(pod, desired.invalid_reason):
            raise RuntimeError(f"could not record the Warning Event on {namespace}/{pod['metadata']['name']}")
        result = "noop"
        if desired.policy is None:
            if existing is not None and is_managed(existing):
                self._delete_policy(namespace, name)
                result = "deleted"
        elif existing is None:
            self._create_policy(desired.policy)
            result = "created"
        elif not policy_matches(existing, desired.policy):
            self._replace_policy(existing, desired.policy)
            result = "repaired"
        if desired.policy is not None or desired.invalid_reason is None:
            if self._release_gate(pod):
                result = "released" if result == "noop" else f"{result}+released"
        return result

    # --- writes ---------------------------------------------------------------

    def _create_policy(self, policy: dict[str, Any]) -> None:
        from kubernetes.client.exceptions import ApiException

        namespace = policy["metadata"]["namespace"]
        try:
            response = self.networking.create_namespaced_network_policy(namespace, policy, _preload_content=False)
        except ApiException as exc:
            if exc.status == 409:
                raise Conflict(f"{namespace}/{policy['metadata']['name']} already exists") from None
            raise
        self.policies.put(project_policy(json.loads(response.data)))
        self.metrics.writes.labels("create_policy").inc()

    def _replace_policy(self, existing: dict[str, Any], desired: dict[str, Any]) -> None:
        from kubernetes.client.exceptions import ApiException

        metadata = desired["metadata"]
        body = {**desired, "metadata": {**metadata, "resourceVersion": existing["metadata"].get("resourceVersion")}}
        labels = dict((existing["metadata"].get("labels") or {}))
        labels.update(metadata["labels"])
        body["metadata"]["labels"] = labels
        try:
            response = self.networking.replace_namespaced_network_policy(
                metadata["name"], metadata["namespace"], body, _preload_content=False)
        except ApiException as exc:
            if exc.status in (404, 409):
                raise Conflict(f"{metadata['namespace']}/{metadata['name']} changed under us") from None
            raise
        self.policies.put(project_policy(json.loads(response.data)))
        self.metrics.writes.labels("replace_policy").inc()
        log.info("repaired drifted NetworkPolicy %s/%s", metadata["namespace"], metadata["name"])

    def _delete_policy(self, namespace: str, name: str) -> None:
        from kubernetes.client.exceptions import ApiException

        try:
            self.networking.delete_namespaced_network_policy(name, namespace, _preload_content=False)
        except ApiException as exc:
            if exc.status != 404:
                raise
        self.policies.remove((namespace, name))
        self.metrics.writes.labels("delete_policy").inc()
        log.info("deleted NetworkPolicy %s/%s (no pod needs it)", namespace, name)

    def _release_gate(self, pod: dict[str, Any]) -> bool:
        from kubernetes.client.exceptions import ApiException

        patch = gate_removal_patch(pod)
        if patch is None:
            return False
        metadata = pod["metadata"]
        try:
            response = self.core.patch_namespaced_pod(metadata["name"], metadata["namespace"], patch,
                                                      _preload_content=False)
        except ApiException as exc:
            if exc.status == 404:
                return False
            if exc.status in (409, 422):  # the test op failed: the gates moved; look again
                raise Conflict(f"pod {metadata['namespace']}/{metadata['name']} gates changed") from None
            raise
        self.pods.put(project_pod(json.loads(response.data)))
        self.metrics.writes.labels("release_gate").inc()
        created = metadata.get("creationTimestamp")
        if created:
            started = dt.datetime.fromisoformat(created.replace("Z", "+00:00")).timestamp()
            self.metrics.gate_release.observe(max(0.0, time.time() - started))
        return True

    def _warn_once(self, pod: dict[str, Any], reason: str) -> bool:
        """One Warning Event per pod (per controller lifetime): the message, not a stream of them."""
        from kubernetes.client.exceptions import ApiException

        metadata = pod["metadata"]
        uid = metadata.get("uid", "")
        if uid in self._warned:
            return True
        now = dt.datetime.now(dt.timezone.utc).isoformat().replace("+00:00", "Z")
        event = {
            "metadata": {"generateName": f"{metadata['name']}.", "namespace": metadata["namespace"]},
            "involvedObject": {"apiVersion": "v1", "kind": "Pod", "name": metadata["name"],
                               "namespace": metadata["namespace"], "uid": uid},
            "reason": EVENT_REASON, "type": "Warning", "message": reason[:1024],
            "source": {"component": self.component}, "reportingComponent": self.component,
            "firstTimestamp": now, "lastTimestamp": now, "count": 1,
        }
        try:
            self.core.create_namespaced_event(metadata["namespace"], event, _preload_content=False)
        except ApiException as exc:
            log.warning("could not record an Event on %s/%s: %s", metadata["namespace"], metadata["name"], exc.reason)
            return False
        self._warned.add(uid)
        log.warning("pod %s/%s: %s", metadata["namespace"], metadata["name"], reason)
        return True
