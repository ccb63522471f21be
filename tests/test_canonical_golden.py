"""The canonical form is the pin (issue 23): a golden corpus of annotation texts, their canonical
texts and digests, recorded before anything moved and reviewed by hand. A change here changes what
running sessions are pinned to; it needs a migration, not a regenerated file."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from sortie_egress.controller.plan import policy_digest
from sortie_egress.policy.model import parse_policy

CORPUS = json.loads((Path(__file__).parent / "golden" / "canonical-policies.json").read_text())["policies"]


@pytest.mark.parametrize("entry", CORPUS, ids=[str(index) for index in range(len(CORPUS))])
def test_the_canonical_text_and_digest_are_what_they_were(entry: dict[str, Any]) -> None:
    result = parse_policy(entry["annotation"])
    if entry.get("no_policy"):
        assert result.policy is None and not result.errors
    elif "refused" in entry:
        assert result.policy is None and [str(error) for error in result.errors][:3] == entry["refused"]
    else:
        assert result.canonical == entry["canonical"]
        assert policy_digest(result.canonical) == entry["digest"]
        # The digest is sha256 of the canonical text's UTF-8 bytes, whatever computes it.
        assert entry["digest"] == "sha256:" + hashlib.sha256(entry["canonical"].encode("utf-8")).hexdigest()
        # And the canonical text is a fixed point.
        assert parse_policy(entry["canonical"]).canonical == entry["canonical"]


def test_the_corpus_covers_what_the_canonical_form_decides() -> None:
    """Key order, case, spelling of networks and names, duplicates, both modes, refusals."""
    texts = [entry["annotation"] for entry in CORPUS]
    assert any('"tcp"' in text for text in texts) and any("API.example.com." in text for text in texts)
    assert any("2001:db8:0:0::/32" in text for text in texts) and any('"mode": ""' in text for text in texts)
    assert sum("refused" in entry for entry in CORPUS) >= 1 and len(CORPUS) >= 20
