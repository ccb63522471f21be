"""The policy model against CONTRACT.md §1-2: every rejection, every warning, the canonical form."""

from __future__ import annotations

import ipaddress
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sortie_egress.policy.model import EgressPolicy, Rule, parse_policy
from sortie_egress.policy.destinations import parse_network


def parse(document: object) -> object:
    return parse_policy(document if isinstance(document, str) else json.dumps(document))


def errors(document: object) -> tuple[str, ...]:
    result = parse(document)
    assert result.policy is None
    return result.errors


# --- no policy --------------------------------------------------------------

@pytest.mark.parametrize("annotation", [None, "", "   ", "\n"])
def test_absent_or_empty_annotation_means_no_policy(annotation: str | None) -> None:
    result = parse_policy(annotation)
    assert result.ok and result.policy is None and result.warnings == ()


def test_empty_mode_means_no_policy_and_warns_about_ignored_rules() -> None:
    result = parse({"mode": "", "rules": [{"cidr": "10.0.0.0/8"}, {"cidr": "bogus"}]})
    assert result.ok and result.policy is None
    assert result.warnings == ('mode: "" means no per-app policy; 2 rules ignored, the cluster default applies',)


def test_empty_mode_without_rules_is_silent() -> None:
    assert parse({"mode": ""}).warnings == ()


def test_empty_mode_still_rejects_unknown_fields() -> None:
    assert errors({"mode": "", "rule": []}) == ("rule: unknown field (a policy has: mode, rules)",)


# --- rejections ---------------------------------------------------------------

@pytest.mark.parametrize(
    ("document", "expected"),
    [
        ("not json", "policy: not valid JSON: Expecting value at line 1 column 1"),
        ("[1, 2]", "policy: must be a JSON object, got an array"),
        ('"allowlist"', "policy: must be a JSON object, got a string"),
        ("null", "policy: must be a JSON object, got null"),
        ({"mode": "allowlist", "rule": []}, "rule: unknown field (a policy has: mode, rules)"),
        ({"rules": []}, "mode: is required"),
        ({"mode": "blocklist"}, 'mode: "blocklist" is not a mode ("allowlist", "denylist", or "" for none)'),
        ({"mode": "Allowlist"}, 'mode: "Allowlist" is not a mode ("allowlist", "denylist", or "" for none)'),
        ({"mode": 1}, "mode: must be a string, got 1"),
        ({"mode": "allowlist", "rules": {}}, "rules: must be an array, got an object"),
        ({"mode": "allowlist", "rules": "10.0.0.0/8"}, "rules: must be an array, got a string"),
        ({"mode": "allowlist", "rules": ["10.0.0.0/8"]}, "rules[0]: must be an object, got a string"),
        ({"mode": "allowlist", "rules": [{"cidr": "10.0.0.0/8", "ports": 443}]},
         "rules[0].ports: unknown field (a rule has: cidr or fqdn, port, end_port, protocol)"),
        ({"mode": "allowlist", "rules": [{"port": 443}]}, "rules[0].cidr: is required"),
        ({"mode": "allowlist", "rules": [{"cidr": "10.0.0.300/8"}]}, 'rules[0].cidr: "10.0.0.300/8" is not an IP network'),
        ({"mode": "allowlist", "rules": [{"cidr": "example.com"}]}, 'rules[0].cidr: "example.com" is not an IP network'),
        ({"mode": "allowlist", "rules": [{"cidr": ""}]}, 'rules[0].cidr: "" is not an IP network'),
        ({"mode": "allowlist", "rules": [{"cidr": 10}]}, "rules[0].cidr: must be a string, got 10"),
        ({"mode": "allowlist", "rules": [{"cidr": "10.0.0.0/33"}]},
         'rules[0].cidr: "10.0.0.0/33": prefix length /33 is out of range for IPv4 (0-32)'),
        ({"mode": "allowlist", "rules": [{"cidr": "2001:db8::/129"}]},
         'rules[0].cidr: "2001:db8::/129": prefix length /129 is out of range for IPv6 (0-128)'),
        ({"mode": "allowlist", "rules": [{"cidr": "10.0.0.0/-1"}]}, 'rules[0].cidr: "10.0.0.0/-1" is not an IP network'),
        ({"mode": "allowlist", "rules": [{"cidr": "10.0.0.0/255.0.0.0"}]},
         'rules[0].cidr: "10.0.0.0/255.0.0.0" is not an IP network'),
        ({"mode": "allowlist", "rules": [{"cidr": "010.0.0.0/8"}]}, 'rules[0].cidr: "010.0.0.0/8" is not an IP network'),
        ({"mode": "allowlist", "rules": [{"cidr": " 10.0.0.0/8"}]}, 'rules[0].cidr: " 10.0.0.0/8" is not an IP network'),
        ({"mode": "allowlist", "rules": [{"cidr": "fe80::1%eth0/64"}]}, 'rules[0].cidr: "fe80::1%eth0/64" is not an IP network'),
        ({"mode": "allowlist", "rules": [{"cidr": "::ffff:10.0.0.0/104"}]},
         'rules[0].cidr: "::ffff:10.0.0.0/104" is an IPv4-mapped IPv6 network; write the IPv4 network instead'),
        ({"mode": "allowlist", "rules": [{"cidr": "10.0.0.0/8", "port": True}]}, "rules[0].port: must be an integer, got true"),
        ({"mode": "allowlist", "rules": [{"cidr": "10.0.0.0/8", "port": 443.0}]}, "rules[0].port: must be an integer, got 443.0"),
        ({"mode": "allowlist", "rules": [{"cidr": "10.0.0.0/8", "port": "443"}]}, 'rules[0].port: must be an integer, got "443"'),
        ({"mode": "allowlist", "rules": [{"cidr": "10.0.0.0/8", "port": None}]}, "rules[0].port: must be an integer, got null"),
        ({"mode": "allowlist", "rules": [{"cidr": "10.0.0.0/8", "port": 65536}]},
         "rules[0].port: 65536 is out of range (0-65535; 0 means all ports)"),
        ({"mode": "allowlist", "rules": [{"cidr": "10.0.0.0/8", "port": -1}]},
         "rules[0].port: -1 is out of range (0-65535; 0 means all ports)"),
        ({"mode": "allowlist", "rules": [{"cidr": "10.0.0.0/8", "port": 80, "end_port": False}]},
         "rules[0].end_port: must be an integer, got false"),
        ({"mode": "allowlist", "rules": [{"cidr": "10.0.0.0/8", "port": 80, "end_port": 70000}]},
         "rules[0].end_port: 70000 is out of range (1-65535)"),
        ({"mode": "allowlist", "rules": [{"cidr": "10.0.0.0/8", "end_port": 90}]},
         "rules[0].end_port: needs a port > 0 to start the range"),
        ({"mode": "allowlist", "rules": [{"cidr": "10.0.0.0/8", "port": 0, "end_port": 90}]},
         "rules[0].end_port: needs a port > 0 to start the range"),
        ({"mode": "allowlist", "rules": [{"cidr": "10.0.0.0/8", "port": 90, "end_port": 80}]},
         "rules[0].end_port: 80 is below port 90"),
        ({"mode": "allowlist", "rules": [{"cidr": "10.0.0.0/8", "protocol": "ICMP"}]},
         'rules[0].protocol: "ICMP" is not a protocol (TCP, UDP or SCTP)'),
        ({"mode": "allowlist", "rules": [{"cidr": "10.0.0.0/8", "protocol": 6}]}, "rules[0].protocol: must be a string, got 6"),
        # "ſ" (long s) upper-cases to "S": a look-alike must not pass as SCTP
        ({"mode": "allowlist", "rules": [{"cidr": "10.0.0.0/8", "protocol": "\u017fctp"}]},
         'rules[0].protocol: "\\u017fctp" is not a protocol (TCP, UDP or SCTP)'),
    ],
)
def test_each_invalid_input_is_rejected_with_its_path(document: object, expected: str) -> None:
    assert expected in errors(document)


def test_every_problem_is_reported_at_once() -> None:
    found = errors({"mode": "allowlist", "rules": [
        {"cidr": "10.0.0.0/8"},
        {"cidr": "10.0.0.300/8", "port": True},
        {"cidr": "10.0.0.0/8", "port": 90, "end_port": 80, "protcol": "TCP"},
    ]})
    assert found == (
        'rules[1].cidr: "10.0.0.300/8" is not an IP network',
        "rules[1].port: must be an integer, got true",
        "rules[2].end_port: 80 is below port 90",
        "rules[2].protcol: unknown field (a rule has: cidr or fqdn, port, end_port, protocol)",
    )


def test_rule_limit() -> None:
    rule = {"cidr": "10.0.0.0/8"}
    assert parse({"mode": "allowlist", "rules": [rule] * 256}).ok
    assert errors({"mode": "allowlist", "rules": [rule] * 257}) == ("rules: 257 rules; the limit is 256",)
    assert errors({"mode": "nope", "rules": [rule] * 300}) == (
        "rules: 300 rules; the limit is 256",
        'mode: "nope" is not a mode ("allowlist", "denylist", or "" for none)',
    )


def test_annotation_size_limit() -> None:
    padding = " " * (64 * 1024 - len('{"mode": "allowlist"}'))
    assert parse_policy('{"mode": "allowlist"}' + padding).ok
    too_big = '{"mode": "allowlist"}' + padding + " "
    assert parse_policy(too_big).errors == ("policy: annotation is 65537 bytes; the limit is 65536",)


def test_size_limit_counts_bytes_not_characters() -> None:
    text = '{"mode": "allowlist", "rules": [], "x": "' + "é" * 33000 + '"}'
    assert parse_policy(text).errors[0].startswith("policy: annotation is 66")


@pytest.mark.parametrize("text", ['{"mode": "allowlist", "mode": "allowlist"}', '{"mode": "allowlist", "rules": [{"cidr": "10.0.0.0/8", "port": NaN}]}'])
def test_hostile_json_is_an_error_not_a_crash(text: str) -> None:
    assert parse_policy(text).errors[0].startswith("policy: not valid JSON")


# --- normalisation and warnings ---------------------------------------------

def test_host_bits_are_cleared_with_a_warning() -> None:
    result = parse({"mode": "allowlist", "rules": [{"cidr": "10.0.0.1/8", "port": 443}]})
    assert result.policy.rules[0].network == ipaddress.ip_network("10.0.0.0/8")
    assert result.warnings == ('rules[0].cidr: "10.0.0.1/8" has host bits set; using 10.0.0.0/8',)


@pytest.mark.parametrize(("address", "network"), [("10.1.2.3", "10.1.2.3/32"), ("2001:db8::1", "2001:db8::1/128")])
def test_bare_address_becomes_host_network(address: str, network: str) -> None:
    result = parse({"mode": "allowlist", "rules": [{"cidr": address}]})
    assert str(result.policy.rules[0].network) == network
    assert result.warnings == (f'rules[0].cidr: "{address}" is an address; using {network}',)


def test_denylist_ports_are_kept_in_the_policy_for_the_backends_that_deny_ports() -> None:
    # The networkpolicy backend warns and denies the whole network (tests/test_backends.py).
    result = parse({"mode": "denylist", "rules": [{"cidr": "10.0.0.0/8", "port": 22, "protocol": "TCP"}, {"cidr": "192.0.2.0/24"}]})
    assert result.policy.rules == (Rule(ipaddress.ip_network("10.0.0.0/8"), port=22, protocol="TCP"),
                                   Rule(ipaddress.ip_network("192.0.2.0/24")))
    assert result.warnings == ()
    assert result.policy.canonical_json() == (
        '{"mode": "denylist", "rules": [{"cidr": "10.0.0.0/8", "port": 22, "protocol": "TCP"}, {"cidr": "192.0.2.0/24"}]}')


@pytest.mark.parametrize(("cidr", "family"), [("0.0.0.0/0", 4), ("::/0", 6)])
def test_allowlist_that_opens_everything_warns(cidr: str, family: int) -> None:
    result = parse({"mode": "allowlist", "rules": [{"cidr": cidr}]})
    assert result.warnings == (f"rules[0]: {cidr} on all ports allows all IPv{family} egress",)
    assert parse({"mode": "allowlist", "rules": [{"cidr": cidr, "port": 443}]}).warnings == ()


def test_protocol_is_case_insensitive_and_canonical_upper_case() -> None:
    result = parse({"mode": "allowlist", "rules": [{"cidr": "10.0.0.0/8", "port": 53, "protocol": "uDp"},
                                                   {"cidr": "10.0.0.0/8", "protocol": "sctp"}]})
    assert [rule.protocol for rule in result.policy.rules] == ["UDP", "SCTP"]


def test_canonical_json_matches_the_contract_example() -> None:
    result = parse('{"rules": [{"protocol": "tcp", "port": 443, "cidr": "10.0.0.0/8"}], "mode": "allowlist"}')
    assert result.policy.canonical_json() == '{"mode": "allowlist", "rules": [{"cidr": "10.0.0.0/8", "port": 443, "protocol": "TCP"}]}'


def test_absent_rules_and_zero_port_are_defaults() -> None:
    assert parse({"mode": "allowlist"}).policy == EgressPolicy("allowlist", ())
    explicit = parse({"mode": "allowlist", "rules": [{"cidr": "10.0.0.0/8", "port": 0, "protocol": ""}]}).policy
    assert explicit == parse({"mode": "allowlist", "rules": [{"cidr": "10.0.0.0/8"}]}).policy


def test_parse_network_keeps_ipv6_canonical() -> None:
    network, note = parse_network("2001:DB8:0:0::/32")
    assert str(network) == "2001:db8::/32" and note is None


@pytest.mark.parametrize("text", ["::ffff:0:0/96", "::ffff:1.2.3.4", "::ffff:1.2.3.0/120", "0:0:0:0:0:ffff:a00:0/104"])
def test_ipv4_mapped_networks_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="is an IPv4-mapped IPv6 network; write the IPv4 network instead"):
        parse_network(text)


@pytest.mark.parametrize(("text", "network"), [
    ("::ffff:0:0/95", "::fffe:0:0/95"),  # wider than the mapped range: ordinary IPv6 (host bits cleared)
    ("::fffe:0:0/96", "::fffe:0:0/96"),  # next to it
    ("::1:ffff:0:0/96", "::1:ffff:0:0/96"),  # same low bits, another prefix
    ("64:ff9b::/96", "64:ff9b::/96"),  # NAT64: IPv4 in IPv6, but real IPv6 traffic
])
def test_ipv6_networks_beside_the_mapped_range_are_kept(text: str, network: str) -> None:
    assert str(parse_network(text)[0]) == network


def test_network_built_from_the_address_keeps_family_and_prefix() -> None:
    four, _ = parse_network("192.0.2.77/26")
    six, _ = parse_network("2001:db8:1:2:3:4:5:6/64")
    assert (type(four), str(four)) == (ipaddress.IPv4Network, "192.0.2.64/26")
    assert (type(six), str(six)) == (ipaddress.IPv6Network, "2001:db8:1:2::/64")


# --- properties -----------------------------------------------------------------

def _networks() -> st.SearchStrategy[str]:
    v4 = st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 32)).map(lambda t: f"{ipaddress.IPv4Address(t[0])}/{t[1]}")
    v6 = st.tuples(st.integers(0, 2**128 - 1), st.integers(0, 128)).map(lambda t: f"{ipaddress.IPv6Address(t[0])}/{t[1]}")
    bare = st.integers(0, 2**32 - 1).map(lambda n: str(ipaddress.IPv4Address(n)))
    return st.one_of(v4, v6, bare).filter(lambda text: not text.startswith("::ffff:"))


@st.composite
def rules(draw: st.DrawFn) -> dict[str, object]:
    rule: dict[str, object] = {"cidr": draw(_networks())}
    port = draw(st.one_of(st.none(), st.just(0), st.integers(1, 65535)))
    if port is not None:
        rule["port"] = port
        if port and draw(st.booleans()):
            rule["end_port"] = draw(st.integers(port, 65535))
    protocol = draw(st.sampled_from([None, "", "TCP", "udp", "Sctp"]))
    if protocol is not None:
        rule["protocol"] = protocol
    return rule


policies = st.fixed_dictionaries({"mode": st.sampled_from(["allowlist", "denylist"]),
                                  "rules": st.lists(rules(), max_size=12)})


@given(policies)
@settings(max_examples=400)
def test_canonicalisation_is_idempotent(document: dict[str, object]) -> None:
    first = parse(document)
    assert first.ok, first.errors
    canonical = first.policy.canonical_json()
    second = parse_policy(canonical)
    assert second.ok and second.policy == first.policy
    assert second.policy.canonical_json() == canonical
    # Only the allowlist-opens-everything note survives canonicalisation: it is about meaning, not form.
    assert all("allows all IPv" in warning for warning in second.warnings)


@given(st.text(max_size=200) | st.from_regex(r'\{"mode": ?"(allow|deny)list", ?"rules": ?\[.{0,80}\]\}', fullmatch=True))
@settings(max_examples=500)
def test_never_raises_and_never_half_accepts(text: str) -> None:
    result = parse_policy(text)
    assert (result.policy is None) or result.ok
    assert all(isinstance(error, str) and ": " in error for error in result.errors)


def test_only_small_annotations_are_memoised() -> None:
    """A memo of every annotation up to 64 KiB could be driven past the webhook's memory limit."""
    from sortie_egress.constants import MAX_MEMO_ANNOTATION
    from sortie_egress.policy.model import POLICY_MEMO_ENTRIES, _memoised_parse_policy

    large = json.dumps({"mode": "allowlist", "rules": [{"cidr": f"10.0.{i}.0/24", "port": 443} for i in range(200)]})
    assert len(large) > MAX_MEMO_ANNOTATION
    _memoised_parse_policy.cache_clear()
    assert parse_policy(large).ok and parse_policy(large).ok
    assert _memoised_parse_policy.cache_info().currsize == 0
    small = json.dumps({"mode": "allowlist", "rules": [{"cidr": "10.0.0.0/8"}]})
    assert parse_policy(small) is parse_policy(small)
    info = _memoised_parse_policy.cache_info()
    assert (info.currsize, info.hits, info.maxsize) == (1, 1, POLICY_MEMO_ENTRIES)


@pytest.mark.parametrize(("name", "warned"), [
    ("*.co.uk", True), ("*.github.io", True), ("*.com", True),  # ICANN and private sections of the list
    ("*.example.com", False), ("*.api.example.co.uk", False), ("api.co.uk", False), ("github.io", False),
])
def test_a_wildcard_directly_under_a_public_suffix_is_admitted_with_a_warning(name: str, warned: bool) -> None:
    """CONTRACT §1: anyone can create names under a public suffix, so the rule opens them all."""
    parsed = parse_policy(json.dumps({"mode": "allowlist", "rules": [{"fqdn": name, "port": 443}]}))
    if name == "*.com":
        assert parsed.errors  # refused already: a wildcard needs two or more labels after "*."
        return
    assert not parsed.errors and parsed.policy is not None
    suffix = name[2:]
    expected = (f'rules[0].fqdn: "{name}" is a wildcard directly under the public suffix "{suffix}": anyone can '
                "create names there, and the rule opens them all")
    assert (expected in parsed.warnings) is warned, parsed.warnings
