"""Probe targets for the node's pods: TCP listeners and a UDP echo on two addresses, in a
network namespace of their own, routed through the host. The only destinations a pod on
the test node can reach outside the cluster; every address is in TEST_RANGE.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from .harness import wait_for
from .host import HostLedger, run

TARGETS_NETNS = "sortie-targets"
HOST_SIDE, TARGET_SIDE = "sortie-t0", "sortie-t1"
GATEWAY = "198.18.1.1"
TARGET_A, TARGET_B = "198.18.1.2", "198.18.1.3"
PORTS = (80, 443, 8443)
UDP_PORT = 53  # an echo where an outside resolver would be: "DNS to the outside" on packets
#: An authoritative server for TEST_ZONE (CoreDNS with its hosts plugin), beside the targets:
#: cluster DNS forwards the zone here, so `fqdn` rules meet real lookups of real names.
TARGET_DNS = "198.18.1.4"
TEST_ZONE = "sortie.test"
#: Names in TEST_ZONE and the target each resolves to. Cilium opens a name's address to every
#: policy that names it once any pod has looked it up, so each test names a host of its own
#: (``<tag>.allowed``) to see "closed before the lookup".
NAMES = {**{f"{tag}.allowed.{TEST_ZONE}": TARGET_A for tag in ("np", "cil", "cnp", "kr")},
         f"other.{TEST_ZONE}": TARGET_B, f"api.wild.{TEST_ZONE}": TARGET_B,
         # The canary's name under TEST_ZONE, at the look-alike's address: what a pod with
         # `dnsPolicy: None`, this server and the zone as its search domain resolves it to.
         f"sortie-egress-canary.sortie-system.svc.{TEST_ZONE}": TARGET_A}

LISTENER = """
import socket, selectors, sys
selector = selectors.DefaultSelector()
for address in sys.argv[1].split(","):
    for port in sys.argv[2].split(","):
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind((address, int(port)))
        server.listen(64)
        selector.register(server, selectors.EVENT_READ, "tcp")
    echo = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    echo.bind((address, int(sys.argv[3])))
    selector.register(echo, selectors.EVENT_READ, "udp")
while True:
    for key, _ in selector.select():
        if key.data == "tcp":
            connection, _ = key.fileobj.accept()
            connection.close()
        else:
            data, peer = key.fileobj.recvfrom(512)
            key.fileobj.sendto(data, peer)
"""


def _zone_server(root: Path, coredns: Path) -> list[str]:
    """CoreDNS answering TEST_ZONE from NAMES, on TARGET_DNS only (its config under ``root``)."""
    hosts = "\n".join(f"            {address} {name}" for name, address in NAMES.items())
    corefile = root / "zone.Corefile"
    corefile.write_text(f"{TEST_ZONE}:53 {{\n    bind {TARGET_DNS}\n    hosts {{\n{hosts}\n    }}\n}}\n")
    return [str(coredns), "-conf", str(corefile), "-dns.port", "53"]


def start_targets(ledger: HostLedger, root: Path, coredns: Path) -> list[subprocess.Popen[bytes]]:
    """The namespace, its veth and addresses (recorded in the ledger), the listener process and
    the zone's DNS server.

    The listener's script and the server's config live under ``root`` (the node's), so the
    ledger's undo finds the processes by that path even if nobody stops them."""
    ledger.netns(TARGETS_NETNS)
    ledger.link(HOST_SIDE, "type", "veth", "peer", "name", TARGET_SIDE)
    run("ip", "link", "set", TARGET_SIDE, "netns", TARGETS_NETNS)
    run("ip", "addr", "add", f"{GATEWAY}/24", "dev", HOST_SIDE)
    run("ip", "link", "set", HOST_SIDE, "up")
    inside = ("ip", "netns", "exec", TARGETS_NETNS)
    for address in (TARGET_A, TARGET_B, TARGET_DNS):
        run(*inside, "ip", "addr", "add", f"{address}/24", "dev", TARGET_SIDE)
    run(*inside, "ip", "link", "set", TARGET_SIDE, "up")
    run(*inside, "ip", "link", "set", "lo", "up")
    run(*inside, "ip", "route", "add", "default", "via", GATEWAY)
    script = root / "listener.py"
    script.write_text(LISTENER)
    with (root / "listener.log").open("ab") as log:  # never the caller's stdout: `up --node` returns at once
        listener = subprocess.Popen([*inside, sys.executable, str(script), f"{TARGET_A},{TARGET_B}",
                                     ",".join(map(str, PORTS)), str(UDP_PORT)], start_new_session=True,
                                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        zone = subprocess.Popen([*inside, *_zone_server(root, coredns)], start_new_session=True,
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    wait_for(lambda: run(*inside, "ss", "-ltn").stdout.count("LISTEN") >= 2 * len(PORTS)
             and run(*inside, "ss", "-lun").stdout.count(f":{UDP_PORT} ") >= 3, 10, "the listeners and the zone's server")
    return [listener, zone]
