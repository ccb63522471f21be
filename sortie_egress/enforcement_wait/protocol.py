"""What the canary says and how the wait judges one round (CONTRACT §6: a *sound* observation).

Pure and standard-library only: the injected wait imports it in every session pod.

A refused or unanswered connection to the canary's closed port proves enforcement only if the
very endpoint that was asked was listening on that port at the time; otherwise a canary that is
terminating, restarting, stalled or flooded would pass for a dataplane that blocks. So a round
is a sandwich on **one endpoint** (the canary pod's own address, never a load-balanced Service
address):

1. the open port answers with the token and a status line: which address it was reached on,
   which address the connection came from, its instance, and how long ago its closed listener
   last accepted the canary's own loopback connection (a listener that accepts is up, its queue
   not full);
2. the closed port is tried: a completed TCP handshake means *not enforced*, whatever follows
   (a late or missing token changes nothing); a refusal, an unreachable answer or a timeout is
   only a candidate;
3. the open port answers again: the same instance, its closed listener still fresh, its listen
   queues no fuller than before (no overflow in between: a flood's dropped SYN proves nothing).

Only then is the closed port's silence the dataplane's. The wait asks for several such rounds
in a row. What this does not give is authentication: a server that speaks this protocol and lies
is believed (a name the pod's creator controls can point there); see docs/security.md.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import asdict, dataclass

#: Every connection to either port gets this first (waits from before the status line read
#: exactly this and close, so pods admitted before an upgrade keep starting).
CANARY_TOKEN = b"sortie-egress-canary\n"
STATUS_PREFIX = b"sortie-egress-canary-status "
MAX_STATUS_BYTES = 1024
#: How often the canary connects to its own closed listener over loopback, and how old the last
#: success may be for the listener to count as up.
SELF_CHECK_INTERVAL = 0.05
FRESH_SECONDS = 0.5


def closed_port(open_port: int) -> int:
    """The closed port is always the one after the open port: one setting, no mismatch."""
    return open_port + 1


@dataclass(frozen=True, slots=True)
class CanaryStatus:
    """What the canary's open port says about itself, on one connection."""

    instance: str  # random per canary process: a restart is another instance
    generation: int  # counts openings of the closed listener within the instance
    checked_ago: float  # seconds since the closed listener last accepted the canary's own connection
    overflows: int  # its network namespace's listen queue overflows and drops so far
    local: str  # the address the connection reached (the canary pod's own, after any Service translation)
    peer: str  # the address the connection came from

    def encode(self) -> bytes:
        return STATUS_PREFIX + json.dumps(asdict(self), sort_keys=True, separators=(",", ":")).encode() + b"\n"


_FIELDS: dict[str, tuple[type, ...]] = {"instance": (str,), "generation": (int,), "checked_ago": (int, float),
                                        "overflows": (int,), "local": (str,), "peer": (str,)}


def parse_status(line: bytes) -> CanaryStatus | None:
    """The status, or None for anything that is not exactly one (a wrong field is no status)."""
    if not line.startswith(STATUS_PREFIX) or not line.endswith(b"\n") or len(line) > MAX_STATUS_BYTES:
        return None
    try:
        document = json.loads(line[len(STATUS_PREFIX):])
    except ValueError:
        return None
    if not isinstance(document, dict) or set(document) != set(_FIELDS):
        return None
    for key, types in _FIELDS.items():
        value = document[key]
        if isinstance(value, bool) or not isinstance(value, types):
            return None
    return CanaryStatus(**document)


def same_address(first: str, second: str) -> bool:
    """Equal as addresses (``::ffff:10.0.0.1`` is ``10.0.0.1``; an unparsable text equals nothing)."""
    try:
        return _unmapped(first) == _unmapped(second)
    except ValueError:
        return False


def _unmapped(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    address = ipaddress.ip_address(text.split("%", 1)[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


@dataclass(frozen=True, slots=True)
class ClosedProbe:
    """What the closed port did: a completed handshake, or why not (refused, timed out, unreachable)."""

    connected: bool
    error: str = ""


def _status_problem(status: CanaryStatus, endpoint: str, own: str, when: str) -> str:
    if not same_address(status.local, endpoint):
        return f"the canary reached at {endpoint} says it was reached at {status.local} {when}"
    if not same_address(status.peer, own):
        return f"the canary saw this pod as {status.peer}, not {own}, {when} (something relays or translates)"
    if not 0 <= status.checked_ago <= FRESH_SECONDS:
        return (f"the canary's closed listener is not known to be up {when} (its last self-check "
                f"{status.checked_ago:.2f} s ago)")
    return ""


def judge_round(endpoint: str, port: int, own: str, before: CanaryStatus | None, closed: ClosedProbe,
                after: CanaryStatus | None) -> tuple[bool, str]:
    """One sandwich on one endpoint: (enforced?, why, for the wait's log). ``own``: this pod's
    address, as its connections to the endpoint carried it."""
    closed_at = f"{endpoint}:{closed_port(port)}"
    if before is None:
        return False, f"canary {endpoint}:{port} gave no status"
    if closed.connected:
        return False, f"canary {closed_at} accepted a connection: egress policy not enforced yet"
    if after is None:
        return False, f"canary {endpoint}:{port} gave no status after the closed probe"
    for status, when in ((before, "before the closed probe"), (after, "after it")):
        problem = _status_problem(status, endpoint, own, when)
        if problem:
            return False, problem
    if (after.instance, after.generation) != (before.instance, before.generation):
        return False, f"canary {endpoint} restarted or reopened its closed listener during the round"
    if after.overflows != before.overflows:
        return False, (f"canary {endpoint}'s listen queues overflowed during the round (a flood?): "
                       "a connection it dropped proves nothing")
    return True, f"enforced: {closed_at} blocked ({closed.error or 'no answer'}) while the canary listened there"


__all__ = ["CANARY_TOKEN", "FRESH_SECONDS", "MAX_STATUS_BYTES", "SELF_CHECK_INTERVAL", "STATUS_PREFIX", "CanaryStatus",
           "ClosedProbe", "closed_port", "judge_round", "parse_status", "same_address"]
