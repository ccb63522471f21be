"""What every command shares: errors a user can fix, reading a manifest, printing, flag types."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from sortie_egress.render.session import DnsDestination

DEFAULT_CERT_DIR = Path("certs")


# `serve` with no certificate regenerates local ones that are this close to expiry.
LOCAL_CERT_MIN_VALIDITY = dt.timedelta(days=7)


class CommandError(Exception):
    """A failure the user can fix; printed as one line, exit status 2."""


def dns_flag(text: str) -> DnsDestination:
    try:
        return DnsDestination.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def load_manifest(source: str) -> dict[str, Any]:
    """One Pod manifest from a YAML or JSON file, or stdin for ``-``."""
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
    except OSError as exc:
        raise CommandError(f"cannot read {source}: {exc.strerror or exc}") from None
    try:
        documents = [doc for doc in yaml.safe_load_all(text) if doc is not None]
    except yaml.YAMLError as exc:
        raise CommandError(f"{source} is not YAML or JSON: {exc}") from None
    if len(documents) != 1:
        raise CommandError(f"{source} must hold exactly one manifest, found {len(documents)}")
    manifest = documents[0]
    if not isinstance(manifest, dict) or manifest.get("kind") != "Pod":
        kind = manifest.get("kind") if isinstance(manifest, dict) else type(manifest).__name__
        raise CommandError(f"{source} must be a Pod manifest (kind: Pod), found {kind!r}")
    return manifest


def dump(document: Any, output: str) -> str:
    if output == "json":
        return json.dumps(document, indent=2) + "\n"
    return yaml.safe_dump(document, sort_keys=False, default_flow_style=False)


def warn(lines: Sequence[str]) -> None:
    for line in lines:
        print(f"warning: {line}", file=sys.stderr)


def duration_flag(text: str) -> dt.timedelta:
    """90, 90s, 15m, 12h, 30d."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    number, unit = (text[:-1], text[-1]) if text and text[-1] in units else (text, "s")
    try:
        value = float(number)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration (e.g. 90s, 15m, 12h, 30d)") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("a duration must be positive")
    return dt.timedelta(seconds=value * units[unit])


def positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r}: seconds must be a positive, finite number")
    return value
