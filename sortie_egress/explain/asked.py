"""What ``explain`` is asked about: one destination, as an operator types it.

``DEST[:PORT][/PROTO]`` where DEST is an address (``198.51.100.7``, ``[2001:db8::1]``), a host
name (judged against the name rules of policies that have them), ``pod/[NAMESPACE/]NAME``,
``service/[NAMESPACE/]NAME`` (``svc/``), ``node/NAME``, or ``dns`` (the pod's cluster resolver:
``service/kube-system/kube-dns:53/udp``). PROTO is tcp (default), udp, sctp or icmp; a port is
needed for every protocol but icmp, because a verdict is about one packet, not a range. Pure:
parsing is separate from finding what the destination is (explain/view.py).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Final, Literal

Where = Literal["address", "name", "pod", "service", "node"]
PROTOCOLS: Final = ("TCP", "UDP", "SCTP", "ICMP")
_PREFIXES: Final[dict[str, Where]] = {"pod/": "pod", "po/": "pod", "service/": "service", "svc/": "service",
                                      "node/": "node", "no/": "node"}
_DNS_NAME: Final = re.compile(r"^(?=.{1,253}$)([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*\.?$")
_OBJECT_NAME: Final = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
#: What ``dns`` stands for: the Service every pod with dnsPolicy ClusterFirst sends its lookups to.
CLUSTER_DNS_SERVICE: Final = ("kube-system", "kube-dns")


@dataclass(frozen=True, slots=True)
class Asked:
    """One destination: ``host`` is the address, the name, or the object's name (``namespace``
    None: the session pod's)."""

    text: str
    where: Where
    host: str
    port: int | None
    protocol: str
    namespace: str | None = None

    def describe(self) -> str:
        return self.text


def _protocol(text: str) -> tuple[str, str]:
    """(what is left, the protocol): a trailing ``/tcp`` and the like is the protocol."""
    head, slash, tail = text.rpartition("/")
    if not slash:
        return text, "TCP"
    if tail.upper() in PROTOCOLS:
        return head, tail.upper()
    if any(text.lower().startswith(prefix) for prefix in _PREFIXES):
        return text, "TCP"
    if tail.split(":")[0].isdigit():
        raise ValueError(f"{text!r}: one address, not a network (a verdict is about one packet)")
    raise ValueError(f"{text!r}: unknown protocol {tail!r} (tcp, udp, sctp or icmp)")


def _port(text: str, whole: str) -> int:
    if not text.isdigit():
        raise ValueError(f"{whole!r}: the port must be a number, not {text!r}")
    port = int(text)
    if not 1 <= port <= 65535:
        raise ValueError(f"{whole!r}: port {port} is out of range (1-65535)")
    return port


def _host_and_port(text: str, whole: str) -> tuple[str, int | None]:
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket:
            raise ValueError(f"{whole!r}: an IPv6 address in brackets needs its closing ]")
        if rest and not rest.startswith(":"):
            raise ValueError(f"{whole!r}: after [ADDRESS] comes :PORT")
        return host, _port(rest[1:], whole) if rest else None
    if text.count(":") == 1:
        host, _, port = text.partition(":")
        return host, _port(port, whole)
    return text, None  # no port, or a bare IPv6 address


def parse_destination(text: str) -> Asked:
    """One DEST[:PORT][/PROTO]; ValueError saying what is wrong with it."""
    whole = text.strip()
    if not whole:
        raise ValueError("an empty destination")
    if whole.lower() in ("dns", "dns/udp", "dns/tcp"):
        protocol = "TCP" if whole.lower().endswith("/tcp") else "UDP"
        namespace, name = CLUSTER_DNS_SERVICE
        return Asked(whole, "service", name, 53, protocol, namespace)
    rest, protocol = _protocol(whole)
    where: Where | None = next((kind for prefix, kind in _PREFIXES.items() if rest.lower().startswith(prefix)), None)
    namespace = None
    if where is not None:
        rest = rest.split("/", 1)[1]
        named, port = _host_and_port(rest, whole)
        parts = named.split("/")
        if len(parts) > 2 or (where == "node" and len(parts) > 1):
            raise ValueError(f"{whole!r}: say {where}/[NAMESPACE/]NAME" if where != "node" else f"{whole!r}: say node/NAME")
        if len(parts) == 2:
            namespace, named = parts
            if not _OBJECT_NAME.match(namespace):
                raise ValueError(f"{whole!r}: {namespace!r} is not a namespace name")
        if not _OBJECT_NAME.match(named):
            raise ValueError(f"{whole!r}: {named!r} is not a {where} name")
        host = named
    else:
        host, port = _host_and_port(rest, whole)
        try:
            host = str(ipaddress.ip_address(host))
            where = "address"
        except ValueError:
            if not _DNS_NAME.match(host.lower()):
                raise ValueError(f"{whole!r}: {host!r} is neither an address nor a host name") from None
            where, host = "name", host.lower().rstrip(".")
    if protocol == "ICMP":
        if port is not None:
            raise ValueError(f"{whole!r}: ICMP has no ports")
    elif port is None:
        raise ValueError(f"{whole!r}: which port? Add :PORT (a verdict is about one packet; only icmp has none)")
    return Asked(whole, where, host, port, protocol, namespace)


def read_destinations(lines: list[str]) -> list[Asked]:
    """A ``--to-file``: one destination a line; blank lines and ``#`` comments skipped. ValueError
    naming every bad line at once (a reviewer fixes the file in one go)."""
    asked, problems = [], []
    for number, line in enumerate(lines, 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        try:
            asked.append(parse_destination(text))
        except ValueError as exc:
            problems.append(f"line {number}: {exc}")
    if problems:
        raise ValueError("; ".join(problems))
    if not asked:
        raise ValueError("no destination in the file")
    return asked
