"""A work queue with de-duplication and per-key exponential backoff with jitter.

The semantics follow client-go's workqueue, which decades of controllers have
settled on: a key is handed to one worker at a time; a key added while it is
being worked on is worked on again afterwards, once; failures delay the key's
next try exponentially (with jitter, so a burst of failures does not come back
as a burst of retries); success forgets the key's failures.
"""

from __future__ import annotations

import heapq
from collections import deque
import random
import threading
import time
from collections.abc import Hashable
from typing import Generic, TypeVar

Key = TypeVar("Key", bound=Hashable)


def backoff_delay(failures: int, base: float, cap: float, rand: random.Random) -> float:
    """base * 2^(failures-1), capped, with full jitter in its upper half."""
    ceiling = min(cap, base * (2 ** max(failures - 1, 0)))
    return ceiling / 2 + rand.random() * ceiling / 2


class WorkQueue(Generic[Key]):
    def __init__(self, base_delay: float = 0.05, max_delay: float = 60.0, seed: int | None = None) -> None:
        self._lock = threading.Condition()
        self._ready: deque[Key] = deque()
        self._queued: set[Key] = set()
        self._processing: set[Key] = set()
        self._dirty: set[Key] = set()
        self._delayed: list[tuple[float, int, Key]] = []
        self._counter = 0
        self._failures: dict[Key, int] = {}
        self._base = base_delay
        self._cap = max_delay
        self._rand = random.Random(seed)
        self._shutdown = False

    def add(self, key: Key) -> None:
        with self._lock:
            if self._shutdown:
                return
            if key in self._processing:
                self._dirty.add(key)
                return
            if key not in self._queued:
                self._queued.add(key)
                self._ready.append(key)
                self._lock.notify()

    def add_after(self, key: Key, delay: float) -> None:
        with self._lock:
            self._counter += 1
            heapq.heappush(self._delayed, (time.monotonic() + delay, self._counter, key))
            self._lock.notify()

    def retry(self, key: Key) -> float:
        """Schedule ``key`` again after its backoff; returns the delay."""
        with self._lock:
            failures = self._failures.get(key, 0) + 1
            self._failures[key] = failures
        delay = backoff_delay(failures, self._base, self._cap, self._rand)
        self.add_after(key, delay)
        return delay

    def forget(self, key: Key) -> None:
        with self._lock:
            self._failures.pop(key, None)

    def failures(self, key: Key) -> int:
        with self._lock:
            return self._failures.get(key, 0)

    def _promote_due(self) -> float | None:
        now = time.monotonic()
        while self._delayed and self._delayed[0][0] <= now:
            _, _, key = heapq.heappop(self._delayed)
            if key in self._processing:
                self._dirty.add(key)
            elif key not in self._queued:
                self._queued.add(key)
                self._ready.append(key)
        return self._delayed[0][0] - now if self._delayed else None

    def get(self, timeout: float | None = None) -> Key | None:
        """The next key to work on (None on shutdown or timeout); call ``done`` after."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while True:
                wait = self._promote_due()
                if self._ready:
                    key = self._ready.popleft()
                    self._queued.discard(key)
                    self._processing.add(key)
                    return key
                if self._shutdown:
                    return None
                if deadline is not None:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return None
                    wait = remaining if wait is None else min(wait, remaining)
                self._lock.wait(wait)

    def done(self, key: Key) -> None:
        with self._lock:
            self._processing.discard(key)
            if key in self._dirty:
                self._dirty.discard(key)
                if key not in self._queued:
                    self._queued.add(key)
                    self._ready.append(key)
                    self._lock.notify()

    def depth(self) -> int:
        with self._lock:
            return len(self._ready) + len(self._delayed)

    def shutdown(self) -> None:
        with self._lock:
            self._shutdown = True
            self._lock.notify_all()
