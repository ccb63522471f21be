"""One budget for the request bodies all connections hold at once.

Each admission body is bounded (``MAX_REVIEW_BYTES``, what the API server can send), but any pod
can open connections to the webhook's port: 70 connections each holding an unfinished 3 MiB body
took a replica past its 256 MiB limit, and with every replica killed the same way every session
start in the cluster is refused. So the bytes buffered across connections are counted against one
budget; a body that would pass it gets 503 and its connection closed, and the bytes it held are
given back. The API server's own requests are small (a pod's review is a few KiB), so they pass
while an attacker's hold the budget; what it costs them under attack is a refusal, never memory.
Single-threaded (the event loop), so a plain counter.
"""

from __future__ import annotations

from dataclasses import dataclass

#: A quarter of the shipped memory limit (256 MiB): room for the process, the memo and the copies
#: a body is joined into.
DEFAULT_BODY_BUDGET = 64 * 1024 * 1024


@dataclass
class BodyBudget:
    capacity: int = DEFAULT_BODY_BUDGET
    used: int = 0

    def take(self, size: int) -> bool:
        """Reserve ``size`` bytes; False (nothing reserved) when that would pass the capacity."""
        if self.used + size > self.capacity:
            return False
        self.used += size
        return True

    def give_back(self, size: int) -> None:
        self.used = max(0, self.used - size)


__all__ = ["BodyBudget", "DEFAULT_BODY_BUDGET"]
