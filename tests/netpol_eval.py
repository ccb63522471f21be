"""A small, independent model of NetworkPolicy egress semantics, for the tests.

Written from the Kubernetes API documentation, not from our renderer: a rule
allows a packet when one of its peers matches the destination (no ``to``:
every destination) and one of its ports matches (no ``ports``: every port and
protocol). A port entry with no protocol means TCP; with no port, every port of
that protocol; ``endPort`` widens a port to a range. An ipBlock matches
addresses inside ``cidr`` and outside every ``except``. Selector peers match
pods only; the destinations here are external addresses, so they never match.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Packet:
    address: ipaddress.IPv4Address | ipaddress.IPv6Address
    port: int
    protocol: str


def _peer_matches(peer: dict[str, Any], address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    block = peer.get("ipBlock")
    if block is None:
        return False  # pod/namespace selectors: not an external address
    cidr = ipaddress.ip_network(block["cidr"])
    if address.version != cidr.version or address not in cidr:
        return False
    return not any(address in ipaddress.ip_network(excepted) for excepted in block.get("except", []))


def _port_matches(entry: dict[str, Any], packet: Packet) -> bool:
    if entry.get("protocol", "TCP") != packet.protocol:
        return False
    if "port" not in entry:
        return True
    low = entry["port"]
    high = entry.get("endPort", low)
    return low <= packet.port <= high


def egress_allows(policy: dict[str, Any], packet: Packet) -> bool:
    for rule in policy["spec"].get("egress", []):
        peers = rule.get("to")
        if peers is not None and not any(_peer_matches(peer, packet.address) for peer in peers):
            continue
        ports = rule.get("ports")
        if ports is not None and not any(_port_matches(entry, packet) for entry in ports):
            continue
        return True
    return False
