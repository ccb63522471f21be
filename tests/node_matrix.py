"""The reachability matrix on packets, shared by the node tests of both dataplanes (kube-router,
Cilium) and every backend: the pods of a table, what each may reach written out by hand, and
the probes (TCP connections and UDP echoes to the targets, a name through cluster DNS).

Namespaces are logical names (``default``, ``baseline``, ``sortie-chart``, ``widening``) with a
per-round tag, so that rounds of several backends on one cluster never share a namespace, and
so never each other's policies.
"""

from __future__ import annotations

import json
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sortie_egress import backends
from tests.cluster.harness import ControlPlane, wait_for
from tests.cluster.node import NODE_IP, PROBE_IMAGE
from tests.cluster.targets import PORTS, TARGET_A, TARGET_B, UDP_PORT

CELLS = [("tcp", target, port) for target in (TARGET_A, TARGET_B) for port in PORTS] + [
    ("udp", target, UDP_PORT) for target in (TARGET_A, TARGET_B)]
DNS = ("dns", "kubernetes.default.svc.cluster.local", 53)  # a lookup through cluster DNS (CoreDNS pods)
#: Inside the cluster (issue 22): a pod in a namespace of its own with no policy, listening on TCP
#: 8080 (no baseline or chart policy opens that port), reached by its own address and through its
#: Service's ClusterIP. Symbolic here; probe() looks the addresses up.
IN_CLUSTER_NAMESPACE, IN_CLUSTER_TARGET, IN_CLUSTER_PORT = "in-cluster", "in-cluster-target", 8080
IN_CLUSTER = {("tcp", f"pod:{IN_CLUSTER_TARGET}", IN_CLUSTER_PORT), ("tcp", f"service:{IN_CLUSTER_TARGET}", IN_CLUSTER_PORT)}
#: The node's own address (issue 22): the kubelet's port on NODE_IP, where the test node also
#: serves the API server. Symbolic here (the kubelet's port is chosen at start); probe() reads it.
NODE = ("tcp", "node:kubelet", 0)
COLUMNS = CELLS + [DNS] + sorted(IN_CLUSTER) + [NODE]
Cell = tuple[str, str, int]
EVERYTHING = set(COLUMNS)
WEB = {("tcp", target, port) for target in (TARGET_A, TARGET_B) for port in (80, 443)}
OUTSIDE_DNS = {("udp", TARGET_A, UDP_PORT), ("udp", TARGET_B, UDP_PORT)}
# Expectations are keyed by what a backend declares (sortie_egress/backends/), never by its name.
BACKENDS = tuple(backend.name for backend in backends.in_docs_order())
#: A denylist's ports are denied exactly.
EXACT_BACKENDS = backends.with_capability(backends.EXACT)
#: The session's own policy sits among the NetworkPolicies (no Admin tier before them): on Cilium,
#: what a denylist leaves allowed is by address, and Cilium matches none of its endpoints by CIDR.
AMONG_NETWORKPOLICIES = tuple(name for name in BACKENDS
                              if not backends.get(name).has(backends.UNWIDENABLE_BY_NETWORKPOLICY))

INVALID_ANNOTATION = '{"mode": "allowlist", "rule": []}'  # `rule`: a typo the webhook would refuse
ALLOW_443 = {"mode": "allowlist", "rules": [{"cidr": f"{TARGET_A}/32", "port": 443, "protocol": "TCP"}]}
DENY_A_443 = {"mode": "denylist", "rules": [{"cidr": f"{TARGET_A}/32", "port": 443, "protocol": "TCP"}]}
SESSION = {"app.kubernetes.io/component": "session"}  # what Sortie's chart selects

# What Sortie's own Helm chart installs next to its sessions (CONTRACT §4).
SORTIE_CHART_DEFAULT = {
    "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
    "metadata": {"name": "sortie-session-isolation"},
    "spec": {"podSelector": {"matchLabels": SESSION}, "policyTypes": ["Egress"],
             "egress": [{"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}],
                         "ports": [{"protocol": "TCP", "port": 80}, {"protocol": "TCP", "port": 443}]}]},
}
# A namespace admin's "let everything out" beside the sessions: every pod, every destination.
ALLOW_ALL = {
    "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "allow-all-egress"},
    "spec": {"podSelector": {}, "policyTypes": ["Egress"], "egress": [{}]},
}


# The same, as a Cilium namespace admin writes it: every pod, every identity.
ALLOW_ALL_CILIUM = {
    "apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy", "metadata": {"name": "allow-all-egress-cilium"},
    "spec": {"endpointSelector": {}, "egress": [{"toEntities": ["all"]}]},
}


#: A row's expectation when the session is held at its injected wait and never runs: the canary's
#: closed port stays reachable because another policy widens the session (fail closed, CONTRACT §6).
HELD = None


@dataclass(frozen=True)
class Row:
    """A pod and what it may reach: ``reach`` for every backend unless ``per_backend`` says
    otherwise. Every other cell must be blocked."""

    namespace: str  # logical: see ns()
    pod: str
    policy: dict[str, Any] | str | None
    labels: dict[str, str]
    reach: set[Cell] | None
    #: Keyed by backend, or by ``<dataplane>/<backend>`` where the dataplane decides (that first).
    per_backend: dict[str, set[Cell] | None] = field(default_factory=dict)
    #: Created before the product is installed (only where a round has that moment).
    before_install: bool = False

    def expected(self, backend: str, dataplane: str = "kube-router") -> set[Cell] | None:
        return self.per_backend.get(f"{dataplane}/{backend}", self.per_backend.get(backend, self.reach))


def _everything_but(cells: set[Cell]) -> set[Cell]:
    return EVERYTHING - cells


TABLE: list[Row] = [
    # No other policy in the namespace: the session's own policy is all there is.
    Row("default", "plain", None, {}, EVERYTHING),
    # An allowlist never reaches the node. On Cilium with the clusternetworkpolicy backend that takes
    # the node guard (sortie_egress/guards/node_guard.py): the final Admin-tier Deny does not match a node there,
    # and no NetworkPolicy selects these sessions, so before the guard (session 11) every one of
    # them reached its node's kubelet.
    Row("default", "allow-443", ALLOW_443, {}, {("tcp", TARGET_A, 443), DNS}),
    Row("default", "allow-range", {"mode": "allowlist", "rules": [{"cidr": f"{TARGET_B}/32", "port": 443, "end_port": 8443}]},
        {}, {("tcp", TARGET_B, 443), ("tcp", TARGET_B, 8443), DNS}),
    Row("default", "allow-udp", {"mode": "allowlist", "rules": [{"cidr": f"{TARGET_A}/32", "port": 53, "protocol": "UDP"}]},
        {}, {("udp", TARGET_A, 53), DNS}),
    # 198.18.1.0/24 holds the targets, not the node (198.18.0.1): its kubelet stays closed.
    Row("default", "allow-no-port", {"mode": "allowlist", "rules": [{"cidr": "198.18.1.0/24"}]}, {},
        EVERYTHING - IN_CLUSTER - {NODE}),
    # A denylist allows "everything else" by address (0.0.0.0/0 but the denied): kube-router
    # matches pods by address, Cilium does not match its own endpoints by CIDR, so on Cilium the
    # cluster's pods stay closed to a denylist session unless it is on clusternetworkpolicy (whose
    # Admin tier passes what it does not match on to NetworkPolicies, and none selects it here).
    # Fail closed: less than the denylist promises, never more.
    Row("default", "deny-a", {"mode": "denylist", "rules": [{"cidr": f"{TARGET_A}/32"}]}, {},
        {cell for cell in COLUMNS if cell[1] != TARGET_A},
        {f"cilium/{backend}": {cell for cell in COLUMNS if cell[1] != TARGET_A} - IN_CLUSTER - {NODE}
         for backend in AMONG_NETWORKPOLICIES}),
    # A denylist with a port: a NetworkPolicy can only deny the whole network (with a warning);
    # the exact backends deny that one port and nothing else.
    Row("default", "deny-a-443", DENY_A_443, {}, {cell for cell in COLUMNS if cell[1] != TARGET_A},
        {**{backend: _everything_but({("tcp", TARGET_A, 443)}) for backend in EXACT_BACKENDS},
         **{f"cilium/{backend}": _everything_but({("tcp", TARGET_A, 443), NODE} | IN_CLUSTER)
            if backend in EXACT_BACKENDS else {cell for cell in COLUMNS if cell[1] != TARGET_A} - IN_CLUSTER - {NODE}
            for backend in AMONG_NETWORKPOLICIES}}),
    Row("default", "empty-allowlist", {"mode": "allowlist", "rules": []}, {}, {DNS}),
    # Created before the product was installed, with an annotation admission would refuse:
    # the controller backfills it with a DNS-only policy (CONTRACT §3).
    Row("default", "fail-closed", INVALID_ANNOTATION, {}, {DNS}, before_install=True),
    # Our baseline (manifests/components/baseline): plain pods keep DNS and HTTP/HTTPS anywhere
    # (port 53 anywhere too: the cluster default has no `to`), session pods get DNS only from it.
    Row("baseline", "baseline-plain", None, {}, WEB | OUTSIDE_DNS | {DNS}),
    Row("baseline", "baseline-allow-443", ALLOW_443, {}, {("tcp", TARGET_A, 443), DNS}),
    # A pod without a policy that carries a running session's id (CONTRACT §7, "joining"): the
    # session's policy does not select it, so it gets a plain pod's egress, not the session's
    # TCP 8443 (which the baseline gives no plain pod).
    Row("baseline", "baseline-allow-8443", {"mode": "allowlist", "rules": [{"cidr": f"{TARGET_B}/32", "port": 8443}]}, {},
        {("tcp", TARGET_B, 8443), DNS}),
    Row("baseline", "baseline-joiner", None, {"sortie.io/session-id": "baseline-allow-8443"}, WEB | OUTSIDE_DNS | {DNS}),
    # Sortie's chart default: it widens every session it selects to TCP 80/443 anywhere, and it
    # allows no DNS, so its own sessions cannot look anything up. On networkpolicy the controller
    # flags it; the exact backends keep the session's own policy whatever it says.
    Row("sortie-chart", "chart-plain", None, {}, EVERYTHING),
    Row("sortie-chart", "chart-session", None, SESSION, WEB),
    Row("sortie-chart", "chart-allow-443", ALLOW_443, SESSION, WEB | {DNS},
        {backend: {("tcp", TARGET_A, 443), DNS} for backend in EXACT_BACKENDS}),
    # A namespace admin's allow-all NetworkPolicy beside the sessions (and on Cilium an allow-all
    # CiliumNetworkPolicy too): on networkpolicy it widens the session to everything, the canary's
    # closed port included, so the injected wait never sees its policy enforced and holds the
    # session (reported as widened); on the exact backends the session's own policy stands, the
    # canary's closed port and the cluster's pods included (an allowlist denies every pod but DNS
    # and the canary; a denylist leaves them to the allow-all, as it promises).
    # The node stays closed to the allowlist: the node guard's deny wins over the allow-all (before
    # it, the allow-all opened the session's node on both exact backends).
    Row("widening", "widened-allow-443", ALLOW_443, {}, HELD,
        {backend: {("tcp", TARGET_A, 443), DNS} for backend in EXACT_BACKENDS}),
    Row("widening", "widened-deny-a-443", DENY_A_443, {}, HELD,
        {backend: _everything_but({("tcp", TARGET_A, 443)}) for backend in EXACT_BACKENDS}),
    # Beside it, a pod of no session: the allow-all policy's own effect, so "held" above is
    # never just "the namespace is broken".
    Row("widening", "widening-plain", None, {}, EVERYTHING),
]


def ns(logical: str, tag: str) -> str:
    """A round's namespace: the logical name itself for the untagged round."""
    if not tag:
        return logical
    return f"{logical}-{tag}"


def pod_manifest(namespace: str, name: str, policy: dict[str, Any] | str | None,
                 labels: dict[str, str] | None = None) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "namespace": namespace, "labels": dict(labels or {})}
    if policy is not None:
        metadata["labels"]["sortie.io/session-id"] = name
        metadata["annotations"] = {"sortie.io/egress-policy": policy if isinstance(policy, str) else json.dumps(policy)}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata,
            "spec": {"containers": [{"name": "probe", "image": PROBE_IMAGE, "imagePullPolicy": "Never",
                                     "command": ["/bin/busybox", "sleep", "3600"]}],
                     "automountServiceAccountToken": False, "terminationGracePeriodSeconds": 1}}


def apply(plane: ControlPlane, manifest: dict[str, Any]) -> None:
    result = plane.kubectl("apply", "-f", "-", input=json.dumps(manifest))
    assert result.returncode == 0, result.stderr


def prepare_round(plane: ControlPlane, tag: str, scratch: Path, with_fail_closed: bool) -> None:
    """A round's namespaces and the policies in them before any of its session pods; the
    fail-closed pod too, when the product is not installed yet."""
    for logical in ("default", "baseline", "sortie-chart", "widening"):
        if ns(logical, tag) != "default":
            apply(plane, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns(logical, tag)}})
    overlay = scratch / f"baseline-overlay-{tag or 'plain'}"
    overlay.mkdir(parents=True, exist_ok=True)
    components = Path(__file__).resolve().parents[1] / "manifests" / "components" / "baseline"
    (overlay / "kustomization.yaml").write_text(json.dumps({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization", "namespace": ns("baseline", tag),
        "components": [os.path.relpath(components, overlay)]}))
    result = plane.kubectl("apply", "-k", str(overlay))
    assert result.returncode == 0, result.stderr
    apply(plane, {**SORTIE_CHART_DEFAULT, "metadata": {**SORTIE_CHART_DEFAULT["metadata"], "namespace": ns("sortie-chart", tag)}})
    apply(plane, {**ALLOW_ALL, "metadata": {**ALLOW_ALL["metadata"], "namespace": ns("widening", tag)}})
    if plane.kubectl("get", "crd", "ciliumnetworkpolicies.cilium.io").returncode == 0:
        apply(plane, {**ALLOW_ALL_CILIUM, "metadata": {**ALLOW_ALL_CILIUM["metadata"], "namespace": ns("widening", tag)}})
    prepare_in_cluster_target(plane)
    for logical in ("default", "baseline", "sortie-chart", "widening"):
        wait_for(lambda name=ns(logical, tag): plane.kubectl("-n", name, "get", "serviceaccount", "default").returncode == 0,
                 30, f"the default ServiceAccount of {ns(logical, tag)}")
    if with_fail_closed:
        for row in TABLE:
            if row.before_install:
                apply(plane, pod_manifest(ns(row.namespace, tag), row.pod, row.policy, row.labels))


def running_ip(plane: ControlPlane, namespace: str, name: str) -> str | None:
    pod = json.loads(plane.kubectl("-n", namespace, "get", "pod", name, "-o", "json").stdout)
    return pod["status"].get("podIP") if pod["status"].get("phase") == "Running" else None


def in_cluster_address(plane: ControlPlane, symbolic: str) -> str:
    """``pod:NAME`` or ``service:NAME`` in IN_CLUSTER_NAMESPACE: the pod's address or the ClusterIP."""
    kind, name = symbolic.split(":", 1)
    found = json.loads(plane.kubectl("-n", IN_CLUSTER_NAMESPACE, "get", kind, name, "-o", "json").stdout)
    address = found["status"].get("podIP") if kind == "pod" else found["spec"].get("clusterIP")
    assert address, f"{symbolic} has no address yet"
    return str(address)


_KUBELET_PORTS: dict[int, int] = {}


def kubelet_port(plane: ControlPlane) -> int:
    """The test node's kubelet port, as the node reports it (read once per control plane)."""
    if id(plane) not in _KUBELET_PORTS:
        port = plane.kubectl("get", "nodes", "-o", "jsonpath={.items[0].status.daemonEndpoints.kubeletEndpoint.Port}").stdout
        assert port.strip().isdigit(), f"no kubelet port in the node's status: {port!r}"
        _KUBELET_PORTS[id(plane)] = int(port)
    return _KUBELET_PORTS[id(plane)]


def prepare_in_cluster_target(plane: ControlPlane) -> None:
    """The in-cluster destination (once per cluster): a pod that accepts TCP 8080, and its Service."""
    labels = {"app": IN_CLUSTER_TARGET}
    apply(plane, {"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": IN_CLUSTER_NAMESPACE}},
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": IN_CLUSTER_TARGET, "namespace": IN_CLUSTER_NAMESPACE,
                                                         "labels": labels},
         "spec": {"containers": [{"name": "httpd", "image": PROBE_IMAGE, "imagePullPolicy": "Never",
                                  "command": ["/bin/busybox", "httpd", "-f", "-p", str(IN_CLUSTER_PORT), "-h", "/"]}],
                  "automountServiceAccountToken": False, "terminationGracePeriodSeconds": 1}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": IN_CLUSTER_TARGET, "namespace": IN_CLUSTER_NAMESPACE},
         "spec": {"selector": labels, "ports": [{"port": IN_CLUSTER_PORT, "targetPort": IN_CLUSTER_PORT, "protocol": "TCP"}]}}]})
    wait_for(lambda: running_ip(plane, IN_CLUSTER_NAMESPACE, IN_CLUSTER_TARGET), 120, "the in-cluster target running")


def probe(plane: ControlPlane, namespace: str, pod: str, cell: Cell) -> bool:
    """From the pod: a TCP connection made, a UDP datagram echoed back, or a name resolved."""
    protocol, address, port = cell
    if cell == NODE:
        address, port = NODE_IP, kubelet_port(plane)
    elif address.startswith(("pod:", "service:")):
        address = in_cluster_address(plane, address)
    command = (["/bin/busybox", "nslookup", address] if protocol == "dns"
               else ["/probe", protocol, f"{address}:{port}"])
    result = plane.kubectl("-n", namespace, "exec", pod, "--", *command, timeout=40)
    if protocol != "dns" and result.returncode not in (0, 1):
        raise AssertionError(f"probe {protocol} {address}:{port} in {pod} could not run: {result.stderr}")
    return result.returncode == 0


def start_rows(plane: ControlPlane, rows: list[Row], tag: str, backend: str, dataplane: str = "kube-router") -> dict[str, str]:
    """Create the rows' pods (but those made before install) and wait until all that should run
    do: pod -> IP. Those expected HELD are then checked to be held at their wait, not running."""
    for row in rows:
        if not row.before_install:
            apply(plane, pod_manifest(ns(row.namespace, tag), row.pod, row.policy, row.labels))
    ips = {row.pod: wait_for(lambda namespace=ns(row.namespace, tag), name=row.pod: running_ip(plane, namespace, name),
                             120, f"pod {row.pod} running") for row in rows if row.expected(backend, dataplane) is not HELD}
    for row in rows:
        if row.expected(backend, dataplane) is HELD:
            wait_for(lambda row=row: held_at_wait(plane, ns(row.namespace, tag), row.pod), 60, f"{row.pod} held at its wait")
    return ips


def held_at_wait(plane: ControlPlane, namespace: str, name: str) -> bool:
    """The session pod is not running and its injected wait has seen the canary's closed port open."""
    pod = json.loads(plane.kubectl("-n", namespace, "get", "pod", name, "-o", "json").stdout)
    if pod["status"].get("phase") == "Running":
        raise AssertionError(f"{namespace}/{name} runs: it should be held at its wait")
    log = plane.kubectl("-n", namespace, "logs", name, "-c", "sortie-egress-wait").stdout
    return "accepted a connection: egress policy not enforced yet" in log


def _column(cell: Cell) -> str:
    protocol, target, port = cell
    if protocol == "dns":
        return "dns"
    if cell == NODE:
        return "node"
    if ":" in target:
        return f"{target.split(':')[0][:3]}:{port}"
    return f"{protocol}/{target.rsplit('.', 1)[1]}:{port}"


def run_matrix(plane: ControlPlane, rows: list[Row], tag: str, backend: str,
               dataplane: str = "kube-router") -> tuple[list[str], list[str], list[str]]:
    """Probe every cell of every row (8 at a time), and ask ``explain`` every cell too: (the printed
    table, the differences from the expectation, where explain disagrees with the packets)."""
    running = [row for row in rows if row.expected(backend, dataplane) is not HELD]
    cells = [(row, cell) for row in running for cell in COLUMNS]
    with ThreadPoolExecutor(max_workers=8) as pool:
        observed = list(pool.map(lambda item: probe(plane, ns(item[0].namespace, tag), item[0].pod, item[1]), cells))
    results = {(row.pod, cell): seen for (row, cell), seen in zip(cells, observed)}
    header = f"{'namespace':<22}{'pod':<20}" + "".join(_column(cell).rjust(11) for cell in COLUMNS)
    lines, differences = [f"{dataplane}, backend {backend}", header], []
    for row in rows:
        allowed, text = row.expected(backend, dataplane), ""
        if allowed is HELD:
            lines.append(f"{ns(row.namespace, tag):<22}{row.pod:<20}  held at its wait (never ran), as expected")
            continue
        for cell in COLUMNS:
            expected, seen = cell in allowed, results[(row.pod, cell)]
            text += f"{('ok' if seen else '--') + ('' if seen == expected else '!'):>11}"
            if seen != expected:
                differences.append(f"{backend}: {ns(row.namespace, tag)}/{row.pod} -> {cell[0]} {cell[1]}:{cell[2]}: "
                                   f"expected {'open' if expected else 'blocked'}, observed {'open' if seen else 'blocked'}")
        lines.append(f"{ns(row.namespace, tag):<22}{row.pod:<20}{text}")
    return lines, differences, explain_disagreements(plane, rows, tag, backend, dataplane, results)


def explain_destination(plane: ControlPlane, cell: Cell) -> str:
    """A cell as an operator asks ``explain`` about it (DEST[:PORT][/PROTO])."""
    protocol, target, port = cell
    if cell == DNS:
        return "dns"  # nslookup: UDP 53 to the cluster resolver's Service
    if cell == NODE:
        name = plane.kubectl("get", "nodes", "-o", "jsonpath={.items[0].metadata.name}").stdout.strip()
        return f"node/{name}:{kubelet_port(plane)}/tcp"
    if target.startswith(("pod:", "service:")):
        kind, name = target.split(":", 1)
        return f"{kind}/{IN_CLUSTER_NAMESPACE}/{name}:{port}/{protocol}"
    return f"{target}:{port}/{protocol}"


def explain_row(plane: ControlPlane, namespace: str, pod: str, destinations: list[str], output: str = "json") -> Any:
    """``sortie-egress explain POD --to-file ... -o json`` as an operator runs it (in-process, so
    the matrix's hundreds of cells cost no interpreter starts), with the installed controller's
    settings read from its Lease."""
    import contextlib
    import io
    import tempfile

    from sortie_egress.cli import main

    with tempfile.NamedTemporaryFile("w", suffix=".txt") as listing:
        listing.write("\n".join(destinations) + "\n")
        listing.flush()
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(["explain", pod, "-n", namespace, "--to-file", listing.name, "-o", output,
                         "--kubeconfig", str(plane.kubeconfig_path), "--system-namespace", "sortie-system"])
    assert code == 0, f"explain {namespace}/{pod} exited {code}: {err.getvalue()}"
    assert "judging with the installed controller's settings" in err.getvalue(), err.getvalue()
    return json.loads(out.getvalue()) if output == "json" else out.getvalue()


#: Rows whose table (`explain -o wide`) is kept beside the JSON: the docs show real runs of these.
EXPLAIN_SHOWN = ("chart-allow-443", "widened-allow-443", "deny-a-443")


#: Where explain's answers are kept for a look after a run (one JSON per matrix).
EXPLAIN_RECORD = Path(os.environ.get("SORTIE_EXPLAIN_RECORD", "/tmp/sortie-explain-matrix"))


def explain_disagreements(plane: ControlPlane, rows: list[Row], tag: str, backend: str, dataplane: str,
                          results: dict[tuple[str, Cell], bool]) -> list[str]:
    """Every cell the packets answered, asked of explain: where its verdict is not what the packet
    did (an "unknown" counts as a disagreement: every cell here is knowable). A held row must be
    said to be held."""
    destinations = {cell: explain_destination(plane, cell) for cell in COLUMNS}
    disagreements, record = [], {}
    for row in rows:
        namespace = ns(row.namespace, tag)
        answer = explain_row(plane, namespace, row.pod, list(destinations.values()))
        record[f"{namespace}/{row.pod}"] = answer
        if row.pod in EXPLAIN_SHOWN:
            EXPLAIN_RECORD.mkdir(parents=True, exist_ok=True)
            (EXPLAIN_RECORD / f"{dataplane}-{backend}-{row.pod}.txt").write_text(
                explain_row(plane, namespace, row.pod, list(destinations.values()), "wide"))
        if row.expected(backend, dataplane) is HELD:
            if not any("held at its init containers" in note for note in answer["notes"]):
                disagreements.append(f"{backend}: {namespace}/{row.pod} is held at its wait; explain says {answer['notes']}")
            continue
        verdicts = {item["destination"]: item for item in answer["answers"]}
        for cell in COLUMNS:
            item = verdicts[destinations[cell]]
            seen = results[(row.pod, cell)]
            if item["verdict"] != ("allowed" if seen else "denied"):
                decided = [f"{said['kind']} {said['name']} {said['rule']} {said['effect']}"
                           for packet in item["packets"] for said in packet["decidedBy"] + packet["mayMatch"]]
                disagreements.append(f"{dataplane}/{backend}: {namespace}/{row.pod} -> {destinations[cell]}: packets "
                                     f"{'open' if seen else 'blocked'}, explain {item['verdict']} ({'; '.join(decided)}"
                                     f"{'; ' if decided and item['notes'] else ''}{'; '.join(item['notes'])})")
    EXPLAIN_RECORD.mkdir(parents=True, exist_ok=True)
    (EXPLAIN_RECORD / f"{dataplane}-{backend}.json").write_text(json.dumps(
        {"results": {f"{pod}|{'|'.join(map(str, cell))}": seen for (pod, cell), seen in results.items()},
         "explained": record}, indent=1))
    return disagreements


#: How long the shutdown probes watch: they start with the pod, the pod's deletion is asked for
#: at once, and Sortie's graceful deletion (no terminationGracePeriodSeconds: 30 s) outlasts them.
SHUTDOWN_WATCH_SECONDS = 20
#: Sortie's own ServiceAccount in a session namespace: it deletes `sortie-egress-<session-id>`
#: by name right after it asks for the pod's graceful deletion (internal/sessions/manager.go).
SORTIE_ACCOUNT = "sortie"


def _terminating_watcher(namespace: str, name: str, policy: dict[str, Any] | None) -> dict[str, Any]:
    """A pod whose container ignores SIGTERM (a shell that traps it runs the probe as a child) and
    tries TCP TARGET_A:80, which ALLOW_443 denies, from its first instant for SHUTDOWN_WATCH_SECONDS."""
    pod = pod_manifest(namespace, name, policy)
    del pod["spec"]["terminationGracePeriodSeconds"]  # as Sortie leaves it: 30 s
    pod["spec"]["containers"][0]["command"] = [
        "/bin/busybox", "sh", "-c",
        f"trap '' TERM; /probe watch tcp {TARGET_A}:80 {SHUTDOWN_WATCH_SECONDS}; /bin/busybox sleep 3600"]
    return pod


def shutdown_on_packets(plane: ControlPlane, namespace: str) -> tuple[dict[str, dict[str, int]], str]:
    """CONTRACT §8 as Sortie ends a session: a session pod (ALLOW_443) and a plain pod, both probing
    a denied target through their own termination, are deleted gracefully, and Sortie's account
    deletes the session's policy by name at once. Returns each pod's probe result, read while the
    pod is still terminating, and what the policy deletion answered."""
    apply(plane, {"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": SORTIE_ACCOUNT, "namespace": namespace}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
         "metadata": {"name": SORTIE_ACCOUNT, "namespace": namespace},
         "rules": [{"apiGroups": ["networking.k8s.io"], "resources": ["networkpolicies"],
                    "verbs": ["get", "list", "create", "delete"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": {"name": SORTIE_ACCOUNT, "namespace": namespace},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": SORTIE_ACCOUNT},
         "subjects": [{"kind": "ServiceAccount", "name": SORTIE_ACCOUNT, "namespace": namespace}]}]})
    names = {"shutdown-session": ALLOW_443, "shutdown-plain": None}
    for name, policy in names.items():
        apply(plane, _terminating_watcher(namespace, name, policy))
    for name in names:
        wait_for(lambda name=name: running_ip(plane, namespace, name), 120, f"{name} running")
    for name in names:
        result = plane.kubectl("-n", namespace, "delete", "pod", name, "--wait=false")
        assert result.returncode == 0, result.stderr
    sortie = f"--as=system:serviceaccount:{namespace}:{SORTIE_ACCOUNT}"
    deletion = plane.kubectl("-n", namespace, sortie, "delete", "networkpolicy", "sortie-egress-shutdown-session")
    results = {}
    for name in names:
        def finished(name: str = name) -> str | None:
            lines = plane.kubectl("-n", namespace, "logs", name).stdout.splitlines()
            return next((line for line in lines if line.startswith("attempts=")), None)

        line = wait_for(finished, SHUTDOWN_WATCH_SECONDS + 60, f"{name}'s probe result")
        got = plane.kubectl("-n", namespace, "get", "pod", name, "-o", "json")
        assert got.returncode == 0 and json.loads(got.stdout)["metadata"].get("deletionTimestamp"), (
            f"{name} is no longer terminating: its probe proves nothing about termination")
        results[name] = {key: int(value) for key, value in (part.split("=") for part in line.split())}
    return results, (deletion.stdout + deletion.stderr).strip()


def assert_shutdown_held(results: dict[str, dict[str, int]], deletion: str, backend: str, namespace: str) -> None:
    """The expectations of shutdown_on_packets, written out: not one denied attempt of the session
    pod got through; the plain pod got through until late in its watch, so the network was up
    during termination; Sortie's deletion of the policy by name was refused (networkpolicy) or
    found no such NetworkPolicy (the other backends enforce with another kind)."""
    session, plain = results["shutdown-session"], results["shutdown-plain"]
    assert session["attempts"] > 0 and session["open"] == 0, results
    assert plain["open"] > 0 and plain["last_open_ms"] >= (SHUTDOWN_WATCH_SECONDS - 4) * 1000, results
    if backends.get(backend).kind.kind == "NetworkPolicy":
        assert (f"sortie-egress protects session NetworkPolicies: {namespace}/sortie-egress-shutdown-session is managed "
                f"by sortie-egress and cannot be deleted by system:serviceaccount:{namespace}:{SORTIE_ACCOUNT}") in deletion, deletion
    else:
        assert 'networkpolicies.networking.k8s.io "sortie-egress-shutdown-session" not found' in deletion, deletion


LOOK_ALIKE_WATCH_SECONDS = 10
#: The name the webhook injects for the canary (a bare Service name in the namespace it runs in).
CANARY_NAME = "sortie-egress-canary.sortie-system.svc"
#: The strongest look-alike we can build: our own canary software, with a certificate for the very
#: name ours carries (the webhook's Service), from a CA of its own, on TARGET_A:9445 in the targets'
#: network namespace; its closed port (9446) is not listening there, so a refusal looks like a
#: dataplane that blocks. A session allowed 198.18.1.0/24 reaches it before and after its policy is
#: enforced. To a wait that does not authenticate the canary (every wait before issue 22), it is
#: indistinguishable from ours: that wait passes at once and the session starts unenforced.
LOOK_ALIKE_SCRIPT = """
import socket, sys, threading
from sortie_egress.certs.authority import generate
from sortie_egress.controller.canary import CanaryServer, _listener
from sortie_egress.server.tls import ReloadingTLS, pem_context
address = sys.argv[1]
pair = generate(("sortie-egress.sortie-system.svc",))
server = CanaryServer(_listener(address, 9445), _listener(address, 9447),
                      ReloadingTLS(pem_context(pair.cert_pem, pair.key_pem)))
threading.Thread(target=server.serve, args=(threading.Event(),), daemon=True).start()
with socket.create_connection((address, 9445), timeout=5) as connection:
    assert connection.recv(64).startswith(b"sortie-egress-canary")
print("look-alike serving", flush=True)
threading.Event().wait()
"""
LOOK_ALIKE_POLICY = {"mode": "allowlist", "rules": [{"cidr": "198.18.1.0/24"}]}


#: How a pod's creator points the canary's name at the look-alike: its own /etc/hosts entry, or
#: its own resolver (``dnsPolicy: None``: the targets' DNS server, which answers the canary's name
#: under its zone with the look-alike's address; ndots 5 makes the search domain come first).
LOOK_ALIKE_ROUTES = ("hostAliases", "dnsPolicy")


def look_alike_on_packets(plane: ControlPlane, namespace: str, node_root: Path, via: str = "hostAliases") -> dict[str, Any]:
    """A session pod whose creator points the canary's name at a look-alike (``via`` one of
    LOOK_ALIKE_ROUTES) that its own policy lets it reach. Returns what was seen: the pod's phase,
    whether its container ever started, and its wait's log. The look-alike runs under
    ``node_root``, so the host ledger stops it even if this is interrupted."""
    import subprocess
    import sys

    from tests.cluster.targets import TARGET_DNS, TARGETS_NETNS, TEST_ZONE

    script, log_path = node_root / "look-alike.py", node_root / "look-alike.log"
    script.write_text(LOOK_ALIKE_SCRIPT)
    with log_path.open("ab") as log_file:
        server = subprocess.Popen(["ip", "netns", "exec", TARGETS_NETNS, sys.executable, str(script), TARGET_A],
                                  cwd=Path(__file__).resolve().parents[1], start_new_session=True,
                                  env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
                                  stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: server.poll() is None and "look-alike serving" in log_path.read_text(), 60,
                 f"the look-alike serving (log: {log_path})")
        name = f"look-alike-{via.lower()}"  # one pod per route: the last may still be terminating
        session = pod_manifest(namespace, name, LOOK_ALIKE_POLICY)
        if via == "hostAliases":
            session["spec"]["hostAliases"] = [{"ip": TARGET_A, "hostnames": [CANARY_NAME]}]
        else:
            session["spec"]["dnsPolicy"] = "None"
            session["spec"]["dnsConfig"] = {"nameservers": [TARGET_DNS], "searches": [TEST_ZONE],
                                            "options": [{"name": "ndots", "value": "5"}]}
        apply(plane, session)

        def wait_log() -> str | None:
            log = plane.kubectl("-n", namespace, "logs", name, "-c", "sortie-egress-wait").stdout
            return log if "did not" in log else None

        log = wait_for(wait_log, 90, "the wait's verdict on the look-alike")
        # Then watched for a while: a wait that believed the look-alike passes in well under a second.
        watched_until, started, pod = time.monotonic() + LOOK_ALIKE_WATCH_SECONDS, False, {}
        while time.monotonic() < watched_until and not started:
            pod = json.loads(plane.kubectl("-n", namespace, "get", "pod", name, "-o", "json").stdout)
            started = any(status.get("state", {}).get("running") or status.get("state", {}).get("terminated")
                          or status.get("lastState", {}).get("terminated")
                          for status in pod["status"].get("containerStatuses") or [])
            time.sleep(0.5)
        log = plane.kubectl("-n", namespace, "logs", name, "-c", "sortie-egress-wait").stdout or log
        command = pod["spec"]["initContainers"][0]["command"]
        plane.kubectl("-n", namespace, "delete", "pod", name, "--wait=false")
        return {"phase": pod["status"].get("phase"), "started": started, "log": log,
                "canary": command[command.index("--canary") + 1], "pinned": "--ca-bundle" in command}
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(10)


UNPROVEN = "the canary did not prove it is ours (unable to get local issuer certificate)"


def assert_look_alike_held(seen: dict[str, Any]) -> None:
    """Written out: the wait addressed the name the look-alike answers, was pinned, did not believe
    the look-alike's certificate, and the session's container never started."""
    assert seen["canary"] == CANARY_NAME and seen["pinned"], seen
    assert seen["phase"] == "Pending" and seen["started"] is False, seen
    assert UNPROVEN in seen["log"] and "enforced in" not in seen["log"], seen["log"]

#: The canary's replicas (the controller's pods) and its open port (the closed one is the next).
CANARY_SELECTOR = "app.kubernetes.io/name=sortie-egress,app.kubernetes.io/component=controller"
CANARY_OPEN_PORT = 9445
#: Session pods started under a disturbed canary, each probing TCP TARGET_A:80 (which ALLOW_443
#: denies) from its container's first instant for this long.
DISTURBED_SESSIONS = 20
DISTURBED_WATCH_SECONDS = 3.0
#: Between two deletions of a canary replica, and never the last Ready one (as a drain under a
#: PodDisruptionBudget of minAvailable 1 goes): a replica is always terminating or starting
#: somewhere, yet the sessions can make progress however slowly the machine starts a
#: replacement. (Deleting any replica on a fixed clock starved them on a slow CI machine: when a
#: replacement needs longer than the interval, no replica is ever Ready.)
CHURN_INTERVAL = 4.0
#: At most this many deletions: each may take the controller's leader with it (a new one takes
#: over in seconds), so an endless churn makes the sessions' start as slow as the machine is; ten
#: keep it disturbed for the first 40 s or more, and the test's length bounded.
CHURN_DELETIONS = 10
#: The flood: connections at once per canary port, how many in all (the host's conntrack table
#: holds each for minutes; this stays far below its size) and for how long.
FLOOD_WORKERS, FLOOD_LIMIT, FLOOD_SECONDS = 64, 40_000, 40.0


def _disturbed_session(namespace: str, name: str) -> dict[str, Any]:
    pod = pod_manifest(namespace, name, ALLOW_443)
    pod["spec"]["containers"][0]["command"] = ["/probe", "watch", "tcp", f"{TARGET_A}:80", str(DISTURBED_WATCH_SECONDS)]
    return pod


def _watch_results(plane: ControlPlane, namespace: str, names: list[str], timeout: float) -> dict[str, dict[str, int]]:
    results = {}
    for name in names:
        def finished(name: str = name) -> str | None:
            lines = plane.kubectl("-n", namespace, "logs", name, "-c", "probe").stdout.splitlines()
            return next((line for line in lines if line.startswith("attempts=")), None)

        line = wait_for(finished, timeout, f"{namespace}/{name}'s probe result")
        results[name] = {key: int(value) for key, value in (part.split("=") for part in line.split())}
    return results


def _running(plane: ControlPlane, namespace: str, names: list[str]) -> set[str]:
    pods = json.loads(plane.kubectl("-n", namespace, "get", "pods", "-o", "json").stdout)["items"]
    return {p["metadata"]["name"] for p in pods if p["metadata"]["name"] in names and p["status"].get("phase") == "Running"}


def _ready(pod: dict[str, Any]) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in pod.get("status", {}).get("conditions", []))


def _wait_logs(plane: ControlPlane, namespace: str, names: list[str]) -> dict[str, str]:
    return {name: plane.kubectl("-n", namespace, "logs", name, "-c", "sortie-egress-wait").stdout for name in names}


def canary_churn_on_packets(plane: ControlPlane, namespace: str) -> dict[str, Any]:
    """DISTURBED_SESSIONS session pods start while the canary's replicas are deleted one at a time
    in a loop (``kubectl delete pod``, every CHURN_INTERVAL s, never the last Ready one, until every
    session runs, CHURN_DELETIONS are made or 180 s pass). Returns each session's probe result,
    the deletions (each with how many sessions were running when it was made), and the waits' logs."""
    import threading

    names = [f"churn-{index}" for index in range(DISTURBED_SESSIONS)]
    stop, deleted = threading.Event(), []

    def churn() -> None:
        while not stop.is_set() and len(deleted) < CHURN_DELETIONS:
            replicas = json.loads(plane.kubectl("-n", "sortie-system", "get", "pods", "-l", CANARY_SELECTOR,
                                                "-o", "json").stdout)["items"]
            live = [p for p in replicas if not p["metadata"].get("deletionTimestamp")]
            # Any replica but the last Ready one (a starting replacement too), as a
            # PodDisruptionBudget of minAvailable 1 would allow.
            victims = sorted(p["metadata"]["name"] for p in live if any(_ready(q) for q in live if q is not p))
            if not victims:
                stop.wait(0.5)  # no replica is Ready: the next deletion waits for one
                continue
            victim = victims[len(deleted) % len(victims)]
            running = len(_running(plane, namespace, names))
            if plane.kubectl("-n", "sortie-system", "delete", "pod", victim, "--wait=false").returncode == 0:
                deleted.append((victim, running))
            stop.wait(CHURN_INTERVAL)

    thread = threading.Thread(target=churn, daemon=True)
    thread.start()
    try:
        for name in names:
            apply(plane, _disturbed_session(namespace, name))
        try:
            wait_for(lambda: len(_running(plane, namespace, names)) == len(names) or None, 180,
                     "every session pod running under the canary's churn", interval=1.0)
        except TimeoutError as exc:  # say what the churn did and where the waits stood
            pending = sorted(set(names) - _running(plane, namespace, names))
            tails = {name: log.splitlines()[-3:] for name, log in _wait_logs(plane, namespace, pending[:3]).items()}
            raise TimeoutError(f"{exc}: {len(deleted)} deletions {deleted}; not running {pending}; "
                               f"their waits end {tails}") from None
    finally:
        stop.set()
        thread.join(30)
    results = _watch_results(plane, namespace, names, DISTURBED_WATCH_SECONDS + 120)
    logs = _wait_logs(plane, namespace, names)
    plane.kubectl("-n", namespace, "delete", "pod", *names, "--wait=false")
    return {"results": results, "deleted": deleted, "logs": logs}


def assert_churn_held(seen: dict[str, Any]) -> None:
    """Written out: replicas were deleted while sessions were still starting (at least three
    deletions made while not every session ran yet), every session's container ran and probed,
    and not one of its attempts to the denied destination got through."""
    results = seen["results"]
    assert sum(1 for _, running in seen["deleted"] if running < DISTURBED_SESSIONS) >= 3, seen["deleted"]
    assert all(result["attempts"] > 0 for result in results.values()), results
    assert {name: result["open"] for name, result in results.items()} == {name: 0 for name in results}, results


def flood_on_packets(plane: ControlPlane, namespace: str) -> dict[str, Any]:
    """A plain pod floods both canary ports of every replica (their pod addresses, and the
    Service) with connections for FLOOD_SECONDS; session pods are created once it floods. Returns
    the sessions' probe results, the flood's own count, how many sessions ran before it ended, and
    the waits' logs."""
    replicas = json.loads(plane.kubectl("-n", "sortie-system", "get", "pods", "-l", CANARY_SELECTOR,
                                        "-o", "json").stdout)["items"]
    service = plane.kubectl("-n", "sortie-system", "get", "service", "sortie-egress-canary",
                            "-o", "jsonpath={.spec.clusterIP}").stdout.strip()
    hosts = [p["status"]["podIP"] for p in replicas if p["status"].get("podIP")] + [service]
    targets = ",".join(f"{host}:{port}" for host in hosts for port in (CANARY_OPEN_PORT, CANARY_OPEN_PORT + 1))
    flooder = pod_manifest(namespace, "canary-flood", None)
    flooder["spec"]["containers"][0]["command"] = ["/probe", "flood", targets, str(FLOOD_WORKERS), str(FLOOD_LIMIT),
                                                   str(FLOOD_SECONDS)]
    apply(plane, flooder)
    wait_for(lambda: "flooding" in plane.kubectl("-n", namespace, "logs", "canary-flood").stdout or None, 120,
             "the flood started")
    names = [f"flooded-{index}" for index in range(DISTURBED_SESSIONS // 4)]
    for name in names:
        apply(plane, _disturbed_session(namespace, name))

    def flood_done() -> str | None:
        return next((line for line in plane.kubectl("-n", namespace, "logs", "canary-flood").stdout.splitlines()
                     if line.startswith("flood connections=")), None)

    line = wait_for(flood_done, FLOOD_SECONDS + 60, "the flood's end")
    running_during_flood = len(_running(plane, namespace, names))
    results = _watch_results(plane, namespace, names, DISTURBED_WATCH_SECONDS + 180)
    logs = _wait_logs(plane, namespace, names)
    plane.kubectl("-n", namespace, "delete", "pod", "canary-flood", *names, "--wait=false")
    flood = {key: int(value) for key, value in (part.split("=") for part in line.split()[1:])}
    return {"results": results, "flood": flood, "running_during_flood": running_during_flood, "logs": logs,
            "targets": targets, "waits_that_saw_an_overflow": sum("overflowed" in log for log in logs.values())}


def assert_flood_held(seen: dict[str, Any]) -> None:
    """Written out: the flood made thousands of connections to the canary (so the sessions' waits
    ran under it), every session's container ran in the end and probed, and not one of its
    attempts to the denied destination got through."""
    assert seen["flood"]["connections"] >= 5_000, seen["flood"]
    results = seen["results"]
    assert all(result["attempts"] > 0 for result in results.values()), results
    assert {name: result["open"] for name, result in results.items()} == {name: 0 for name in results}, results


def startup_on_packets(plane: ControlPlane, namespace: str, sessions: int = 4, plains: int = 2) -> dict[str, Any]:
    """CONTRACT §6 from a container's first instant: session pods (ALLOW_443) and plain pods whose
    only container tries TCP TARGET_A:80 from its first instant for DISTURBED_WATCH_SECONDS.
    Returns each pod's probe result and each session pod's init containers."""
    names = {f"first-instant-session-{i}": ALLOW_443 for i in range(sessions)}
    names.update({f"first-instant-plain-{i}": None for i in range(plains)})
    for name, policy in names.items():
        pod = pod_manifest(namespace, name, policy)
        pod["spec"]["containers"][0]["command"] = ["/probe", "watch", "tcp", f"{TARGET_A}:80", str(DISTURBED_WATCH_SECONDS)]
        apply(plane, pod)
    results = _watch_results(plane, namespace, list(names), DISTURBED_WATCH_SECONDS + 120)
    inits = {}
    for name, policy in names.items():
        if policy:
            pod = json.loads(plane.kubectl("-n", namespace, "get", "pod", name, "-o", "json").stdout)
            inits[name] = [c["name"] for c in pod["spec"].get("initContainers") or []]
    plane.kubectl("-n", namespace, "delete", "pod", *names, "--wait=false")
    return {"results": results, "init_containers": inits}


def assert_startup_held(seen: dict[str, Any], waits: list[str]) -> None:
    """Written out: every session container probed and not one attempt got through; every plain
    one got through within its first second (or the probe measured nothing); each session pod
    carried exactly ``waits`` as its init containers."""
    results = seen["results"]
    sessions = {name: r for name, r in results.items() if "session" in name}
    plains = {name: r for name, r in results.items() if "plain" in name}
    assert all(r["attempts"] > 0 for r in sessions.values()), results
    assert {name: r["open"] for name, r in sessions.items()} == {name: 0 for name in sessions}, results
    assert all(r["open"] > 0 and 0 <= r["first_open_ms"] < 1000 for r in plains.values()), results
    assert seen["init_containers"] == {name: waits for name in sessions}, seen["init_containers"]
