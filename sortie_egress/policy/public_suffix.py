"""Whether a name is a public suffix (``co.uk``, ``github.io``): anyone can register names under one.

A wildcard ``fqdn`` rule directly under a public suffix (``*.co.uk``, ``*.github.io``) opens
every site that anyone creates there, which is seldom what the app's author meant (CONTRACT §1:
admitted, with a warning). The list is the Public Suffix List as the ``publicsuffixlist``
package ships it (ICANN and private sections: ``github.io`` is in the private one), loaded once,
on the first wildcard, so a process that never sees one never pays for it.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any


@lru_cache(maxsize=1)
def _list() -> Any:
    from publicsuffixlist import PublicSuffixList

    return PublicSuffixList()


@lru_cache(maxsize=4096)
def is_public_suffix(name: str) -> bool:
    """``name`` (lower-case, no root dot) is itself a public suffix."""
    return bool(_list().is_public(name))


__all__ = ["is_public_suffix"]
