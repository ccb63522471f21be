"""What an allowlist forbids, as deny rules: for a dataplane whose denies win over every allow
(Cilium's ``egressDeny``), an allowlist made of allows plus the deny of everything else cannot
be widened by another policy that selects the pod.

The rules' networks nest or are disjoint (CIDR blocks), so they cut each address family into
regions: a network minus the networks inside it, and the rest of the family. Every address of a
region is allowed the same traffic: the union of what the rules of the networks containing it
allow. A region is then denied the rest: all traffic when nothing is allowed, else per port
protocol the port ranges that no rule allows. Pure, so it is checked against hand-written
expectations.

Not covered, and said where it is used: traffic with no ports (ICMP) to a region that allows
some ports is left to the allows (a deny of "every protocol but these ports" has no form).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Final

from sortie_egress.policy.intervals import merge_intervals
from sortie_egress.policy.destinations import IPNetwork, network_text
from sortie_egress.policy.traffic import PROTOCOLS, PortSet

#: Port protocols a deny can name; "every port" of one is its range 1..65535.
PORT_PROTOCOLS: Final = PROTOCOLS
_LAST_PORT: Final = 65535
_FAMILIES: Final = (ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0"))

#: (protocol, first port, last port), where 0..0 is every port of the protocol; an empty tuple
#: is all traffic (backends.port_set's form).


@dataclass(frozen=True, slots=True)
class DeniedRegion:
    """A network minus ``excepted`` (networks inside it), denied ``ports``: per protocol the
    ranges (first, last); None means all traffic."""

    network: str
    excepted: tuple[str, ...]
    ports: tuple[tuple[str, int, int], ...] | None


def _allowed_ranges(port_sets: list[PortSet]) -> dict[str, list[tuple[int, int]]] | None:
    """Per port protocol the merged allowed ranges; None: all traffic is allowed."""
    ranges: dict[str, list[tuple[int, int]]] = {protocol: [] for protocol in PORT_PROTOCOLS}
    for port_set in port_sets:
        if not port_set:
            return None
        for protocol, first, last in port_set:
            ranges[protocol].append((1, _LAST_PORT) if first == 0 else (first, last))
    return {protocol: merge_intervals(found) for protocol, found in ranges.items()}


def _denied_ports(port_sets: list[PortSet]) -> tuple[tuple[str, int, int], ...] | None | bool:
    """What a region allowed ``port_sets`` must deny: None all traffic, False nothing, else the
    uncovered ranges per protocol."""
    allowed = _allowed_ranges(port_sets) if port_sets else {protocol: [] for protocol in PORT_PROTOCOLS}
    if allowed is None:
        return False
    if not any(allowed.values()):
        return None
    denied: list[tuple[str, int, int]] = []
    for protocol in PORT_PROTOCOLS:
        start = 1
        for first, last in allowed[protocol]:
            if first > start:
                denied.append((protocol, start, first - 1))
            start = last + 1
        if start <= _LAST_PORT:
            denied.append((protocol, start, _LAST_PORT))
    return tuple(denied) if denied else False


def denied_regions(allowed: list[tuple[IPNetwork, PortSet]]) -> list[DeniedRegion]:
    """The deny rules that, beside allows of ``allowed`` (network, port set) pairs, leave exactly
    those open: one region per network of the rules and one per address family's rest, in that
    order (families IPv4 first, wider networks first), regions with nothing to deny left out."""
    networks = sorted({network for network, _ in allowed}, key=lambda n: (n.version, n.prefixlen, int(n.network_address)))
    regions: list[DeniedRegion] = []
    for family in _FAMILIES:
        inside = [network for network in networks if network.version == family.version]
        for region in dict.fromkeys([family, *inside]):
            containing = [port_set for network, port_set in allowed
                          if network.version == region.version and region.subnet_of(network)]  # type: ignore[arg-type]
            children = [network for network in inside if network != region and network.subnet_of(region)  # type: ignore[arg-type]
                        and not any(other != network and other != region and network.subnet_of(other)  # type: ignore[arg-type]
                                    and other.subnet_of(region) for other in inside)]  # type: ignore[arg-type]
            ports = _denied_ports(containing)
            if ports is not False:
                regions.append(DeniedRegion(network_text(region), tuple(network_text(child) for child in children),
                                            ports))  # type: ignore[arg-type]
    return regions


__all__ = ["DeniedRegion", "PORT_PROTOCOLS", "PortSet", "denied_regions"]
