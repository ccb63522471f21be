"""Compatibility only: the package is ``sortie_egress`` (issue 23). Kept for one release so that
session pods whose injected wait runs ``python -m webhook.wait`` keep starting; nothing else lives
here, and it goes in the release after the webhook injects ``python -m sortie_egress.wait``."""
