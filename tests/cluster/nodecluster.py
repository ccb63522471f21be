"""The whole test cluster with a real node: what the node tests, the start-up bench and
``python -m tests.cluster up --node`` share.

Order matters: the node's address must exist before the API server binds it (pods reach
the API server there, through the `kubernetes` Service), and the node joins a running
control plane. Every host change is recorded in one ledger (host.py) at a fixed path, so
that a later run (or ``down``) finds and undoes what a killed one left.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .binaries import find_binaries
from .harness import ControlPlane
from .host import HostLedger, recorded
from .install import install, write_overlay
from .node import NODE_IP, TestNode
from .targets import start_targets

HERE = Path(__file__).resolve().parent
NODE_ROOT = Path("/var/tmp/sortie-egress-node")
LEDGER = Path("/var/tmp/sortie-egress-node.ledger")  # fixed: a later run finds what a killed one left


class NodeUnavailable(RuntimeError):
    """This machine cannot run the node: not root, a host tool missing, or a part failed to build."""


def _script_output(script: str) -> list[str]:
    result = subprocess.run(["bash", str(HERE / script)], capture_output=True, text=True)
    if result.returncode != 0:
        raise NodeUnavailable(f"bash {HERE / script} failed: {result.stderr.strip()[-600:]}")
    return result.stdout.strip().splitlines()


def node_parts() -> Path:
    """The node's binaries, built (or reused) by build-node.sh."""
    missing = [tool for tool in ("nft", "ipset", "iptables") if shutil.which(tool) is None]
    if os.geteuid() != 0 or missing:
        raise NodeUnavailable(f"the node needs root and {', '.join(missing) or 'its host tools'} "
                              "(scripts/node-host-packages.sh)")
    return Path(_script_output("build-node.sh")[-1])


def cilium_parts() -> Path:
    """Cilium's agent, CNI plugin, operator and BPF sources, built (or reused) by build-cilium.sh;
    the agent compiles its datapath with clang at run time."""
    from .cilium import CLANG_DIR

    if not (CLANG_DIR / "clang").exists():
        raise NodeUnavailable(f"the Cilium node needs clang in {CLANG_DIR} (scripts/node-host-packages.sh: clang-19)")
    return Path(_script_output("build-cilium.sh")[-1])


def product_image() -> tuple[Path, str]:
    """Our image built from ./Dockerfile by build-image.sh: (OCI archive, image name)."""
    archive, name = _script_output("build-image.sh")[-2:]
    return Path(archive), name


@dataclass
class NodeCluster:
    plane: ControlPlane
    node: TestNode
    ledger: HostLedger
    targets: list[subprocess.Popen[bytes]]

    @classmethod
    def start(cls, parts: Path, plane_root: Path, archives: tuple[Path, ...] = (), dataplane: str = "kube-router",
              cilium: Path | None = None) -> NodeCluster:
        """Start everything; on failure, stop what started (the caller undoes the ledger)."""
        ledger = HostLedger(LEDGER)
        node = TestNode(parts, NODE_ROOT, ledger, archives=archives, dataplane=dataplane, cilium_parts=cilium).prepare()
        # The targets' namespace before any pod's: `ip netns add` bind-mounts /run/netns onto itself
        # (recursively) the first time, and would copy the sandboxes' namespace mounts already there,
        # which `ip netns delete` then cannot remove at undo.
        targets = start_targets(ledger, NODE_ROOT, parts / "coredns")
        plane = ControlPlane(find_binaries(build=True), root=plane_root, fake_node=False, address=NODE_IP)
        try:
            plane.start()
            node.start(plane)
        except BaseException:
            _stop_all(node, plane, targets)
            raise
        return cls(plane, node, ledger, targets)

    def stop(self) -> None:
        _stop_all(self.node, self.plane, self.targets)


def _stop_all(node: TestNode, plane: ControlPlane, targets: list[subprocess.Popen[bytes]]) -> None:
    """Each part stopped even if stopping another fails or is interrupted: the control plane is not
    in the host ledger (it lives in the test's folder), so nothing else would stop it."""
    try:
        node.stop()
    finally:
        try:
            plane.stop()
        finally:
            _stop(targets)


def _stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        process.kill()
        process.wait()


@dataclass
class Installed:
    """A node cluster with the probe targets and our product installed from our image."""

    cluster: NodeCluster
    overlay: Path  # the operator's overlay that was applied (for `kubectl delete -k`)
    image: str
    install_seconds: float

    @property
    def plane(self) -> ControlPlane:
        return self.cluster.plane


def start_installed(workdir: Path, before_install: Callable[[NodeCluster], None] | None = None,
                    dataplane: str = "kube-router") -> Installed:
    """The node cluster (with the probe targets) in ``workdir``, then ``kubectl apply -k`` of our
    manifests with our image; on failure, stop what started (the caller undoes the ledger).

    ``before_install`` runs on the bare cluster first (pods that exist before the product does)."""
    parts = node_parts()
    cilium = cilium_parts() if dataplane == "cilium" else None
    archive, image = product_image()
    cluster = NodeCluster.start(parts, workdir / "plane", (archive,), dataplane, cilium)
    try:
        if before_install is not None:
            before_install(cluster)
        overlay = write_overlay(workdir / "overlay", image)
        return Installed(cluster, overlay, image, install(cluster.plane, overlay))
    except BaseException:
        cluster.stop()
        raise


@contextmanager
def installed_cluster(workdir: Path, before_install: Callable[[NodeCluster], None] | None = None,
                      dataplane: str = "kube-router") -> Iterator[Installed]:
    """``start_installed``; afterwards (also on failure or Ctrl-C) the host as it was."""
    with recorded(HostLedger(LEDGER)):
        product = start_installed(workdir, before_install, dataplane)
        try:
            yield product
        finally:
            product.cluster.stop()
