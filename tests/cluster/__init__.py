"""The real control plane for the tests: see harness.py, and ``python -m tests.cluster``."""
