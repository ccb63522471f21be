"""The rule vocabulary's fields, declared once (CONTRACT §1's schema table).

Everything that knows a rule's fields reads this table: the input models that validate an
annotation (policy/model.py builds them from it, in this order, which is the order problems are
reported in), the "unknown field" message, the canonical form's keys, the fuzzers' keys, and a
test that holds the contract's table against it (tests/test_policy_fields.py). Adding a field is
a line here, its validation and normalisation in model.py, and what each backend does with it.
Pure.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

#: A field a rule must carry (its destination: exactly one of them).
REQUIRED: Final = ...


@dataclass(frozen=True, slots=True)
class Field:
    name: str
    #: The JSON type, as Python reads it (strict: no coercion).
    type: type
    #: What absent means; REQUIRED for a destination. ``None`` for an integer: absent is fine, and
    #: ``null`` is still refused (not an integer).
    default: Any
    #: Names where the traffic goes (a rule has exactly one destination field).
    destination: bool = False


#: Destinations first (each kind of rule declares its own), then what a rule carries besides.
RULE_FIELDS: Final = (
    Field("cidr", str, REQUIRED, destination=True),
    Field("fqdn", str, REQUIRED, destination=True),
    Field("port", int, 0),
    Field("end_port", int, None),
    Field("protocol", str, ""),
)
#: The policy's own fields.
POLICY_FIELDS: Final = ("mode", "rules")

DESTINATIONS: Final = tuple(field.name for field in RULE_FIELDS if field.destination)
TRAFFIC_FIELDS: Final = tuple(field for field in RULE_FIELDS if not field.destination)


def known_fields_text() -> dict[str, str]:
    """What an "unknown field" message lists, for a policy and for a rule."""
    return {"policy": ", ".join(POLICY_FIELDS),
            "rule": " or ".join(DESTINATIONS) + ", " + ", ".join(field.name for field in TRAFFIC_FIELDS)}


__all__ = ["DESTINATIONS", "Field", "POLICY_FIELDS", "REQUIRED", "RULE_FIELDS", "TRAFFIC_FIELDS", "known_fields_text"]
