"""``sortie-egress wait-for-enforcement``: the injected init container's whole job (enforcement.py).

The standard library and small pure modules of ours only (enforcement, canary_protocol,
session), and the CLI imports it only for this command: it starts in every session pod, so it
starts fast and small. Each round, from the pod's own network namespace:

1. the canary's name (a Service) is resolved anew and its open port asked for a status: which
   endpoint answered (the canary pod's own address);
2. on that one endpoint, the open port's status, the closed port, and the open port's status
   again (canary_protocol.judge_round: a completed handshake on the closed port is never
   "blocked", and a refusal or timeout counts only between two answers that show that
   endpoint's closed listener up and its queues not overflowing).

It exits 0 after ``ROUNDS`` such rounds in a row; after ``timeout`` seconds without them it
exits 1, which makes the kubelet retry (or fail the pod, with restartPolicy Never): never a
start unprotected.
"""

from __future__ import annotations

import argparse
import socket
import sys
import time
from dataclasses import dataclass

from .canary_protocol import CANARY_TOKEN, MAX_STATUS_BYTES, CanaryStatus, ClosedProbe, judge_round, parse_status
from .enforcement import DEFAULT_OPEN_PORT, closed_port

#: How long the closed port may take to answer before it counts as a candidate for blocked, at
#: least, and as a multiple of the open port's answer: a dataplane that drops (rather than
#: rejects) makes the closed probe wait this long each round.
CLOSED_WAIT_FLOOR = 0.25
CLOSED_WAIT_FACTOR = 10.0
RETRY_INTERVAL = 0.05
#: Consecutive sound rounds that make "enforced".
ROUNDS = 3


@dataclass(frozen=True, slots=True)
class Answer:
    """What one connection to an open port brought back."""

    status: CanaryStatus | None
    seconds: float
    own: str = ""  # this pod's address on the connection
    error: str = ""


def _error(exc: OSError) -> str:
    return type(exc).__name__ + (f": {exc.strerror}" if exc.strerror else "")


def ask(address: str, port: int, timeout: float) -> Answer:
    """Connect, read the token and the status line, close."""
    started = time.monotonic()
    try:
        with socket.create_connection((address, port), timeout=timeout) as connection:
            own = connection.getsockname()[0]
            received = b""
            while b"\n" not in received[len(CANARY_TOKEN):] and len(received) < len(CANARY_TOKEN) + MAX_STATUS_BYTES:
                connection.settimeout(max(0.01, timeout - (time.monotonic() - started)))
                chunk = connection.recv(len(CANARY_TOKEN) + MAX_STATUS_BYTES - len(received))
                if not chunk:
                    break
                received += chunk
    except OSError as exc:
        return Answer(None, time.monotonic() - started, error=_error(exc))
    seconds = time.monotonic() - started
    if not received.startswith(CANARY_TOKEN):
        return Answer(None, seconds, own, "no token")
    status = parse_status(received[len(CANARY_TOKEN):])
    return Answer(status, seconds, own, "" if status else "no status")


def try_closed(address: str, port: int, timeout: float) -> ClosedProbe:
    """Only whether the handshake completes: what (if anything) comes after it does not matter."""
    try:
        with socket.create_connection((address, port), timeout=timeout):
            return ClosedProbe(connected=True)
    except OSError as exc:
        return ClosedProbe(connected=False, error=_error(exc))


def enforced_once(host: str, port: int) -> tuple[bool, str]:
    """One round: (enforced?, what was seen, for the log)."""
    try:
        address = socket.getaddrinfo(host, port, socket.AF_UNSPEC, socket.SOCK_STREAM)[0][4][0]
    except OSError as exc:
        return False, f"cannot resolve {host}: {exc}"
    first = ask(address, port, timeout=2.0)
    if first.status is None:
        return False, f"canary {address}:{port} did not answer ({first.error})"
    endpoint = first.status.local
    before = ask(endpoint, port, timeout=2.0)
    if before.status is None:
        return False, f"canary endpoint {endpoint}:{port} did not answer ({before.error})"
    closed = try_closed(endpoint, closed_port(port), timeout=max(CLOSED_WAIT_FLOOR, CLOSED_WAIT_FACTOR * before.seconds))
    after = ask(endpoint, port, timeout=2.0)
    return judge_round(endpoint, port, before.own, before.status, closed, after.status)


def wait_for_enforcement(host: str, port: int, timeout: float, rounds: int = ROUNDS) -> int:
    started = time.monotonic()
    last = ""
    attempts = in_a_row = 0
    while True:
        attempts += 1
        enforced, seen = enforced_once(host, port)
        in_a_row = in_a_row + 1 if enforced else 0
        if seen != last:  # each new state once, not a line per round
            print(f"[{time.monotonic() - started:6.3f} s] {seen}", flush=True)
            last = seen
        if in_a_row >= rounds:
            print(f"[{time.monotonic() - started:6.3f} s] enforced in {rounds} rounds in a row", flush=True)
            return 0
        if time.monotonic() - started > timeout:
            print(f"gave up after {timeout:.0f} s and {attempts} rounds: the session's egress policy was not seen "
                  "enforced; the pod's containers stay held back", file=sys.stderr, flush=True)
            return 1
        if not enforced:
            time.sleep(RETRY_INTERVAL)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags, for ``python -m webhook.wait`` and ``sortie-egress wait-for-enforcement`` alike."""
    parser.add_argument("--canary", required=True, help="the canary Service's name or address")
    parser.add_argument("--port", type=int, default=DEFAULT_OPEN_PORT,
                        help="the canary's open port (the closed one is the next)")
    parser.add_argument("--timeout", type=float, default=600.0, help="give up (exit 1) after this many seconds")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m webhook.wait",
                                     description="Exit 0 once this pod's egress policy is seen enforced (CONTRACT §6).")
    add_arguments(parser)
    args = parser.parse_args(argv)
    return wait_for_enforcement(args.canary, args.port, args.timeout)


__all__ = ["Answer", "add_arguments", "ask", "enforced_once", "main", "try_closed", "wait_for_enforcement"]


if __name__ == "__main__":
    sys.exit(main())
