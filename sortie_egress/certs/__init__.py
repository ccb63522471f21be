"""Certificates: a private CA and serving pairs (``authority``), and what self-managed Secrets
should hold next (``rotation``). Pure; the loop that writes them is controller/certificates."""
