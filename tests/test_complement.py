"""complement.denied_regions: hand-written cases, and a property: with the allows and the
denies side by side, a packet gets through exactly when an allow matches it (checked by a
brute-force evaluator written here, not by the code under test)."""

from __future__ import annotations

import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st

from sortie_egress.policy.complement import DeniedRegion, PortSet, denied_regions

net = ipaddress.ip_network


def test_nothing_allowed_denies_both_families_whole() -> None:
    assert denied_regions([]) == [DeniedRegion("0.0.0.0/0", (), None), DeniedRegion("::/0", (), None)]


def test_everything_allowed_denies_nothing() -> None:
    assert denied_regions([(net("0.0.0.0/0"), ()), (net("::/0"), ())]) == []


def test_one_port_on_one_host() -> None:
    assert denied_regions([(net("198.18.1.2/32"), (("TCP", 443, 443),))]) == [
        DeniedRegion("0.0.0.0/0", ("198.18.1.2/32",), None),
        DeniedRegion("198.18.1.2/32", (), (("TCP", 1, 442), ("TCP", 444, 65535), ("UDP", 1, 65535), ("SCTP", 1, 65535))),
        DeniedRegion("::/0", (), None)]


def test_overlapping_and_adjacent_ranges_merge_and_every_port_of_a_protocol() -> None:
    allowed: list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, PortSet]] = [
        (net("10.0.0.0/8"), (("TCP", 80, 90),)), (net("10.0.0.0/8"), (("TCP", 85, 100), ("TCP", 101, 101))),
        (net("10.0.0.0/8"), (("UDP", 0, 0),)), (net("10.0.0.0/8"), (("SCTP", 1, 65535),))]
    assert denied_regions(allowed)[1] == DeniedRegion("10.0.0.0/8", (), (("TCP", 1, 79), ("TCP", 102, 65535)))


def test_three_levels_except_only_direct_children() -> None:
    allowed = [(net("10.0.0.0/8"), (("TCP", 1, 100),)), (net("10.1.0.0/16"), (("TCP", 101, 65535),)),
               (net("10.1.2.0/24"), (("UDP", 53, 53),)), (net("2001:db8::/32"), ())]
    assert denied_regions(allowed) == [
        DeniedRegion("0.0.0.0/0", ("10.0.0.0/8",), None),
        DeniedRegion("10.0.0.0/8", ("10.1.0.0/16",), (("TCP", 101, 65535), ("UDP", 1, 65535), ("SCTP", 1, 65535))),
        DeniedRegion("10.1.0.0/16", ("10.1.2.0/24",), (("UDP", 1, 65535), ("SCTP", 1, 65535))),
        DeniedRegion("10.1.2.0/24", (), (("UDP", 1, 52), ("UDP", 54, 65535), ("SCTP", 1, 65535))),
        DeniedRegion("::/0", ("2001:db8::/32",), None)]


# --- the property ---------------------------------------------------------------------------

_PROTOCOLS = ("TCP", "UDP", "SCTP")
_networks = st.builds(lambda address, prefix: net(f"{ipaddress.IPv4Address(address)}/{prefix}", strict=False),
                      st.sampled_from([0x0A000000, 0x0A010000, 0x0A010200, 0xC0000207, 0x00000000]),
                      st.sampled_from([0, 8, 16, 24, 32]))
_port_sets = st.one_of(st.just(()), st.lists(st.tuples(st.sampled_from(_PROTOCOLS), st.integers(1, 20), st.integers(0, 5)).map(
    lambda t: (t[0], 0, 0) if t[1] == 1 and t[2] == 0 else (t[0], t[1], t[1] + t[2])), min_size=1, max_size=3).map(tuple))
_addresses = st.sampled_from(["10.0.0.1", "10.1.0.1", "10.1.2.3", "10.2.0.0", "192.0.2.7", "192.0.2.8", "8.8.8.8", "0.0.0.1"])


def _allows(allowed: list[tuple[object, PortSet]], address: str, protocol: str, port: int) -> bool:
    for network, port_set in allowed:
        if ipaddress.ip_address(address) in network:  # type: ignore[operator]
            if not port_set or any(p == protocol and (first == 0 or first <= port <= last) for p, first, last in port_set):
                return True
    return False


def _denies(regions: list[DeniedRegion], address: str, protocol: str, port: int) -> bool:
    ip = ipaddress.ip_address(address)
    for region in regions:
        if ip in net(region.network) and not any(ip in net(hole) for hole in region.excepted):
            if region.ports is None or any(p == protocol and first <= port <= last for p, first, last in region.ports):
                return True
    return False


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(_networks, _port_sets), max_size=5), _addresses, st.sampled_from(_PROTOCOLS),
       st.sampled_from([1, 2, 5, 10, 20, 25, 26, 65535]))
def test_denies_exactly_what_no_allow_matches(allowed: list[tuple[object, PortSet]], address: str, protocol: str,
                                              port: int) -> None:
    regions = denied_regions(allowed)  # type: ignore[arg-type]
    assert _denies(regions, address, protocol, port) == (not _allows(allowed, address, protocol, port))
