"""The rule field table (sortie_egress/policy/fields.py) against the contract's schema table.

The contract's table (shared/CONTRACT.md §1, outside this repository, so not read at test time)
is copied below by hand; the field names and types the code declares must be exactly the ones it
lists: a field added to the code and not to the contract (or the copy) fails.
"""

from __future__ import annotations

import re

from sortie_egress.policy.fields import DESTINATIONS, POLICY_FIELDS, RULE_FIELDS, known_fields_text
from sortie_egress.policy.model import parse_policy

#: CONTRACT.md §1's schema table, its first two columns, as of 2026-12-07.
CONTRACT_TABLE = """
| `mode` | string |
| `rules` | array |
| `rules[].cidr` | string |
| `rules[].port` | integer |
| `rules[].end_port` | integer |
| `rules[].protocol` | string |
| `rules[].fqdn` | string |
"""
JSON_TYPES = {"string": str, "integer": int, "array": list}


def _contract_rows() -> dict[str, str]:
    return dict(re.findall(r"^\| `([a-z_\[\].]+)` \| (string|integer|array) \|", CONTRACT_TABLE, re.M))


def test_the_rule_fields_are_the_contracts() -> None:
    rows = _contract_rows()
    rule_rows = {name.removeprefix("rules[]."): kind for name, kind in rows.items() if name.startswith("rules[].")}
    assert rule_rows == {"cidr": "string", "port": "integer", "end_port": "integer", "protocol": "string", "fqdn": "string"}
    assert {field.name: field.type for field in RULE_FIELDS} == {name: JSON_TYPES[kind] for name, kind in rule_rows.items()}
    assert {name for name in rows if "." not in name} == set(POLICY_FIELDS) == {"mode", "rules"}
    assert DESTINATIONS == ("cidr", "fqdn")


def test_an_unknown_field_lists_the_table() -> None:
    assert known_fields_text() == {"policy": "mode, rules", "rule": "cidr or fqdn, port, end_port, protocol"}
    assert parse_policy('{"mode": "allowlist", "rules": [{"cidr": "10.0.0.0/8", "ports": 1}]}').errors == (
        "rules[0].ports: unknown field (a rule has: cidr or fqdn, port, end_port, protocol)",)


def test_problems_come_in_the_tables_order_destination_first() -> None:
    assert parse_policy('{"mode": "allowlist", "rules": [{"protocol": "icmp", "end_port": "9", "port": -1}]}').errors == (
        "rules[0].cidr: is required",
        "rules[0].port: -1 is out of range (0-65535; 0 means all ports)",
        'rules[0].end_port: must be an integer, got "9"',
        'rules[0].protocol: "icmp" is not a protocol (TCP, UDP or SCTP)',
    )
