"""List-then-watch caches of Kubernetes objects: the edge both the controller and the webhook use.

Objects are kept as whatever projection the caller asks for (the controller keeps
small projections of the fields it reads: 5,000 full pods would be most of its
memory budget), parsed from raw JSON (the client's generated models cost far
more than json.loads). A watch carries
on from the list's resourceVersion, so no event falls in between; a watch that
expires (410 Gone) or breaks is followed by a fresh list, which also reports
objects deleted while nobody was watching.

At the size of a big cluster (50,000 session pods) two things matter: a list is read in pages
(``limit``/``continue``), each projected before the next is read, so the controller never holds a
whole unprojected list (hundreds of MB of JSON for 50,000 pods); and a list after a broken watch
reports only what changed while nobody watched, so it does not reconcile every session again (the
relist storm); likewise a watch event that changes nothing the projection keeps (a binding, our own
write echoed back) is kept but not passed on. Watches ask for bookmarks, so a quiet watch's resourceVersion
stays fresh and a reconnect seldom has to list at all.
"""

from __future__ import annotations

import json
import logging
import random
import threading
from collections.abc import Callable, Iterator
from typing import Any

log = logging.getLogger("sortie.informer")

ObjectKey = tuple[str, str]  # namespace, name
WATCH_SECONDS = 240
#: Objects per list page: the API server's own default for paginating clients (client-go's pager).
PAGE_SIZE = 500


class Expired(Exception):
    """The watch's resourceVersion is too old (410 Gone): list again."""


def object_key(obj: dict[str, Any]) -> ObjectKey:
    metadata = obj.get("metadata") or {}
    return metadata.get("namespace", ""), metadata.get("name", "")


class Store:
    """A thread-safe map of projected objects by namespace and name, indexed by
    namespace and optionally by one more key (session pods by session id, so a
    reconcile finds its pods without scanning 5,000 of them)."""

    def __init__(self, index: Callable[[dict[str, Any]], Any] | None = None) -> None:
        self._lock = threading.Lock()
        self._objects: dict[ObjectKey, dict[str, Any]] = {}
        self._index_of = index
        self._index: dict[Any, set[ObjectKey]] = {}
        self._namespaces: dict[str, set[ObjectKey]] = {}

    @staticmethod
    def _drop(index: dict[Any, set[ObjectKey]], value: Any, key: ObjectKey) -> None:
        bucket = index.get(value)
        if bucket is not None:
            bucket.discard(key)
            if not bucket:
                index.pop(value, None)

    def _unindex(self, key: ObjectKey) -> None:
        old = self._objects.pop(key, None)
        if old is None:
            return
        self._drop(self._namespaces, key[0], key)
        if self._index_of is not None:
            self._drop(self._index, self._index_of(old), key)

    def _insert(self, obj: dict[str, Any]) -> None:
        key = object_key(obj)
        self._unindex(key)
        self._objects[key] = obj
        self._namespaces.setdefault(key[0], set()).add(key)
        if self._index_of is not None:
            self._index.setdefault(self._index_of(obj), set()).add(key)

    def get(self, key: ObjectKey) -> dict[str, Any] | None:
        with self._lock:
            return self._objects.get(key)

    def by_index(self, value: Any) -> list[dict[str, Any]]:
        with self._lock:
            return [self._objects[key] for key in self._index.get(value, ())]

    def by_namespace(self, namespace: str) -> list[dict[str, Any]]:
        with self._lock:
            return [self._objects[key] for key in self._namespaces.get(namespace, ())]

    def put(self, obj: dict[str, Any]) -> bool:
        """Keep ``obj``; whether it is new or differs from the one kept in more than its resourceVersion."""
        with self._lock:
            before = self._objects.get(object_key(obj))
            self._insert(obj)
        return before is None or _differs(before, obj)

    def remove(self, key: ObjectKey) -> None:
        with self._lock:
            self._unindex(key)

    def replace(self, objects: list[dict[str, Any]], namespace: str | None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Swap in a fresh list (of one namespace, or all): (the objects that vanished, those that are
        new or changed, by resourceVersion)."""
        fresh = {object_key(obj): obj for obj in objects}
        with self._lock:
            gone = [obj for key, obj in self._objects.items()
                    if (namespace is None or key[0] == namespace) and key not in fresh]
            for obj in gone:
                self._unindex(object_key(obj))
            moved = []
            for key, obj in fresh.items():
                before = self._objects.get(key)
                if before is None or _differs(before, obj):
                    moved.append(obj)
                self._insert(obj)
        return gone, moved

    def items(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._objects.values())

    def __len__(self) -> int:
        with self._lock:
            return len(self._objects)


def _differs(before: dict[str, Any], after: dict[str, Any]) -> bool:
    """Whether two projections of one object differ in anything but their resourceVersion.

    Every write bumps the resourceVersion, also those that change nothing a projection keeps (a
    pod's binding, its status, our own writes, which the reconciler already wrote through to the
    store): telling those to ``on_change`` reconciled each new session pod four times in a burst,
    and each repeat costs the others the CPU it takes (issue 24's gate-release latency)."""
    if before == after:
        return False
    return ({**before, "metadata": {**(before.get("metadata") or {}), "resourceVersion": None}}
            != {**after, "metadata": {**(after.get("metadata") or {}), "resourceVersion": None}})


def paginated(list_call: Callable[..., Any], project: Callable[[dict[str, Any]], dict[str, Any]] = lambda obj: obj,
              page_size: int = PAGE_SIZE, **kwargs: Any) -> tuple[list[dict[str, Any]], str]:
    """Every object a list call returns, read ``page_size`` at a time and projected page by page,
    and the list's resourceVersion. Expired when a continue token expires mid-way (410): a list
    must then start again, as a consistent snapshot cannot be pieced together."""
    from kubernetes.client.exceptions import ApiException

    objects: list[dict[str, Any]] = []
    token: str | None = None
    while True:
        try:
            response = list_call(limit=page_size, _continue=token, _preload_content=False, **kwargs) if token else \
                list_call(limit=page_size, _preload_content=False, **kwargs)
        except ApiException as exc:
            if exc.status == 410:
                raise Expired(f"the list's continue token expired: {exc.reason}") from None
            raise
        document = json.loads(response.data)
        objects.extend(project(item) for item in document.get("items") or [])
        del response
        metadata = document.get("metadata") or {}
        token = metadata.get("continue") or None
        if token is None:
            return objects, str(metadata.get("resourceVersion") or "")


def _lines(response: Any) -> Iterator[bytes]:
    buffer = b""
    for chunk in response.stream(65536, decode_content=True):
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            if line.strip():
                yield line
    if buffer.strip():
        yield buffer


class Informer(threading.Thread):
    """Keeps ``store`` in step with the API server and calls ``on_change`` for every object that moves."""

    def __init__(self, name: str, list_call: Callable[..., Any], project: Callable[[dict[str, Any]], dict[str, Any]],
                 store: Store, on_change: Callable[[dict[str, Any]], None], stop: threading.Event,
                 namespace: str | None = None, on_restart: Callable[[str], None] | None = None) -> None:
        super().__init__(name=f"informer-{name}", daemon=True)
        self.list_call = list_call
        self.project = project
        self.store = store
        self.on_change = on_change
        self.stop_event = stop
        self.namespace = namespace
        self.on_restart = on_restart or (lambda _reason: None)
        self.synced = threading.Event()
        self.relists = 0
        self.expired = 0
        self._rand = random.Random()

    def _list(self) -> str:
        objects, resource_version = paginated(self.list_call, self.project)
        gone, moved = self.store.replace(objects, self.namespace)
        for obj in gone + moved:
            self.on_change(obj)
        self.relists += 1
        return resource_version

    def _watch(self, resource_version: str) -> str:
        timeout = WATCH_SECONDS + self._rand.randint(0, 60)  # spread re-watches out
        response = self.list_call(watch=True, resource_version=resource_version, allow_watch_bookmarks=True,
                                  timeout_seconds=timeout, _preload_content=False, _request_timeout=(10, timeout + 30))
        try:
            for line in _lines(response):
                if self.stop_event.is_set():
                    break
                event = json.loads(line)
                kind, obj = event.get("type"), event.get("object") or {}
                if kind == "ERROR":
                    if obj.get("code") == 410:
                        raise Expired(obj.get("message", "410 Gone"))
                    raise RuntimeError(f"watch error: {obj.get('message', obj)}")
                resource_version = str((obj.get("metadata") or {}).get("resourceVersion") or resource_version)
                if kind == "BOOKMARK":
                    continue
                projected = self.project(obj)
                if kind == "DELETED":
                    self.store.remove(object_key(projected))
                elif not self.store.put(projected):
                    continue  # nothing a projection keeps moved: nobody has anything to do
                self.on_change(projected)
        finally:
            response.release_conn()
        return resource_version

    def run(self) -> None:
        failures = 0
        while not self.stop_event.is_set():
            try:
                resource_version = self._list()
                self.synced.set()
                failures = 0
                while not self.stop_event.is_set():
                    resource_version = self._watch(resource_version)
            except Expired as exc:
                self.expired += 1
                self.on_restart("expired")
                log.info("%s: watch expired (%s); listing again", self.name, exc)
            except Exception as exc:  # the API server restarted, a connection reset: list again, after a pause
                failures += 1
                self.on_restart("error")
                delay = min(30.0, 0.2 * 2 ** min(failures, 8)) * (0.5 + self._rand.random() / 2)
                log.warning("%s: %s; listing again in %.1f s", self.name, exc, delay)
                self.stop_event.wait(delay)
