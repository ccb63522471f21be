"""What a rule allows or denies besides its destination: protocols and port ranges. Pure.

The one place for the vocabulary's traffic rules, which every renderer and judge reads:

- the protocols a rule may name (``PROTOCOLS``), all of them with ports;
- a rule with a port and no protocol means TCP *and* UDP (``UNNAMED_PROTOCOLS``), as the contract's
  rule table says; a rule with neither means all traffic, ICMP included;
- a *port set*: what one rule carries besides its destination, the unit the exact backends render
  one rule per (``port_set``, ``grouped_by_port_set``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from sortie_egress.policy.model import Rule

#: The protocols a rule may name; each carries ports.
PROTOCOLS: Final = ("TCP", "UDP", "SCTP")
#: What a rule with a port and no protocol covers.
UNNAMED_PROTOCOLS: Final = ("TCP", "UDP")
#: (protocol, first port, last port) per protocol; ports 0..0 is every port of the protocol, and
#: the empty tuple is all traffic (every protocol, ICMP included).
PortSet = tuple[tuple[str, int, int], ...]


def protocols_of(rule: Rule) -> tuple[str, ...]:
    """The protocols a rule with a port covers: its own, or TCP and UDP."""
    return (rule.protocol,) if rule.protocol else UNNAMED_PROTOCOLS


def port_set(rule: Rule) -> PortSet:
    """What a rule allows or denies besides its destination. Rules with the same port set share
    one rendered rule."""
    if rule.port == 0:
        return () if rule.protocol is None else ((rule.protocol, 0, 0),)
    last = rule.end_port if rule.end_port is not None else rule.port
    return tuple((protocol, rule.port, last) for protocol in protocols_of(rule))


def grouped_by_port_set(rules: tuple[Rule, ...]) -> list[tuple[PortSet, list[Rule]]]:
    """The rules in groups of one port set, in the order each set first appears."""
    groups: dict[PortSet, list[Rule]] = {}
    for rule in rules:
        groups.setdefault(port_set(rule), []).append(rule)
    return list(groups.items())


__all__ = ["PROTOCOLS", "PortSet", "UNNAMED_PROTOCOLS", "grouped_by_port_set", "port_set", "protocols_of"]
