"""Helm 3 and Helm 4, and the real CRDs of the chart's optional objects, from the cache that
``build-helm.sh`` fills from the Go module proxy (building them on first use when Go is there).
Otherwise HelmMissing says how to get them."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .binaries import BuildFailed, run_build_script

BUILD_SCRIPT = Path(__file__).with_name("build-helm.sh")


class HelmMissing(RuntimeError):
    pass


@dataclass(frozen=True)
class HelmTools:
    folder: Path

    @property
    def helm3(self) -> Path:
        return self.folder / "helm3"

    @property
    def helm4(self) -> Path:
        return self.folder / "helm4"

    def by_major(self) -> dict[str, Path]:
        return {"helm3": self.helm3, "helm4": self.helm4}

    @property
    def crds(self) -> list[Path]:
        """cert-manager's CRDs and the ServiceMonitor CRD, as their projects publish them."""
        return sorted(self.folder.glob("crds-*/*.yaml"))


def find_helm() -> HelmTools:
    """The cached tools (the script exits at once when they are there), else a build now."""
    try:
        tools = HelmTools(run_build_script(BUILD_SCRIPT))
    except BuildFailed as exc:
        raise HelmMissing(f"building helm failed: {exc}") from None
    missing = [str(path) for path in (tools.helm3, tools.helm4) if not os.access(path, os.X_OK)]
    if missing or not tools.crds:
        raise HelmMissing(f"{BUILD_SCRIPT} finished but left no {', '.join(missing) or 'CRDs'}")
    return tools
