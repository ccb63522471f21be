"""JSON decoding for untrusted annotation text.

The annotation is written by whoever creates the pod, so it is parsed the way
a hostile input deserves: duplicate keys (which parsers resolve differently,
a classic smuggling trick), NaN/Infinity (not JSON) and absurd numbers are
refused with a message, and nesting is bounded before the parser recurses.
"""

import json
import re
from typing import Any

MAX_DEPTH = 32
MAX_INT_DIGITS = 20


class JSONInputError(ValueError):
    """The text is not acceptable JSON; the message says why, for a human."""


def _reject_constant(name: str) -> Any:
    raise JSONInputError(f"{name} is not valid JSON")


def _parse_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise JSONInputError(f"number {text[:24]}... is too large")
    return int(text)


def _parse_float(text: str) -> float:
    # Floats are kept (the model rejects them with a path), but a
    # float that overflows to inf would sneak Infinity back in.
    if len(text) > 64:
        raise JSONInputError(f"number {text[:24]}... is too long")
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise JSONInputError(f"number {text[:24]} is out of range")
    return value


def _object_without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise JSONInputError(f"duplicate key {json.dumps(key)}")
        result[key] = value
    return result


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")


def nesting_depth_exceeds(text: str, limit: int) -> bool:
    """Bound nesting before the recursive parser sees a bomb.

    Strings are blanked (brackets inside them do not nest), then innermost
    pairs are peeled a layer at a time: each pass is one C-speed replace, and
    at most ``limit`` passes run, so the check is linear even for 64 KiB of
    brackets. Unbalanced leftovers are the parser's to report. Text with at
    most ``limit`` opening brackets in all (every real policy of a few
    rules) cannot nest deeper, and is passed by two counts.
    """
    if text.count("[") + text.count("{") <= limit:
        return False  # no deeper than its number of opening brackets, quoted or not: no scan needed
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", text))
    for _ in range(limit):
        peeled = brackets.replace("[]", "").replace("{}", "")
        if peeled == brackets:
            return False
        brackets = peeled
    return brackets.replace("[]", "").replace("{}", "") != brackets


_decoder = json.JSONDecoder(
    object_pairs_hook=_object_without_duplicates,
    parse_constant=_reject_constant,
    parse_int=_parse_int,
    parse_float=_parse_float,
)


def loads_strict(text: str) -> Any:
    """Parse one JSON document or raise JSONInputError with a readable reason."""
    if nesting_depth_exceeds(text, MAX_DEPTH):
        raise JSONInputError(f"nested deeper than {MAX_DEPTH} levels")
    try:
        return _decoder.decode(text)
    except JSONInputError:
        raise
    except json.JSONDecodeError as exc:
        raise JSONInputError(f"{exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:  # unbalanced brackets slip past the peel; the parser's guard catches them
        raise JSONInputError(f"nested deeper than {MAX_DEPTH} levels") from None
    except ValueError as exc:  # the interpreter's own integer digit limit, and the like
        raise JSONInputError(str(exc) or "not valid JSON") from None
