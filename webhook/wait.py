"""``sortie-egress wait-for-enforcement``: the injected init container's whole job (enforcement.py).

The standard library and two small pure modules of ours (enforcement, session) only, and
the CLI imports it only for this command: it starts in every session pod, so it starts fast
and small. It resolves the canary's name anew each round (a Service's address
is stable, but DNS may not answer in the first instant) and probes from the pod's own
network namespace. It exits 0 when, in one round, the open port answers with the token and
the closed port does not; it exits 1 after ``timeout`` seconds without that, which makes
the kubelet retry (or fail the pod, with restartPolicy Never): never a start unprotected.
"""

from __future__ import annotations

import argparse
import socket
import sys
import time
from dataclasses import dataclass

from .enforcement import CANARY_TOKEN, DEFAULT_OPEN_PORT, closed_port

#: How long the closed port may take to answer before it counts as blocked, at least, and
#: as a multiple of the open port's answer: a dataplane that drops (rather than rejects)
#: makes the closed probe wait this long once.
CLOSED_WAIT_FLOOR = 0.25
CLOSED_WAIT_FACTOR = 10.0
RETRY_INTERVAL = 0.05


@dataclass(frozen=True, slots=True)
class Answer:
    token: bool  # the canary's token came back
    seconds: float
    error: str = ""


def ask(address: str, port: int, timeout: float) -> Answer:
    """Connect, read the token, close: what the canary at ``address:port`` answered."""
    started = time.monotonic()
    try:
        with socket.create_connection((address, port), timeout=timeout) as connection:
            connection.settimeout(max(0.01, timeout - (time.monotonic() - started)))
            received = b""
            while len(received) < len(CANARY_TOKEN):
                chunk = connection.recv(len(CANARY_TOKEN) - len(received))
                if not chunk:
                    break
                received += chunk
            return Answer(received == CANARY_TOKEN, time.monotonic() - started)
    except OSError as exc:
        return Answer(False, time.monotonic() - started, type(exc).__name__ + (f": {exc.strerror}" if exc.strerror else ""))


def enforced_once(host: str, port: int) -> tuple[bool, str]:
    """One round: (enforced?, what was seen, for the log)."""
    try:
        address = socket.getaddrinfo(host, port, socket.AF_UNSPEC, socket.SOCK_STREAM)[0][4][0]
    except OSError as exc:
        return False, f"cannot resolve {host}: {exc}"
    opened = ask(address, port, timeout=2.0)
    if not opened.token:
        return False, f"canary {address}:{port} did not answer ({opened.error or 'no token'})"
    closed = ask(address, closed_port(port), timeout=max(CLOSED_WAIT_FLOOR, CLOSED_WAIT_FACTOR * opened.seconds))
    if closed.token:
        return False, f"canary {address}:{closed_port(port)} still reachable: egress policy not enforced yet"
    return True, f"enforced: {address}:{port} answered, {address}:{closed_port(port)} blocked ({closed.error or 'no token'})"


def wait_for_enforcement(host: str, port: int, timeout: float) -> int:
    started = time.monotonic()
    last = ""
    rounds = 0
    while True:
        rounds += 1
        enforced, seen = enforced_once(host, port)
        if seen != last:  # each new state once, not a line per round
            print(f"[{time.monotonic() - started:6.3f} s] {seen}", flush=True)
            last = seen
        if enforced:
            return 0
        if time.monotonic() - started > timeout:
            print(f"gave up after {timeout:.0f} s and {rounds} rounds: the session's egress policy was not seen "
                  "enforced; the pod's containers stay held back", file=sys.stderr, flush=True)
            return 1
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


__all__ = ["Answer", "add_arguments", "ask", "enforced_once", "main", "wait_for_enforcement"]


if __name__ == "__main__":
    sys.exit(main())
