"""Inclusive integer intervals: address ranges (effective egress) and port ranges (the complement).

Pure. One implementation of the interval maths both judges and renderers rely on: a mistake here
is a hole or an outage in either, so it is tested once, with hand-written cases
(tests/test_effective.py, tests/test_complement.py).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

#: (low, high), both included.
Interval = tuple[int, int]


def network_interval(network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> Interval:
    return int(network.network_address), int(network.broadcast_address)


def merge_intervals(intervals: Iterable[Interval]) -> list[Interval]:
    """Inclusive (low, high) intervals, sorted, with overlapping and adjacent ones joined (addresses
    here, port ranges in policy/complement.py)."""
    merged: list[Interval] = []
    for low, high in sorted(intervals):
        if merged and low <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], high))
        else:
            merged.append((low, high))
    return merged


def subtract(intervals: list[Interval], removed: list[Interval]) -> list[Interval]:
    """What of ``intervals`` none of ``removed`` covers, merged."""
    result = []
    for low, high in intervals:
        pieces = [(low, high)]
        for cut_low, cut_high in removed:
            next_pieces = []
            for piece_low, piece_high in pieces:
                if cut_high < piece_low or cut_low > piece_high:
                    next_pieces.append((piece_low, piece_high))
                    continue
                if piece_low < cut_low:
                    next_pieces.append((piece_low, cut_low - 1))
                if cut_high < piece_high:
                    next_pieces.append((cut_high + 1, piece_high))
            pieces = next_pieces
        result.extend(pieces)
    return merge_intervals(result)


def covers(outer: list[Interval], inner: list[Interval]) -> bool:
    """Whether every value of ``inner`` is in ``outer``."""
    return not subtract(inner, outer)


__all__ = ["Interval", "covers", "merge_intervals", "network_interval", "subtract"]
