"""``sortie-egress wait-for-enforcement``: the injected init container's whole job (enforcement_wait/injection.py).

The standard library and small pure modules of ours only (enforcement_wait/injection.py and
protocol.py, admission/session.py), and the CLI imports it only for this command: it starts in every session pod, so it
starts fast and small. Each round, from the pod's own network namespace:

1. the canary's name (a Service) is resolved anew and its open port asked for a status: which
   endpoint answered (the canary pod's own address). The open port speaks TLS, and the wait
   believes only a certificate for ``--identity`` from the CAs the webhook pinned in its
   arguments (``--ca-bundle``): a name the pod's creator controls (``hostAliases``,
   ``dnsPolicy: None``) can point at a look-alike, but the look-alike cannot prove it is ours;
2. on that one endpoint, the open port's status, the closed port, and the open port's status
   again (enforcement_wait/protocol.judge_round: a completed handshake on the closed port is never
   "blocked", and a refusal or timeout counts only between two answers that show that
   endpoint's closed listener up and its queues not overflowing).

It exits 0 after ``ROUNDS`` such rounds in a row; after ``timeout`` seconds without them it
exits 1, which makes the kubelet retry (or fail the pod, with restartPolicy Never): never a
start unprotected.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import socket
import ssl
import sys
import time
from dataclasses import dataclass

from sortie_egress.enforcement_wait.protocol import CANARY_TOKEN, MAX_STATUS_BYTES, CanaryStatus, ClosedProbe, judge_round, parse_status
from sortie_egress.enforcement_wait.injection import DEFAULT_OPEN_PORT, closed_port

#: How long the closed port may take to answer before it counts as a candidate for blocked, at
#: least, and as a multiple of the open port's TCP handshake on the same endpoint just before: a
#: dataplane that drops (rather than rejects) makes the closed probe wait this long each round.
#: The handshake, not the whole TLS answer: the closed port is only ever asked for a handshake,
#: which the endpoint's kernel answers as fast as it answered the open port's (the canary
#: process's own time, which TLS adds, plays no part), and the round believes a timeout only
#: between two answers that show that closed listener up with its queues not overflowing.
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
    handshake: float = 0.0  # of the seconds, the TCP handshake's


@dataclass(frozen=True, slots=True)
class Trust:
    """Who the canary's open port must prove to be: a certificate for ``identity`` from the pinned CAs."""

    context: ssl.SSLContext
    identity: str

    @classmethod
    def pinned(cls, bundle: str, identity: str) -> Trust:
        """From the wait's arguments: ``bundle`` is the CAs' DER, concatenated, in base64 (one
        argument, no PEM line breaks); ValueError with the reason if it is not that."""
        if not identity:
            raise ValueError("--ca-bundle needs --identity (the name the canary's certificate carries)")
        try:
            der = base64.b64decode(bundle, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("--ca-bundle is not base64") from None
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies the chain and the name
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            context.load_verify_locations(cadata=der)
        except (ssl.SSLError, ValueError) as exc:
            raise ValueError(f"--ca-bundle holds no usable CA certificate ({exc})") from None
        return cls(context, identity)


def _error(exc: OSError) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"the canary did not prove it is ours ({exc.verify_message or exc.reason})"
    return type(exc).__name__ + (f": {exc.strerror}" if exc.strerror else (f": {exc}" if str(exc) else ""))


def _read_answer(connection: socket.socket, started: float, timeout: float) -> bytes:
    received = b""
    while b"\n" not in received[len(CANARY_TOKEN):] and len(received) < len(CANARY_TOKEN) + MAX_STATUS_BYTES:
        connection.settimeout(max(0.01, timeout - (time.monotonic() - started)))
        try:
            chunk = connection.recv(len(CANARY_TOKEN) + MAX_STATUS_BYTES - len(received))
        except (ssl.SSLEOFError, ssl.SSLZeroReturnError):
            break  # closed without (or with) close_notify after the answer: what came counts
        if not chunk:
            break
        received += chunk
    return received


def ask(address: str, port: int, timeout: float, trust: Trust | None = None) -> Answer:
    """Connect (over TLS, verified, with ``trust``), read the token and the status line, close."""
    started = time.monotonic()
    try:
        with socket.create_connection((address, port), timeout=timeout) as raw:
            handshake = time.monotonic() - started
            own = raw.getsockname()[0]
            if trust is None:
                received = _read_answer(raw, started, timeout)
            else:
                with trust.context.wrap_socket(raw, server_hostname=trust.identity) as connection:
                    received = _read_answer(connection, started, timeout)
    except OSError as exc:
        return Answer(None, time.monotonic() - started, error=_error(exc))
    seconds = time.monotonic() - started
    if not received.startswith(CANARY_TOKEN):
        return Answer(None, seconds, own, "no token", handshake)
    status = parse_status(received[len(CANARY_TOKEN):])
    return Answer(status, seconds, own, "" if status else "no status", handshake)


def try_closed(address: str, port: int, timeout: float) -> ClosedProbe:
    """Only whether the handshake completes: what (if anything) comes after it does not matter."""
    try:
        with socket.create_connection((address, port), timeout=timeout):
            return ClosedProbe(connected=True)
    except OSError as exc:
        return ClosedProbe(connected=False, error=_error(exc))


def enforced_once(host: str, port: int, trust: Trust | None = None) -> tuple[bool, str]:
    """One round: (enforced?, what was seen, for the log)."""
    try:
        address = socket.getaddrinfo(host, port, socket.AF_UNSPEC, socket.SOCK_STREAM)[0][4][0]
    except OSError as exc:
        return False, f"cannot resolve {host}: {exc}"
    first = ask(address, port, 2.0, trust)
    if first.status is None:
        return False, f"canary {address}:{port} did not answer ({first.error})"
    endpoint = first.status.local
    before = ask(endpoint, port, 2.0, trust)
    if before.status is None:
        return False, f"canary endpoint {endpoint}:{port} did not answer ({before.error})"
    closed = try_closed(endpoint, closed_port(port), timeout=max(CLOSED_WAIT_FLOOR, CLOSED_WAIT_FACTOR * before.handshake))
    after = ask(endpoint, port, 2.0, trust)
    return judge_round(endpoint, port, before.own, before.status, closed, after.status)


def wait_for_enforcement(host: str, port: int, timeout: float, rounds: int = ROUNDS, trust: Trust | None = None) -> int:
    started = time.monotonic()
    if trust is None:
        print("the canary is not authenticated (no --ca-bundle): whatever answers its name is believed",
              flush=True)
    else:
        print(f"the canary must prove it is {trust.identity} (a certificate from the pinned CAs)", flush=True)
    last = ""
    attempts = in_a_row = 0
    while True:
        attempts += 1
        enforced, seen = enforced_once(host, port, trust)
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
    """The flags, for ``python -m sortie_egress.wait`` and ``sortie-egress wait-for-enforcement`` alike."""
    parser.add_argument("--canary", required=True, help="the canary Service's name or address")
    parser.add_argument("--port", type=int, default=DEFAULT_OPEN_PORT,
                        help="the canary's open port (the closed one is the next)")
    parser.add_argument("--timeout", type=float, default=600.0, help="give up (exit 1) after this many seconds")
    parser.add_argument("--ca-bundle", default="",
                        help="the CAs the canary's certificate must come from: their DER, concatenated, in base64 "
                             "(the webhook pins its serving Secret's ca.crt here)")
    parser.add_argument("--identity", default="", help="the name the canary's certificate must carry")


def trust_of(args: argparse.Namespace) -> Trust | None:
    """The pinned trust from parsed flags; None without --ca-bundle; ValueError if unusable."""
    return Trust.pinned(args.ca_bundle, args.identity) if args.ca_bundle else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sortie_egress.wait",
                                     description="Exit 0 once this pod's egress policy is seen enforced (CONTRACT §6).")
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        trust = trust_of(args)
    except ValueError as exc:
        parser.error(str(exc))
    return wait_for_enforcement(args.canary, args.port, args.timeout, trust=trust)


__all__ = ["Answer", "Trust", "add_arguments", "ask", "enforced_once", "main", "trust_of", "try_closed",
           "wait_for_enforcement"]


if __name__ == "__main__":
    sys.exit(main())
