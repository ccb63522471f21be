"""Where the control-plane binaries come from, in order:

1. ``KUBEBUILDER_ASSETS`` (the envtest convention: users of setup-envtest have it);
2. the build cache that ``build-control-plane.sh`` fills from the Go module proxy;
3. building them now with that script, when the Go toolchain is there.
Otherwise a BinariesMissing error says how to provide them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

KUBERNETES_VERSION = os.environ.get("SORTIE_K8S_VERSION", "v1.37.2")
BUILD_SCRIPT = Path(__file__).with_name("build-control-plane.sh")
REQUIRED = ("etcd", "kube-apiserver")
OPTIONAL = ("kube-controller-manager", "kube-scheduler")

HOW_TO_PROVIDE = (
    "The control-plane tests need etcd, kube-apiserver, kube-controller-manager and kube-scheduler "
    f"({KUBERNETES_VERSION}). Either set KUBEBUILDER_ASSETS to a folder holding them "
    "(setup-envtest's folder works, plus kube-controller-manager and kube-scheduler), or build them "
    f"once with `bash {BUILD_SCRIPT.relative_to(Path.cwd()) if BUILD_SCRIPT.is_relative_to(Path.cwd()) else BUILD_SCRIPT}` "
    "(needs Go; takes minutes on a cold cache)."
)


class BinariesMissing(RuntimeError):
    pass


@dataclass(frozen=True)
class ControlPlaneBinaries:
    folder: Path

    @property
    def etcd(self) -> Path:
        return self.folder / "etcd"

    @property
    def kube_apiserver(self) -> Path:
        return self.folder / "kube-apiserver"

    @property
    def kube_controller_manager(self) -> Path:
        return self.folder / "kube-controller-manager"

    @property
    def kube_scheduler(self) -> Path:
        return self.folder / "kube-scheduler"

    def missing(self) -> list[str]:
        return [name for name in (*REQUIRED, *OPTIONAL) if not os.access(self.folder / name, os.X_OK)]


def cache_folder() -> Path:
    root = os.environ.get("SORTIE_K8S_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "sortie-egress"
    )
    return Path(root) / f"k8s-{KUBERNETES_VERSION}"


def find_binaries(build: bool = True) -> ControlPlaneBinaries:
    assets = os.environ.get("KUBEBUILDER_ASSETS")
    if assets:
        found = ControlPlaneBinaries(Path(assets))
        if not found.missing():
            return found
        # envtest folders have no controller-manager: without the garbage
        # collector the tests cannot prove what they claim, so say so.
        raise BinariesMissing(f"KUBEBUILDER_ASSETS={assets} lacks {', '.join(found.missing())}. {HOW_TO_PROVIDE}")
    cached = ControlPlaneBinaries(cache_folder())
    if not cached.missing() and (cached.folder / ".complete").exists():
        return cached
    if build and shutil.which("go"):
        print(f"building the control plane into {cached.folder} (progress below)", file=sys.__stderr__, flush=True)
        try:
            return ControlPlaneBinaries(run_build_script(BUILD_SCRIPT))
        except BuildFailed as exc:
            raise BinariesMissing(f"building the control plane failed: {exc}. {HOW_TO_PROVIDE}") from None
    raise BinariesMissing(HOW_TO_PROVIDE)


class BuildFailed(RuntimeError):
    pass


def run_build_script(script: Path) -> Path:
    """Run one of tests/cluster/build-*.sh (a warm cache returns at once; a build shows its
    progress on stderr): the folder it prints last. BuildFailed when it fails or prints none."""
    result = subprocess.run(["bash", str(script)], stdout=subprocess.PIPE, stderr=sys.__stderr__, text=True)
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines:
        raise BuildFailed(f"`bash {script}` exited {result.returncode}")
    return Path(lines[-1])
