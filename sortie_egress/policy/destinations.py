"""Where a rule's traffic goes: networks (``cidr``) and names (``fqdn``), read strictly. Pure.

Stricter than ``ipaddress`` and what the dataplanes accept, no more: a destination that
Kubernetes, ClusterNetworkPolicy or Cilium would refuse, or read differently than the author
meant, is refused here with the reason. Memoised where the same networks recur across apps.
"""

from __future__ import annotations

import ipaddress
import json
import re
from functools import lru_cache
from typing import Union

IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]
IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
_ADDRESS_PART = re.compile(r"[0-9A-Fa-f:.]+")
_PREFIX_PART = re.compile(r"0|[1-9][0-9]{0,2}")
#: ::ffff:0:0/96 (IPv4-mapped addresses): the top 96 bits of such an address, as an integer.
_IPV4_MAPPED_PREFIX = 0xFFFF


@lru_cache(maxsize=4096)
def parse_network(text: str) -> tuple[IPNetwork, str | None]:
    """An IPv4/IPv6 network from CIDR text, plus a note when it was normalised.

    Memoised (the answer is immutable, a refusal is raised afresh each time): ``ipaddress`` is
    most of a new policy's cost, each rule's CIDR is read twice (validated, then normalised),
    and the same networks recur across apps.

    Stricter than ``ipaddress``: netmask forms (``/255.0.0.0``), zone ids and
    IPv4-mapped IPv6 networks are refused, because Kubernetes refuses them in a
    NetworkPolicy (or, for mapped addresses, because an IPv6 rule would never
    match the IPv4 traffic the author meant).
    """
    shown = json.dumps(text)
    address, slash, prefix = text.partition("/")
    if not _ADDRESS_PART.fullmatch(address) or (slash and not _PREFIX_PART.fullmatch(prefix)):
        raise ValueError(f"{shown} is not an IP network")
    try:
        # The family from the text: ip_address() would try IPv4 first and pay for its exception.
        host: IPAddress = ipaddress.IPv6Address(address) if ":" in address else ipaddress.IPv4Address(address)
    except ValueError:
        raise ValueError(f"{shown} is not an IP network") from None
    width = host.max_prefixlen
    if slash and int(prefix) > width:
        raise ValueError(f"{shown}: prefix length /{prefix} is out of range for IPv{host.version} (0-{width})")
    # From the integer: a network built from text would parse the address a second time.
    length = int(prefix) if slash else width
    network: IPNetwork
    if host.version == 6:
        network = ipaddress.IPv6Network((int(host), length), strict=False)
        if length >= 96 and int(network.network_address) >> 32 == _IPV4_MAPPED_PREFIX:
            raise ValueError(f"{shown} is an IPv4-mapped IPv6 network; write the IPv4 network instead")
    else:
        network = ipaddress.IPv4Network((int(host), length), strict=False)
    if not slash:
        return network, f"{shown} is an address; using {network}"
    if network.network_address != host:
        return network, f"{shown} has host bits set; using {network}"
    return network, None


_DNS_LABEL = re.compile(r"[a-z0-9](?:[-a-z0-9_]{0,61}[a-z0-9])?")
MAX_FQDN_LENGTH = 253


def parse_fqdn(text: str) -> str:
    """A DNS name or ``*.``-wildcard from rule text, lower-cased and without a trailing dot.

    What ClusterNetworkPolicy's ``domainNames`` and Cilium's ``toFQDNs`` both accept, and no
    more: at least two labels (a bare ``com`` or ``localhost`` would name nothing a policy can
    find), letters, digits, ``-`` and ``_`` (a label begins and ends with a letter or digit, so
    ``_sip._tcp`` names are out), labels of at most 63 characters, a ``*.`` prefix and
    nowhere else (``*`` matches one or more whole labels), and not an IP address in disguise.
    """
    shown = json.dumps(text)
    name = text[:-1] if text.endswith(".") else text
    if not name.isascii():
        raise ValueError(f"{shown} is not a DNS name (ASCII only; write an internationalised name in its xn-- form)")
    name = name.lower()
    wildcard = name.startswith("*.")
    labels = (name[2:] if wildcard else name).split(".")
    if len(name) > MAX_FQDN_LENGTH:
        raise ValueError(f"{shown} is {len(name)} characters; a DNS name has at most {MAX_FQDN_LENGTH}")
    if "*" in (name[2:] if wildcard else name):
        raise ValueError(f'{shown}: "*" is allowed only as the first label ("*.example.com")')
    if wildcard and len(labels) < 2 and all(_DNS_LABEL.fullmatch(label) for label in labels):
        raise ValueError(f'{shown}: a wildcard needs two or more labels after "*." ("*.example.com"; '
                         f'"{name}" would allow a whole top-level domain)')
    if len(labels) < 2 or not all(_DNS_LABEL.fullmatch(label) for label in labels):
        raise ValueError(f"{shown} is not a DNS name (two or more labels of letters, digits, '-' and '_' that begin "
                         "and end with a letter or digit, each at most 63 characters, for example "
                         "\"api.example.com\" or \"*.example.com\")")
    if all(label.isdigit() for label in labels):
        raise ValueError(f"{shown} is an IP address, not a name; use cidr")
    return name


@lru_cache(maxsize=4096)
def network_text(network: IPNetwork) -> str:
    """A network's canonical text. ``str()`` of an IPv6 network recomputes its compressed form
    every time (a third of a new policy's cost before this memo), and the same networks recur."""
    return str(network)


__all__ = ["IPAddress", "IPNetwork", "MAX_FQDN_LENGTH", "network_text", "parse_fqdn", "parse_network"]
