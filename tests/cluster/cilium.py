"""Cilium as the test node's dataplane (issue 14), in place of the bridge CNI and kube-router.

cilium-agent and cilium-operator-generic run as processes with a kubeconfig, like the node's
other parts; the CNI plugin is cilium-cni. Native routing, Kubernetes IPAM (the Node's
podCIDR), kube-proxy kept (no kube-proxy replacement), BPF only on the node's own link
(``--devices``), never on the machine's interfaces.

What the agent changes on the host, and how each is put back (host.py's ledger):

- ``kernel.unprivileged_bpf_disabled`` is set to 1, which cannot be changed back without a
  reboot: the agent runs in a mount namespace of its own where a plain file is bind-mounted
  over that sysctl, and its bpffs is mounted there too, so its pins go with the namespace;
- the ``lookup local`` ip rule moves from priority 0 to 100 and proxy rules appear: ip rules
  are snapshotted and restored;
- routes in the proxy's tables: routes are snapshotted and new ones removed;
- links ``cilium_host``, ``cilium_net``, ``lxc*``: deleted;
- ``CILIUM_*`` iptables chains: the packet filter is restored whole (it already is);
- sysctls: the ones it writes (found by diffing ``sysctl -a`` around a run) recorded first;
- ``/var/run/cilium``: a hard-coded runtime folder, removed (or its additions) at undo.
"""

from __future__ import annotations

import shlex
import shutil
from pathlib import Path

#: Links the agent creates (``lxc*`` ones, one per pod, go with their pods' namespaces or at undo).
CILIUM_LINKS = ("cilium_host", "cilium_net")
#: Folders the agent and cilium-cni use whatever they are told (the API socket, the CNI's queue).
CILIUM_HOST_PATHS = ("/var/run/cilium",)
#: Host-wide sysctls the agent changed, found by diffing ``sysctl -a`` around a run of the node
#: (Cilium 1.20.2); per-link ones go with their links. ``conf.all.forwarding`` also turns every
#: link's forwarding on and ``accept_redirects`` off: the node's own ``ip_forward`` record,
#: undone last, turns them back.
CILIUM_SYSCTLS = ("kernel.timer_migration", "net.ipv4.conf.all.accept_redirects", "net.ipv4.conf.all.forwarding",
                  "net.ipv4.conf.default.forwarding", "net.ipv4.fib_multipath_use_neigh")
#: clang for the agent's run-time BPF compilation (Debian's clang-19, scripts/node-host-packages.sh).
CLANG_DIR = Path("/usr/lib/llvm-19/bin")
CGROUP2 = Path("/sys/fs/cgroup/unified")
#: The ClusterNetworkPolicy CRD Cilium 1.20 serves (fetch-policy-crds.sh's file name).
CLUSTER_NETWORK_POLICY_CRD = "network-policy-api-v0.2.0-experimental.yaml"


def cni_config() -> dict[str, object]:
    return {"cniVersion": "0.3.1", "name": "cilium", "plugins": [{"type": "cilium-cni"}]}


def agent_argv(parts: Path, root: Path, kubeconfig: Path, device: str, native_cidr: str, health_port: int) -> list[str]:
    """The agent in a mount namespace of its own (see the module's docstring), then exec'd."""
    state = root / "cilium"
    lib = state / "lib"
    if not (lib / "bpf").exists():
        lib.mkdir(parents=True, exist_ok=True)
        shutil.copytree(parts / "bpf", lib / "bpf")
    shadow = state / "unprivileged_bpf_disabled"
    shadow.write_text(Path("/proc/sys/kernel/unprivileged_bpf_disabled").read_text())
    cgroup_root = CGROUP2 if CGROUP2.is_dir() else Path("/sys/fs/cgroup")
    agent = [
        str(parts / "cilium-agent"), f"--k8s-kubeconfig-path={kubeconfig}", f"--lib-dir={lib}",
        "--ipam=kubernetes", "--routing-mode=native", f"--ipv4-native-routing-cidr={native_cidr}",
        "--enable-ipv4=true", "--enable-ipv6=false", "--kube-proxy-replacement=false",
        "--enable-ipv4-masquerade=false", "--enable-bpf-masquerade=false", "--auto-direct-node-routes=false",
        f"--devices={device}", f"--cgroup-root={cgroup_root}", "--bpf-root=/sys/fs/bpf",
        "--enable-l7-proxy=true", "--enable-k8s-cluster-network-policy=true",
        "--enable-health-checking=false", "--enable-endpoint-health-checking=false", "--enable-hubble=false",
        "--enable-gops=false", f"--agent-health-port={health_port}", "--cni-exclusive=false",
        "--identity-allocation-mode=crd", "--cluster-name=default", "--cluster-id=0",
    ]
    script = (f"mount --bind {shlex.quote(str(shadow))} /proc/sys/kernel/unprivileged_bpf_disabled && "
              "mount -t bpf bpf /sys/fs/bpf && exec " + shlex.join(agent))
    return ["unshare", "--mount", "--propagation", "slave", "sh", "-c", script]


def operator_argv(parts: Path, kubeconfig: Path, api_port: int) -> list[str]:
    return [str(parts / "cilium-operator-generic"), f"--k8s-kubeconfig-path={kubeconfig}",
            "--cluster-name=default", "--cluster-id=0", "--enable-k8s-cluster-network-policy=true",
            "--ipam=kubernetes",  # as the agent: its default (cluster-pool) would make it exit once elected
            f"--operator-api-serve-addr=127.0.0.1:{api_port}", "--enable-metrics=false", "--enable-gops=false",
            "--identity-allocation-mode=crd",
            # One operator, on a machine whose two cores the agent's BPF compilation fills at start:
            # a missed renewal must not end it (it exits when it loses the lease).
            "--leader-election-lease-duration=120s", "--leader-election-renew-deadline=90s",
            "--leader-election-retry-period=5s"]


def environment(base: dict[str, str], node_name: str) -> dict[str, str]:
    path = f"{CLANG_DIR}:{base.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}"
    return {**base, "PATH": path, "K8S_NODE_NAME": node_name, "CILIUM_K8S_NAMESPACE": "kube-system"}
