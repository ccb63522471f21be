"""The egress policy model: annotation text in, canonical policy or every error out.

Parsing is strict on purpose. The annotation decides what a session may
reach, so a typo (`rule`, `"port": "443"`, `true`) must be an error with a
JSON path, never a silently different policy. Structure and types are checked
by a strict pydantic model (no coercion, unknown fields forbidden); meaning
(networks, port ranges, protocols) by validators on it, so one pass reports
every problem at once.

The same app policy arrives again and again (one per session of an app), so
results are memoised on the annotation text: they are immutable, and parsing
is most of the cost of an admission.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Discriminator, Tag, ValidationError, ValidationInfo, create_model, field_validator

from sortie_egress.constants import MAX_ANNOTATION_BYTES, MAX_MEMO_ANNOTATION, MAX_RULES
from sortie_egress.policy.public_suffix import is_public_suffix
from sortie_egress.policy.strict_json import JSONInputError, loads_strict
from sortie_egress.policy.destinations import IPNetwork, network_text, parse_fqdn, parse_network
from sortie_egress.policy.fields import DESTINATIONS, TRAFFIC_FIELDS, known_fields_text
from sortie_egress.policy.traffic import PROTOCOLS

Mode = Literal["allowlist", "denylist"]
MODES = ("allowlist", "denylist", "")


@dataclass(frozen=True, slots=True)
class Rule:
    """One normalised rule: a destination named by ``network`` or, on the backends that
    enforce names, by ``fqdn`` (exactly one is set). ``protocol`` None means: TCP and UDP
    when a port is given, all traffic when not (CONTRACT §1)."""

    network: IPNetwork | None
    port: int = 0
    end_port: int | None = None
    protocol: str | None = None
    #: A lower-case DNS name without a trailing dot; ``*.`` first matches one or more labels.
    fqdn: str | None = None

    def canonical(self) -> dict[str, Any]:
        """Only what differs from the defaults, so equal policies print equal. Part of the pin
        (EgressPolicy.canonical_json): never change what this returns for an existing rule."""
        out: dict[str, Any] = {"cidr": network_text(self.network)} if self.network is not None else {"fqdn": self.fqdn}
        if self.end_port is not None:
            out["end_port"] = self.end_port
        if self.port:
            out["port"] = self.port
        if self.protocol:
            out["protocol"] = self.protocol
        return out

    @property
    def opens_whole_family(self) -> bool:
        return self.network is not None and self.network.prefixlen == 0 and self.port == 0


@dataclass(frozen=True, slots=True)
class EgressPolicy:
    mode: Mode
    rules: tuple[Rule, ...] = ()

    @property
    def names_hosts(self) -> bool:
        """Whether a rule names its destination by DNS name: only some backends can enforce that."""
        return any(rule.fqdn is not None for rule in self.rules)

    def canonical_json(self) -> str:
        """Sorted keys and the contract's own spacing: the annotation's fixed point.

        THE PIN. A running session's policy object records the sha256 of this text
        (``sortie.io/policy-digest``, controller/plan.policy_digest) and every pod of the session
        is checked against it; a text that changes for an existing policy across an upgrade makes
        every running session look tampered with (held, or DNS only). Changing it is a migration,
        not a refactor: tests/golden/canonical-policies.json holds texts and digests written before
        anything moved, and tests/test_canonical_golden.py fails on any difference."""
        document = {"mode": self.mode, "rules": [rule.canonical() for rule in self.rules]}
        return json.dumps(document, sort_keys=True)


#: What an invalid annotation is enforced as (fail closed): DNS only.
FAIL_CLOSED_POLICY = EgressPolicy(mode="allowlist", rules=())


@dataclass(frozen=True, slots=True)
class PolicyParse:
    """The outcome of reading one annotation.

    ``policy`` is None both for "no per-app policy" and for an invalid
    annotation; ``errors`` tells them apart.
    """

    policy: EgressPolicy | None = None
    warnings: tuple[str, ...] = ()
    errors: tuple[str, ...] = field(default=())
    #: ``policy.canonical_json()``, computed once with the (memoised) parse.
    canonical: str | None = None

    @property
    def ok(self) -> bool:
        return not self.errors


class _RuleFields(BaseModel):
    """The checks every rule shares. Each kind of rule declares its fields itself, destination
    first, so problems are reported in the order they are written."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    @field_validator("port", check_fields=False)
    @classmethod
    def _port_range(cls, value: int) -> int:
        if not 0 <= value <= 65535:
            raise ValueError(f"{value} is out of range (0-65535; 0 means all ports)")
        return value

    @field_validator("end_port", check_fields=False)
    @classmethod
    def _end_port_range(cls, value: int, info: ValidationInfo) -> int:
        # A field validator (not a model one) so the range is judged even when
        # another field of the rule is wrong: every problem in one answer.
        if not 1 <= value <= 65535:
            raise ValueError(f"{value} is out of range (1-65535)")
        port = info.data.get("port")
        if port == 0:
            raise ValueError("needs a port > 0 to start the range")
        if port is not None and value < port:
            raise ValueError(f"{value} is below port {port}")
        return value

    @field_validator("protocol", check_fields=False)
    @classmethod
    def _known_protocol(cls, value: str) -> str:
        # ASCII only: str.upper() maps "ſctp" (long s) to "SCTP", and a name that is not
        # what it looks like has no business in a security policy.
        if value != "" and (not value.isascii() or value.upper() not in PROTOCOLS):
            raise ValueError(f"{json.dumps(value)} is not a protocol (TCP, UDP or SCTP)")
        return value.upper()


def _checked_network(value: str) -> str:
    parse_network(value)
    return value


def _rule_model(destination: str, check: Any) -> Any:
    """The input model of one kind of rule, from the field table (policy/fields.py): its destination
    first, then the traffic fields, in the table's order (the order problems are reported in)."""
    fields: dict[str, Any] = {destination: (str, ...)}
    for traffic in TRAFFIC_FIELDS:
        fields[traffic.name] = (traffic.type, traffic.default)
    return create_model(f"_{destination.capitalize()}RuleInput", __base__=_RuleFields,
                        __validators__={f"_check_{destination}": field_validator(destination)(check)}, **fields)


_RuleInput = _rule_model("cidr", _checked_network)
_FqdnRuleInput = _rule_model("fqdn", parse_fqdn)
assert DESTINATIONS == ("cidr", "fqdn"), "a new destination needs its kind of rule here and in _rule_kind"


#: Tags of the two kinds of rule; they appear in pydantic's error locations and are taken out.
_RULE_TAGS = ("cidr-rule", "fqdn-rule")


def _rule_kind(value: Any) -> str:
    """A rule with ``fqdn`` and no ``cidr`` names a host; everything else is read as a network rule
    (so a rule with neither is told that cidr is required, and one with both that it has both)."""
    return "fqdn-rule" if isinstance(value, dict) and "fqdn" in value and "cidr" not in value else "cidr-rule"


_AnyRule = Annotated[Union[Annotated[_RuleInput, Tag("cidr-rule")], Annotated[_FqdnRuleInput, Tag("fqdn-rule")]],
                     Discriminator(_rule_kind)]


class _PolicyInput(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    mode: str
    rules: list[_AnyRule] = []

    @field_validator("mode")
    @classmethod
    def _known_mode(cls, value: str) -> str:
        if value not in MODES:
            raise ValueError(f'{json.dumps(value)} is not a mode ("allowlist", "denylist", or "" for none)')
        return value


_KNOWN_FIELDS = known_fields_text()


def _path(loc: tuple[Any, ...]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text or "policy"


def _describe(value: Any) -> str:
    """A short JSON rendering of the offending input, for the message."""
    shown = json.dumps(value, default=str)
    return shown if len(shown) <= 40 else shown[:37] + "..."


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _error_message(error: Any) -> str:
    loc = tuple(part for part in error["loc"] if part not in _RULE_TAGS)
    kind = error["type"]
    value = error.get("input")
    where = _path(loc)
    if kind == "missing":
        return f"{where}: is required"
    if kind == "extra_forbidden" and len(loc) == 3 and loc[2] == "fqdn":  # routed as a network rule: it has a cidr
        return f"{_path(loc[:2])}: has both cidr and fqdn; a rule names its destination by one of them"
    if kind == "extra_forbidden":
        owner = "rule" if len(loc) > 1 else "policy"
        return f"{where}: unknown field (a {owner} has: {_KNOWN_FIELDS[owner]})"
    if kind in ("int_type", "int_parsing"):
        return f"{where}: must be an integer, got {_describe(value)}"
    if kind == "string_type":
        return f"{where}: must be a string, got {_describe(value)}"
    if kind == "list_type":
        return f"{where}: must be an array, got {_json_kind(value)}"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"{where}: must be an object, got {_json_kind(value)}"
    if kind == "value_error":
        return f"{where}: {error['ctx']['error']}"
    return f"{where}: {error['msg']}"


def _errors_of(exc: ValidationError) -> tuple[str, ...]:
    return tuple(_error_message(error) for error in exc.errors(include_url=False))


def _normalise(data: _PolicyInput) -> tuple[EgressPolicy, list[str]]:
    warnings: list[str] = []
    rules: list[Rule] = []
    for index, raw in enumerate(data.rules):
        protocol = raw.protocol or None
        if isinstance(raw, _FqdnRuleInput):
            # Refused in a denylist before this (_parse_policy); canonical already (parse_fqdn).
            if raw.fqdn.startswith("*.") and is_public_suffix(raw.fqdn[2:]):
                warnings.append(f'rules[{index}].fqdn: "{raw.fqdn}" is a wildcard directly under the public suffix '
                                f'"{raw.fqdn[2:]}": anyone can create names there, and the rule opens them all')
            rules.append(Rule(network=None, port=raw.port, end_port=raw.end_port, protocol=protocol, fqdn=raw.fqdn))
            continue
        network, note = parse_network(raw.cidr)
        if note:
            warnings.append(f"rules[{index}].cidr: {note}")
        # A denylist keeps its ports: the backends that can deny a port do (backends/); on
        # NetworkPolicy the whole network is denied, with a warning from backend_warnings.
        rule = Rule(network=network, port=raw.port, end_port=raw.end_port, protocol=protocol)
        if data.mode == "allowlist" and rule.opens_whole_family:
            warnings.append(f"rules[{index}]: {network} on all ports allows all IPv{network.version} egress")
        rules.append(rule)
    mode: Mode = "allowlist" if data.mode == "allowlist" else "denylist"
    return EgressPolicy(mode=mode, rules=tuple(rules)), warnings


POLICY_MEMO_ENTRIES = 512


def parse_policy(annotation: str | None) -> PolicyParse:
    """Read the ``sortie.io/egress-policy`` annotation (CONTRACT §1-2).

    Never raises for any input text: every failure comes back in ``errors``.
    Memoised for annotations up to MAX_MEMO_ANNOTATION characters: a parsed
    policy of that size holds ~40 KiB, so the memo stays near 20 MiB. (It
    memoised every annotation up to 64 KiB before, 2048 of them: a few
    thousand distinct large annotations could have taken the webhook past its
    memory limit.)
    """
    if annotation is not None and len(annotation) > MAX_MEMO_ANNOTATION:
        return _parse_policy(annotation)
    return _memoised_parse_policy(annotation)


def _parse_policy(annotation: str | None) -> PolicyParse:
    if annotation is None or annotation.strip() == "":
        return PolicyParse()
    size = len(annotation.encode("utf-8", "surrogatepass"))
    if size > MAX_ANNOTATION_BYTES:
        return PolicyParse(errors=(f"policy: annotation is {size} bytes; the limit is {MAX_ANNOTATION_BYTES}",))
    try:
        document = loads_strict(annotation)
    except JSONInputError as exc:
        return PolicyParse(errors=(f"policy: not valid JSON: {exc}",))
    if not isinstance(document, dict):
        return PolicyParse(errors=(f"policy: must be a JSON object, got {_json_kind(document)}",))

    warnings: list[str] = []
    rules = document.get("rules")
    if document.get("mode") == "":
        # No per-app policy: the rules are not enforced, so they are not judged either.
        if rules:
            count = len(rules) if isinstance(rules, list) else "the"
            warnings.append(f'mode: "" means no per-app policy; {count} rules ignored, the cluster default applies')
        document = {key: value for key, value in document.items() if key != "rules"}
    elif isinstance(rules, list) and len(rules) > MAX_RULES:
        other_errors: tuple[str, ...] = ()
        try:
            _PolicyInput.model_validate({key: value for key, value in document.items() if key != "rules"})
        except ValidationError as exc:
            other_errors = _errors_of(exc)
        return PolicyParse(errors=(f"rules: {len(rules)} rules; the limit is {MAX_RULES}", *other_errors))

    try:
        data = _PolicyInput.model_validate(document)
    except ValidationError as exc:
        return PolicyParse(errors=_errors_of(exc))
    if data.mode == "":
        return PolicyParse(warnings=tuple(warnings))
    if data.mode == "denylist":
        refused = tuple(f"rules[{index}].fqdn: a denylist cannot name a host by DNS name (names are enforced by "
                        "allowing what a lookup returns, never by denying it); use cidr"
                        for index, raw in enumerate(data.rules) if isinstance(raw, _FqdnRuleInput))
        if refused:
            return PolicyParse(errors=refused)
    policy, notes = _normalise(data)
    return PolicyParse(policy=policy, warnings=tuple(warnings + notes), canonical=policy.canonical_json())


_memoised_parse_policy = lru_cache(maxsize=POLICY_MEMO_ENTRIES)(_parse_policy)
