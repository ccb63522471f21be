"""A real node next to the test control plane: containerd, the kubelet, a CNI bridge, kube-proxy,
kube-router (the NetworkPolicy dataplane) and CoreDNS (cluster DNS, as pods).

Everything lives under one root folder and on links, namespaces and routes this
module creates, each recorded in a HostLedger before it is made (host.py), so
the host is left as it was found, also after a failed or interrupted run. The
node's address, the pod network and every probe target are in TEST_RANGE, on
interfaces made here; a blackhole route for the whole range keeps any of it
from leaving through the machine's own interfaces.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from . import cilium
from .harness import SERVICE_CIDR, Component, ControlPlane, free_port, wait_for
from .host import TEST_RANGE, HostLedger, run
from .images import File, Image, write_archive
from .targets import TARGET_DNS

NODE_NAME = "sortie-node-1"
NODE_LINK = "sortie-node0"
NODE_IP = "198.18.0.1"
BRIDGE = "sortie-cni0"
POD_SUBNET = "198.18.16.0/24"
CGROUP_ROOT = "sortie-node"
#: Paths the kubelet, containerd, the CNI library and iproute2 use whatever they are configured with.
HARD_CODED_PATHS = ("/var/lib/kubelet", "/var/lib/cni", "/var/log/containers", "/var/log/pods", "/run/containerd",
                    "/run/netns", "/run/mount", "/run/nri", "/opt/containerd")
PAUSE_IMAGE = "registry.invalid/sortie/pause:1"
PROBE_IMAGE = "registry.invalid/sortie/probe:1"
COREDNS_IMAGE = "registry.invalid/sortie/coredns:1"
CLUSTER_DNS = "10.96.0.10"  # in SERVICE_CIDR
#: Values kube-proxy may write whatever it is told; recorded so that undo puts them back.
KUBE_PROXY_SYSCTLS = ("net.ipv4.conf.all.route_localnet", "net.netfilter.nf_conntrack_max",
                      "net.netfilter.nf_conntrack_tcp_be_liberal", "net.netfilter.nf_conntrack_tcp_timeout_established",
                      "net.netfilter.nf_conntrack_tcp_timeout_close_wait")
HERE = Path(__file__).resolve().parent
#: The NetworkPolicy dataplanes the node can run: kube-router (iptables/ipset, beside the bridge
#: CNI) or Cilium (eBPF, its own CNI).
DATAPLANES = ("kube-router", "cilium")
#: nftables table that keeps pods' traffic inside the test range whatever their routes say
#: (Cilium gives pods a default route; the bridge CNI's routes already do this).
GUARD_TABLE = "sortie_node_guard"


@dataclass
class TestNode:
    """``prepare()`` the host (the node's address must exist before the API server binds it),
    start the control plane on NODE_IP, then ``start(plane)``."""

    __test__ = False  # a harness, not a test class
    parts: Path  # build-node.sh's folder
    root: Path
    ledger: HostLedger
    #: OCI archives to load besides the node's own images (our image, from build-image.sh).
    archives: tuple[Path, ...] = ()
    plane: ControlPlane | None = None
    components: list[Component] = field(default_factory=list)
    dataplane: str = "kube-router"
    #: build-cilium.sh's folder, for the cilium dataplane.
    cilium_parts: Path | None = None

    def __post_init__(self) -> None:
        if self.dataplane not in DATAPLANES:
            raise ValueError(f"dataplane {self.dataplane!r}: expected one of {', '.join(DATAPLANES)}")
        if self.dataplane == "cilium" and self.cilium_parts is None:
            raise ValueError("the cilium dataplane needs build-cilium.sh's folder (cilium_parts)")

    @property
    def socket(self) -> Path:
        return self.root / "containerd" / "containerd.sock"

    def _env(self) -> dict[str, str]:
        env = {key: value for key, value in os.environ.items() if "proxy" not in key.lower()}
        env["PATH"] = f"{self.parts}:{env.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}"
        return env

    def _start(self, name: str, argv: list[str], port: int = 0, env: dict[str, str] | None = None) -> Component:
        component = Component(name, argv, self.root / "logs" / f"{name}.log", port)
        self.components.append(component)
        component.start(env or self._env())
        return component

    # --- host network --------------------------------------------------------------

    def _network(self) -> None:
        self.ledger.save_packet_filter()
        self.ledger.network_namespaces()
        self.ledger.route("blackhole", TEST_RANGE)
        self.ledger.sysctl("net.ipv4.ip_forward", "1")
        self.ledger.link(NODE_LINK, "type", "bridge")  # no dummy links in this kernel; a bridge with no ports will do
        run("ip", "addr", "add", f"{NODE_IP}/32", "dev", NODE_LINK)
        run("ip", "link", "set", NODE_LINK, "up")
        # Service addresses: kube-proxy rewrites them before routing; one it does not know goes to the
        # port-less bridge and nowhere else. (Not a blackhole: the host's own connections to a
        # ClusterIP, the API server's to our webhook, are routed before kube-proxy's rewrite.)
        self.ledger.route(SERVICE_CIDR, "dev", NODE_LINK)
        if self.dataplane == "cilium":
            self._cilium_host_changes()
        else:
            self.ledger.adopt_link(BRIDGE)  # the CNI bridge plugin creates it; it goes at undo all the same

    def _cilium_host_changes(self) -> None:
        """What the Cilium agent will change, recorded before it can (cilium.py says what and why)."""
        self.ledger.ip_rules()
        self.ledger.routes()
        self.ledger.host_paths(cilium.CILIUM_HOST_PATHS)
        for key in cilium.CILIUM_SYSCTLS:
            path = Path("/proc/sys") / key.replace(".", "/")
            if path.exists():
                self.ledger.sysctl(key, path.read_text().strip())
        for name in cilium.CILIUM_LINKS:
            self.ledger.adopt_link(name)
        self.ledger.links_named("lxc")
        # Pods get a default route from Cilium: forwarded traffic from the pod network may only go
        # to the test range and the Service range (after kube-proxy's rewrite), never elsewhere.
        run("nft", "-f", "-", input=(
            f"table inet {GUARD_TABLE} {{\n chain forward {{\n  type filter hook forward priority -10; policy accept;\n"
            f"  ip saddr {POD_SUBNET} ip daddr != {{ {TEST_RANGE}, {SERVICE_CIDR} }} drop\n }}\n}}\n"))

    # --- containerd -------------------------------------------------------------------

    def _containerd_config(self) -> Path:
        base = self.root / "containerd"
        config = f"""
version = 3
root = "{base / 'root'}"
state = "{base / 'state'}"
[grpc]
  address = "{self.socket}"
[ttrpc]
  address = "{self.socket}.ttrpc"
[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "{PAUSE_IMAGE}"
[plugins."io.containerd.cri.v1.runtime"]
  # root here lacks CAP_SYS_RESOURCE: without this every sandbox fails on oom_score_adj
  restrict_oom_score_adj = true
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["{self.root / 'cni' / 'bin'}"]
    conf_dir = "{self.root / 'cni' / 'net.d'}"
  [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
      BinaryName = "{self.parts / 'runc'}"
      Root = "{base / 'runc'}"
      SystemdCgroup = false
[plugins."io.containerd.internal.v1.opt"]
  path = "{base / 'opt'}"
[plugins."io.containerd.nri.v1.nri"]
  disable = true
"""
        base.mkdir(parents=True, exist_ok=True)
        path = base / "config.toml"
        path.write_text(config)
        return path

    def _cni(self) -> None:
        bin_dir, conf_dir = self.root / "cni" / "bin", self.root / "cni" / "net.d"
        bin_dir.mkdir(parents=True)
        conf_dir.mkdir(parents=True)
        if self.dataplane == "cilium":
            assert self.cilium_parts is not None
            shutil.copy2(self.parts / "loopback", bin_dir / "loopback")
            shutil.copy2(self.cilium_parts / "cilium-cni", bin_dir / "cilium-cni")
            (conf_dir / "05-cilium.conflist").write_text(json.dumps(cilium.cni_config()))
            return
        for plugin in ("bridge", "host-local", "loopback", "portmap"):
            shutil.copy2(self.parts / plugin, bin_dir / plugin)
        (conf_dir / "10-sortie.conflist").write_text(json.dumps({
            "cniVersion": "1.0.0", "name": "sortie-pods",
            "plugins": [{"type": "bridge", "bridge": BRIDGE, "isGateway": True, "ipMasq": False,
                         # Pods get a route to the test range only, through the bridge: nothing else is
                         # reachable from a pod on this node, whatever a policy would allow.
                         "ipam": {"type": "host-local", "ranges": [[{"subnet": POD_SUBNET}]],
                                  "routes": [{"dst": TEST_RANGE}, {"dst": SERVICE_CIDR}],
                                  "dataDir": str(self.root / "cni" / "ipam")}},
                        {"type": "portmap", "capabilities": {"portMappings": True}}]}))

    def _program(self, name: str) -> bytes:
        """One of the small Go programs beside this file (pause, probe), built static."""
        binary = self.root / "images" / name
        binary.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["go", "build", "-trimpath", "-ldflags", "-s -w", "-o", str(binary), "."],
                       cwd=HERE / name, check=True, env={**os.environ, "CGO_ENABLED": "0"}, capture_output=True)
        return binary.read_bytes()

    def _images(self) -> None:
        busybox = Path("/bin/busybox").read_bytes()
        probe_files = {"bin/busybox": File(busybox), "probe": File(self._program("probe"))}
        coredns = {"coredns": File((self.parts / "coredns").read_bytes())}
        archives = list(self.archives)
        for image in (Image(PAUSE_IMAGE, {"pause": File(self._program("pause"))}, ("/pause",)),
                      Image(PROBE_IMAGE, probe_files, ("/bin/busybox",)),
                      Image(COREDNS_IMAGE, coredns, ("/coredns",))):
            archives.append(write_archive(image, self.root / "images" / (image.name.rsplit("/", 1)[1].replace(":", "-") + ".tar")))
        for archive in archives:
            run(str(self.parts / "ctr"), "--address", str(self.socket), "-n", "k8s.io", "images", "import",
                "--no-unpack", str(archive))

    # --- kubelet -------------------------------------------------------------------------

    def _kubelet(self) -> None:
        base = self.root / "kubelet"
        base.mkdir(parents=True)
        assert self.plane is not None
        kubeconfig = self.plane.kubeconfig_for("kubelet", self.plane.credentials_for_user(f"system:node:{NODE_NAME}",
                                                                                           ("system:masters",)))
        (base / "resolv.conf").write_text("")  # no upstream resolver: nothing leaves for the outside
        port, healthz = free_port(), free_port()
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
            "cgroupDriver": "cgroupfs", "failCgroupV1": False, "cgroupRoot": f"/{CGROUP_ROOT}",
            "cgroupsPerQOS": True, "enforceNodeAllocatable": [],
            "containerRuntimeEndpoint": f"unix://{self.socket}",
            "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": False},
                               "x509": {"clientCAFile": str(self.plane.ca_file)}},
            "authorization": {"mode": "AlwaysAllow"},
            "address": NODE_IP, "port": port, "readOnlyPort": 0, "healthzBindAddress": "127.0.0.1", "healthzPort": healthz,
            "failSwapOn": False, "resolvConf": str(base / "resolv.conf"), "podLogsDir": str(base / "pod-logs"),
            "clusterDomain": "cluster.local", "clusterDNS": [CLUSTER_DNS],
            "evictionHard": {}, "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
            "serializeImagePulls": False, "localStorageCapacityIsolation": False,
            "protectKernelDefaults": False, "makeIPTablesUtilChains": False,
        }
        (base / "config.yaml").write_text(yaml.safe_dump(config))
        self.ledger.cgroup(CGROUP_ROOT)
        self._start("kubelet", [str(self.parts / "kubelet"), f"--config={base / 'config.yaml'}",
                                f"--kubeconfig={kubeconfig}", f"--root-dir={base / 'root'}",
                                f"--cert-dir={base / 'pki'}", f"--node-ip={NODE_IP}", f"--hostname-override={NODE_NAME}",
                                "--v=1"], healthz)

    def _kubeconfig(self, name: str) -> Path:
        """Credentials for a node component, under the node's root: its undo finds the process by the path."""
        assert self.plane is not None
        credentials = self.plane.credentials_for_user(name, ("system:masters",))
        kubeconfig = self.root / f"{name}.kubeconfig"
        kubeconfig.write_text(yaml.safe_dump(credentials.kubeconfig(name)))
        return kubeconfig

    def _kube_proxy(self) -> None:
        """Services (iptables mode): the `kubernetes` Service for our pods, cluster DNS, our webhook's
        Service for the API server. Node ports only on the node's address; conntrack left as it is."""
        for key in KUBE_PROXY_SYSCTLS:
            path = Path("/proc/sys") / key.replace(".", "/")
            if path.exists():
                self.ledger.sysctl(key, path.read_text().strip())  # recorded as it is, restored at undo
        health, metrics = free_port(), free_port()
        config = {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration",
            "mode": "iptables", "clientConnection": {"kubeconfig": str(self._kubeconfig("kube-proxy"))},
            "hostnameOverride": NODE_NAME, "bindAddress": NODE_IP, "clusterCIDR": POD_SUBNET,
            "healthzBindAddress": f"127.0.0.1:{health}", "metricsBindAddress": f"127.0.0.1:{metrics}",
            "nodePortAddresses": [f"{NODE_IP}/32"],
            "iptables": {"localhostNodePorts": False, "masqueradeAll": False},
            "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
        }
        path = self.root / "kube-proxy.yaml"
        path.write_text(yaml.safe_dump(config))
        self._start("kube-proxy", [str(self.parts / "kube-proxy"), f"--config={path}", "--v=1"], health)

    def _coredns(self) -> None:
        """CoreDNS as cluster DNS, as pods labelled like everyone's (k8s-app: kube-dns, kube-system), so
        the `cluster` DNS rule meets real lookups. No upstream: a name outside the cluster fails here."""
        assert self.plane is not None
        manifest = (HERE / "coredns.yaml").read_text().replace("COREDNS_IMAGE", COREDNS_IMAGE).replace(
            "CLUSTER_DNS", CLUSTER_DNS).replace("TARGET_DNS", TARGET_DNS)
        result = self.plane.kubectl("apply", "-f", "-", input=manifest)
        if result.returncode != 0:
            raise RuntimeError(f"CoreDNS could not be installed: {result.stderr}")

    def coredns_ready(self) -> bool:
        assert self.plane is not None
        result = self.plane.kubectl("-n", "kube-system", "get", "deployment", "coredns", "-o",
                                    "jsonpath={.status.readyReplicas}")
        return result.returncode == 0 and result.stdout.strip() not in ("", "0")

    def _kube_router(self) -> None:
        kubeconfig = self._kubeconfig("kube-router")
        health = free_port()
        self._start("kube-router", [str(self.parts / "kube-router"), f"--kubeconfig={kubeconfig}",
                                    "--run-firewall=true", "--run-router=false", "--run-service-proxy=false",
                                    f"--hostname-override={NODE_NAME}", f"--health-port={health}", "--metrics-port=0",
                                    "--v=1"], health)

    def _cilium(self) -> None:
        """Operator, then agent (Kubernetes IPAM: the Node gets its podCIDR first); ready when the
        agent's health endpoint says so, which it does once its datapath is compiled and loaded."""
        assert self.plane is not None and self.cilium_parts is not None
        patch = json.dumps({"spec": {"podCIDR": POD_SUBNET, "podCIDRs": [POD_SUBNET]}})
        result = self.plane.kubectl("patch", "node", NODE_NAME, "--type=merge", "-p", patch)
        if result.returncode != 0:
            raise RuntimeError(f"could not give {NODE_NAME} its podCIDR: {result.stderr}")
        # ClusterNetworkPolicy as Cilium 1.20 implements it (v1alpha2, network-policy-api v0.2.0's
        # experimental channel, for domainNames): nobody installs it for you.
        crds = subprocess.run(["bash", str(HERE / "fetch-policy-crds.sh")], capture_output=True, text=True, check=True)
        crd = Path(crds.stdout.strip().splitlines()[-1]) / cilium.CLUSTER_NETWORK_POLICY_CRD
        result = self.plane.kubectl("apply", "--server-side", "-f", str(crd))
        if result.returncode != 0:
            raise RuntimeError(f"could not install {crd.name}: {result.stderr}")
        kubeconfig = self._kubeconfig("cilium")
        env = cilium.environment(self._env(), NODE_NAME)
        self._start("cilium-operator", cilium.operator_argv(self.cilium_parts, kubeconfig, free_port()), env=env)
        health = free_port()
        agent = self._start("cilium-agent", cilium.agent_argv(self.cilium_parts, self.root, kubeconfig, NODE_LINK,
                                                              TEST_RANGE, health), health, env=env)
        deadline = time.monotonic() + 180
        while not _answers_ok(f"http://127.0.0.1:{health}/healthz"):
            # Not wait_for: it retries a failing condition until its time-out, and a component that
            # exited (the operator exits when it cannot start) must fail the start at once.
            for component in self.components:
                if not component.alive():
                    raise RuntimeError(f"{component.name} exited; log {component.log_path}:\n{component.log_tail(40)}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the Cilium agent was not healthy after 180 s; log {agent.log_path}:\n"
                                   f"{agent.log_tail(40)}")
            time.sleep(0.2)

    # --- lifecycle -------------------------------------------------------------------------

    def prepare(self) -> TestNode:
        """The host side: state folders and the node's network, before the control plane binds NODE_IP."""
        self.ledger.host_paths(HARD_CODED_PATHS)
        self.ledger.folder(self.root)
        self.ledger.processes(str(self.root))
        (self.root / "logs").mkdir()
        self._network()
        return self

    def start(self, plane: ControlPlane) -> TestNode:
        if plane.address != NODE_IP:
            raise ValueError(f"the control plane must listen on the node's address {NODE_IP} (pods reach it there)")
        self.plane = plane
        self._cni()
        self._start("containerd", [str(self.parts / "containerd"), "--config", str(self._containerd_config())])
        wait_for(lambda: self.socket.exists() and run(str(self.parts / "ctr"), "--address", str(self.socket),
                                                      "version", check=False).returncode == 0, 30, "containerd")
        self._images()
        self._kubelet()
        wait_for(lambda: self._node_ready(), 60, f"Node {NODE_NAME} Ready")
        self._kube_proxy()
        if self.dataplane == "cilium":
            self._cilium()
        else:
            self._kube_router()
        self._coredns()
        wait_for(self.coredns_ready, 90, "CoreDNS Ready")
        return self

    def _node_ready(self) -> bool:
        for component in self.components:
            if not component.alive():
                raise RuntimeError(f"{component.name} exited; log {component.log_path}:\n{component.log_tail()}")
        assert self.plane is not None
        result = self.plane.kubectl("get", "node", NODE_NAME, "-o", "json")
        if result.returncode != 0:
            return False
        conditions = json.loads(result.stdout)["status"].get("conditions", [])
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

    def stop(self) -> None:
        """Stop kube-router, the kubelet and containerd; then kill whatever containers remain."""
        for component in reversed(self.components):
            component.stop()


def _answers_ok(url: str) -> bool:
    """GET ``url`` on loopback (no proxy): 200 or not."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=2) as response:
            return response.status == 200
    except (OSError, urllib.error.URLError):
        return False
