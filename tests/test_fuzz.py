"""A short run of the coverage-guided fuzzer in CI; the documented long run is in docs/testing.md."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(("target", "runs"), [("policy", 30000), ("review", 10000)])
def test_short_fuzz_run_finds_nothing(target: str, runs: int, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "fuzz" / "fuzz_admission.py"), target, f"-runs={runs}", "-seed=1",
         "-print_final_stats=1", str(tmp_path), str(ROOT / "fuzz" / "corpus" / target)],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"stat::number_of_executed_units: {runs}" in result.stderr
