"""The ledger's translations of ``ip -j`` output back into ``ip rule``/``ip route`` arguments
(tests/cluster/host.py), on entries as iproute2 prints them (copied from runs of the Cilium
node), against arguments written out by hand: undo must name exactly the rule or route."""

from __future__ import annotations

from tests.cluster.host import route_args, rule_args


def test_rules_as_cilium_leaves_them() -> None:
    assert rule_args({"priority": 0, "src": "all", "table": "local"}) == ["pref", "0", "lookup", "local"]
    assert rule_args({"priority": 100, "src": "all", "table": "local"}) == ["pref", "100", "lookup", "local"]
    assert rule_args({"priority": 9, "src": "all", "fwmark": "0x200", "fwmask": "0xf00", "table": "2004"}) == [
        "pref", "9", "fwmark", "0x200/0xf00", "lookup", "2004"]


def test_rules_with_addresses_interfaces_and_actions() -> None:
    assert rule_args({"priority": 20, "src": "10.0.0.0", "srclen": 8, "dst": "192.0.2.0", "dstlen": 24, "iif": "lo",
                      "table": "main"}) == ["pref", "20", "from", "10.0.0.0/8", "to", "192.0.2.0/24", "iif", "lo",
                                            "lookup", "main"]
    assert rule_args({"priority": 30, "src": "all", "action": "blackhole"}) == ["pref", "30", "blackhole"]


def test_routes_as_cilium_leaves_them() -> None:
    assert route_args({"type": "local", "dst": "default", "dev": "lo", "table": "2004", "protocol": "kernel",
                       "scope": "host", "flags": []}) == [
        "local", "default", "table", "2004", "dev", "lo", "proto", "kernel", "scope", "host"]
    assert route_args({"dst": "198.18.16.0/24", "gateway": "198.18.16.4", "dev": "cilium_host", "protocol": "kernel",
                       "prefsrc": "198.18.16.4", "flags": []}) == [
        "unicast", "198.18.16.0/24", "table", "main", "dev", "cilium_host", "proto", "kernel", "via", "198.18.16.4"]
