"""Admission benchmark: our webhook against a minimal aiohttp peer, in one run.

All servers run as child processes of this script on loopback, each on its
own TLS certificate; a uvloop client drives POST /mutate over keep-alive TLS
connections with a realistic ~4.5 KB AdmissionReview (a fresh uid each time,
the same app policy, as in a real burst of sessions). For each server and
connection count it prints requests/s, p50 and p99 latency, and the server's
CPU time per request (from /proc, so the client's own cost is excluded).

Two floors answer a fixed body without decoding anything: the "protocol
floor" is our own server stack (uvicorn, the admission fast path, TLS), so
ours minus it is the cost of our admission code; the "uvicorn floor" is
uvicorn's ordinary ASGI route, which the fast path bypasses. nginx (Debian's,
one worker, the same certificate and TLS versions) answering a fixed body is
the reference for what a fast server's TLS and HTTP cost; it runs when
`nginx` is on the PATH (`apt-get install nginx-light`), and is left out with a
note otherwise.

`--policies same` (the default) sends the same app policy every time, as a
burst of sessions of one app does: our memo answers. `--policies distinct`
gives every request a policy the webhook has not seen (its IPv6 network
changes; the memos hold far fewer than the 65,536 variants), which is every
app's first session: the cold path.

This machine's speed drifts by a quarter within minutes, so the servers are
measured in interleaved rounds (each server once per round, in turn) and the
summary takes each server's median over the rounds: a slow minute then
weighs on every server alike instead of on whichever ran in it.

    python bench/admission.py [--seconds 5] [--rounds 3] [--connections 1,16,64] [--policies same|distinct]
                              [--json out.json]

A script, not a test: figures depend on the machine; docs/benchmarks.md records them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: Server name -> the script under bench/ that runs it (ours is the installed console script).
SERVERS = {"sortie-egress": "", "aiohttp-peer": "aiohttp_peer.py", "protocol-floor": "protocol_floor.py",
           "uvicorn-floor": "floor_app.py", "nginx": ""}
#: Issue 13's targets: the hot path's CPU per admission against nginx's, the cold path's against the peer's.
TARGET_NGINX_RATIO, TARGET_COLD_PEER_SPEEDUP = 3.2, 1.5
#: In the policy, the part --policies distinct varies: an IPv6 network, 4 hex digits.
POLICY_SLOT = "c0de"
#: Issue 2's targets for our webhook at 16 connections.
TARGET_CPU_US, TARGET_PEER_RATIO, TARGET_P99_MS = 50.0, 1.5, 3.0
BIN = Path(sys.executable).parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def realistic_pod() -> dict:
    """A pod as a session broker creates it: several containers, env, mounts, probes (~4.5 KB as a review)."""
    env = [{"name": f"SORTIE_SETTING_{i}", "value": f"value-{i}-" + "x" * 12} for i in range(22)]
    container = {
        "name": "app", "image": "registry.example.com/sortie/apps/firefox:128.0.3-esr", "imagePullPolicy": "IfNotPresent",
        "env": env, "ports": [{"containerPort": 5900, "name": "vnc", "protocol": "TCP"}],
        "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"cpu": "2", "memory": "4Gi"}},
        "volumeMounts": [{"name": "home", "mountPath": "/home/user"}, {"name": "shm", "mountPath": "/dev/shm"},
                         {"name": "kube-api-access-abcde", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": True}],
        "readinessProbe": {"tcpSocket": {"port": 5900}, "periodSeconds": 2},
        "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "allowPrivilegeEscalation": False,
                            "capabilities": {"drop": ["ALL"]}},
        "terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File",
    }
    sidecar = {"name": "vnc-proxy", "image": "registry.example.com/sortie/vnc-proxy:2.4.1",
               "ports": [{"containerPort": 6080, "protocol": "TCP"}],
               "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"cpu": "200m", "memory": "128Mi"}}}
    policy = {"mode": "allowlist", "rules": [
        {"cidr": "10.20.0.0/16", "port": 443, "protocol": "TCP"}, {"cidr": "10.30.1.0/24", "port": 5432, "protocol": "TCP"},
        {"cidr": "192.0.2.0/24", "port": 8000, "end_port": 8100}, {"cidr": f"2001:db8:{POLICY_SLOT}::/48", "port": 443}]}
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"generateName": "firefox-", "namespace": "sessions",
                     "labels": {"sortie.io/session-id": "7f3a2b1c-aaaa-bbbb-cccc-0123456789ab", "sortie.io/app-id": "firefox",
                                "sortie.io/user": "u-12345", "app.kubernetes.io/name": "sortie-session"},
                     "annotations": {"sortie.io/egress-policy": json.dumps(policy), "sortie.io/created-by": "sortie-broker-6d8f"}},
        "spec": {"containers": [container, sidecar], "restartPolicy": "Never", "serviceAccountName": "default",
                 "dnsPolicy": "ClusterFirst", "enableServiceLinks": False, "terminationGracePeriodSeconds": 5,
                 "volumes": [{"name": "home", "emptyDir": {"sizeLimit": "2Gi"}}, {"name": "shm", "emptyDir": {"medium": "Memory"}},
                             {"name": "kube-api-access-abcde", "projected": {"sources": [{"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}}]}}],
                 "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}]},
    }


UID_SLOT = "00000000-0000-0000-0000-000000000000"


def review_template() -> tuple[bytes, bytes, bytes]:
    review = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
        "uid": UID_SLOT, "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "resource": {"group": "", "version": "v1", "resource": "pods"},
        "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
        "requestResource": {"group": "", "version": "v1", "resource": "pods"},
        "namespace": "sessions", "operation": "CREATE",
        "userInfo": {"username": "system:serviceaccount:sortie:broker", "uid": "3c1c8c7e-1111-2222-3333-444455556666",
                     "groups": ["system:serviceaccounts", "system:serviceaccounts:sortie", "system:authenticated"]},
        "object": realistic_pod(), "oldObject": None, "dryRun": False,
        "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1", "fieldManager": "sortie-broker"}}}
    text = json.dumps(review).encode()
    before, after = text.split(UID_SLOT.encode())
    assert after.count(POLICY_SLOT.encode()) == 1, "the policy slot must occur once in the review"
    middle, after = after.split(POLICY_SLOT.encode())
    return before, middle, after


def request_body(template: tuple[bytes, bytes, bytes], uid: bytes, variant: int | None) -> bytes:
    """One review: its uid, and (``variant`` not None) a policy of its own."""
    before, middle, after = template
    return before + uid + middle + (POLICY_SLOT.encode() if variant is None else b"%04x" % (variant % 65536)) + after


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """The server's CPU: the process and its live children (nginx's worker does the work)."""
    total = 0.0
    for candidate in [pid, *_children(pid)]:
        try:
            fields = Path(f"/proc/{candidate}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime
    return total


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        found += [int(child) for child in task.read_text().split()]
    return found


@dataclass
class Result:
    server: str
    connections: int
    requests: int
    errors: int
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_us_per_request: float


async def drive(port: int, ca: str, connections: int, seconds: float, warmup: float,
                distinct: bool) -> tuple[list[float], int]:
    """Keep-alive TLS connections, each sending its next request when the last is answered."""
    template = review_template()
    variants = iter(range(1, 1 << 62))
    context = ssl.create_default_context(cafile=ca)
    latencies: list[float] = []
    errors = 0
    measuring = False
    deadline = time.perf_counter() + warmup + seconds

    async def connection(index: int) -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
        sequence = 0
        while time.perf_counter() < deadline:
            sequence += 1
            uid = f"{index:08x}-{sequence:04x}-4000-8000-{sequence:012x}"[:36].encode()
            body = request_body(template, uid, next(variants) if distinct else None)
            head = (b"POST /mutate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\n\r\n" % len(body))
            started = time.perf_counter()
            writer.write(head + body)
            status_line = await reader.readline()
            length = 0
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b""):
                    break
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            payload = await reader.readexactly(length)
            elapsed = time.perf_counter() - started
            if not status_line.startswith(b"HTTP/1.1 200") or b'"allowed":true' not in payload.replace(b" ", b""):
                errors += 1
            if measuring:
                latencies.append(elapsed)
        writer.close()

    async def start_measuring() -> None:
        nonlocal measuring
        await asyncio.sleep(warmup)
        measuring = True

    await asyncio.gather(start_measuring(), *(connection(i) for i in range(connections)))
    return latencies, errors


def run_client(port: int, ca: str, connections: int, seconds: float, warmup: float, pid: int,
               distinct: bool) -> tuple[list[float], int, float]:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    cpu_start = None

    async def measured() -> tuple[list[float], int]:
        nonlocal cpu_start

        async def mark() -> None:
            nonlocal cpu_start
            await asyncio.sleep(warmup)
            cpu_start = cpu_seconds(pid)

        marker = asyncio.ensure_future(mark())
        result = await drive(port, ca, connections, seconds, warmup, distinct)
        await marker
        return result

    latencies, errors = asyncio.run(measured())
    return latencies, errors, cpu_seconds(pid) - (cpu_start or 0.0)


def wait_healthy(url: str, ca: str, process: subprocess.Popen[bytes]) -> None:
    context = ssl.create_default_context(cafile=ca)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, context=context, timeout=1):
                return
        except urllib.error.HTTPError:
            return  # answered (405 on a POST-only path): it is up
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"{url} did not come up")


def start_servers(folder: Path, names: tuple[str, ...] = tuple(SERVERS)) -> dict[str, tuple[subprocess.Popen[bytes], int, str]]:
    servers: dict[str, tuple[subprocess.Popen[bytes], int, str]] = {}
    try:
        _start_each(folder, servers, names)
    except BaseException:
        for process, _, _ in servers.values():  # no server outlives a failed start
            process.kill()
        raise
    return servers


NGINX_ANSWER = '{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","response":{"uid":"x","allowed":true}}'


def nginx_config(folder: Path, port: int, certs: Path) -> Path:
    """One worker (ours is one process), TLS 1.2 and 1.3 on the same certificate, keep-alive as
    long as ours, and a fixed answer: nginx's TLS and HTTP cost, nothing else."""
    user = "user root;\n" if os.geteuid() == 0 else ""  # the worker must read the key we just wrote
    config = folder / "nginx.conf"
    config.write_text(f"""{user}worker_processes 1;
pid {folder}/nginx.pid;
error_log {folder}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {folder}/body; proxy_temp_path {folder}/proxy; fastcgi_temp_path {folder}/fastcgi;
  uwsgi_temp_path {folder}/uwsgi; scgi_temp_path {folder}/scgi;
  client_max_body_size 4m; client_body_buffer_size 64k;
  keepalive_timeout 120s; keepalive_requests 10000000;
  server {{
    listen 127.0.0.1:{port} ssl;
    ssl_certificate {certs}/tls.crt; ssl_certificate_key {certs}/tls.key;
    ssl_protocols TLSv1.2 TLSv1.3;
    default_type application/json;
    location / {{ return 200 '{NGINX_ANSWER}'; }}
  }}
}}
""")
    return config


def _start_each(folder: Path, servers: dict[str, tuple[subprocess.Popen[bytes], int, str]], names: tuple[str, ...]) -> None:
    for name in names:
        if name == "nginx" and shutil.which("nginx") is None:
            print("nginx is not installed (apt-get install nginx-light): the nginx reference is left out", flush=True)
            continue
        certs = folder / name
        subprocess.run([str(BIN / "sortie-egress"), "certs", "generate", "--out", str(certs), "--hosts", "127.0.0.1"],
                       check=True, capture_output=True)
        port = free_port()
        log = (folder / f"{name}.log").open("wb")
        if name == "nginx":
            argv = [str(shutil.which("nginx")), "-e", str(folder / "nginx-error.log"), "-c",
                    str(nginx_config(folder, port, certs)), "-g", "daemon off;"]
            probe = f"https://127.0.0.1:{port}/mutate"
        elif name == "sortie-egress":
            argv = [str(BIN / "sortie-egress"), "serve", "--host", "127.0.0.1", "--port", str(port),
                    "--tls-cert", str(certs / "tls.crt"), "--tls-key", str(certs / "tls.key")]
            probe = f"https://127.0.0.1:{port}/healthz"
        else:
            argv = [sys.executable, str(ROOT / "bench" / SERVERS[name]), "--port", str(port),
                    "--cert", str(certs / "tls.crt"), "--key", str(certs / "tls.key")]
            probe = f"https://127.0.0.1:{port}/mutate"
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                                   env={**os.environ, "PYTHONPATH": str(ROOT)})
        servers[name] = (process, port, str(certs / "ca.crt"))
        wait_healthy(probe, str(certs / "ca.crt"), process)


def measure(name: str, process: subprocess.Popen[bytes], port: int, ca: str, connections: int,
            seconds: float, warmup: float, distinct: bool) -> Result:
    import concurrent.futures

    # The client runs in its own process: its CPU is not the server's, and neither shares a GIL.
    with concurrent.futures.ProcessPoolExecutor(1) as pool:
        latencies, errors, server_cpu = pool.submit(run_client, port, ca, connections, seconds, warmup, process.pid,
                                                         distinct).result()
    latencies.sort()
    count = len(latencies)
    quantiles = statistics.quantiles(latencies, n=100) if count >= 100 else [max(latencies or [0])] * 99
    return Result(
        server=name, connections=connections, requests=count, errors=errors, rps=count / seconds,
        p50_ms=quantiles[49] * 1000, p99_ms=quantiles[98] * 1000,
        cpu_us_per_request=server_cpu / max(count, 1) * 1e6,
    )


def median_result(runs: list[Result]) -> Result:
    """One server's figures at one connection count: the median of each figure over the rounds."""
    first = runs[0]
    return Result(
        server=first.server, connections=first.connections,
        requests=int(statistics.median(run.requests for run in runs)), errors=sum(run.errors for run in runs),
        rps=statistics.median(run.rps for run in runs), p50_ms=statistics.median(run.p50_ms for run in runs),
        p99_ms=statistics.median(run.p99_ms for run in runs),
        cpu_us_per_request=statistics.median(run.cpu_us_per_request for run in runs),
    )


def _line(result: Result, suffix: str = "") -> str:
    return (f"{result.server:14} conns={result.connections:3}  {result.rps:8.0f} req/s  p50 {result.p50_ms:6.2f} ms  "
            f"p99 {result.p99_ms:6.2f} ms  server CPU {result.cpu_us_per_request:6.1f} us/req  errors {result.errors}{suffix}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per server, connection count and round")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the summary is each figure's median")
    parser.add_argument("--connections", default="1,16,64")
    parser.add_argument("--policies", choices=["same", "distinct"], default="same",
                        help="same: one app's policy every time (the memo answers); distinct: a new one each time")
    parser.add_argument("--json", help="also write every run and the medians here")
    args = parser.parse_args()
    if args.rounds < 1 or args.seconds <= 0:
        parser.error("--rounds must be at least 1 and --seconds positive")
    levels = [int(level) for level in args.connections.split(",")]
    distinct = args.policies == "distinct"
    size = len(request_body(review_template(), UID_SLOT.encode(), None))
    print(f"review size: {size} bytes; policies: {args.policies}; {args.seconds:.0f} s per run after {args.warmup:.0f} s "
          f"warm-up; {args.rounds} interleaved round(s); {os.cpu_count()} CPUs", flush=True)
    runs: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="sortie-bench-") as folder:
        servers = start_servers(Path(folder))
        try:
            for connections in levels:
                for round_number in range(1, args.rounds + 1):
                    for name, (process, port, ca) in servers.items():
                        result = measure(name, process, port, ca, connections, args.seconds, args.warmup, distinct)
                        runs.append(result)
                        print(_line(result, f"  (round {round_number})"), flush=True)
        finally:
            for process, _, _ in servers.values():
                process.send_signal(signal.SIGTERM)
                process.wait(15)
    medians = [median_result([run for run in runs if run.server == name and run.connections == connections])
               for connections in levels for name in servers]
    print(f"\nmedians over {args.rounds} round(s):")
    for result in medians:
        print(_line(result))
    print()
    for connections in levels:
        at = {r.server: r for r in medians if r.connections == connections}
        ours, peer, protocol, uvicorn_floor = (at[name] for name in ("sortie-egress", "aiohttp-peer", "protocol-floor",
                                                                     "uvicorn-floor"))
        print(f"conns={connections:3}: throughput {ours.rps / peer.rps:4.2f}x the aiohttp peer, "
              f"CPU per request {ours.cpu_us_per_request / peer.cpu_us_per_request:4.2f}x; ours above the protocol floor "
              f"{ours.cpu_us_per_request - protocol.cpu_us_per_request:5.1f} us/req; protocol floor "
              f"{protocol.cpu_us_per_request:5.1f} vs uvicorn floor {uvicorn_floor.cpu_us_per_request:5.1f} us/req")
        nginx = at.get("nginx")
        if nginx is not None:
            ratio = ours.cpu_us_per_request / nginx.cpu_us_per_request
            print(f"           ours / nginx CPU per admission {ratio:4.2f}x"
                  + (f" (issue 13, hot path: <= {TARGET_NGINX_RATIO}x: {'met' if ratio <= TARGET_NGINX_RATIO else 'NOT met'})"
                     if not distinct else ""))
        if distinct:
            speedup = peer.cpu_us_per_request / ours.cpu_us_per_request
            print(f"           cold path: the peer's CPU per admission / ours {speedup:4.2f}x (issue 13: >= "
                  f"{TARGET_COLD_PEER_SPEEDUP}x: {'met' if speedup >= TARGET_COLD_PEER_SPEEDUP else 'NOT met'})")
        if connections == 16 and not distinct:
            verdicts = [
                f"CPU {ours.cpu_us_per_request:.1f} us <= {TARGET_CPU_US:.0f}: {'met' if ours.cpu_us_per_request <= TARGET_CPU_US else 'NOT met'}",
                f"throughput {ours.rps / peer.rps:.2f}x >= {TARGET_PEER_RATIO}x: {'met' if ours.rps >= TARGET_PEER_RATIO * peer.rps else 'NOT met'}",
                f"p99 {ours.p99_ms:.2f} ms <= {TARGET_P99_MS:.0f} ms: {'met' if ours.p99_ms <= TARGET_P99_MS else 'NOT met'}",
            ]
            print("           issue 2 targets at 16 connections: " + "; ".join(verdicts))
    if args.json:
        Path(args.json).write_text(json.dumps({"runs": [asdict(run) for run in runs],
                                               "medians": [asdict(result) for result in medians]}, indent=2))


if __name__ == "__main__":
    main()
