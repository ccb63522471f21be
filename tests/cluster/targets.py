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


def start_targets(ledger: HostLedger, root: Path) -> subprocess.Popen[bytes]:
    """The namespace, its veth and addresses (recorded in the ledger), and the listener process.

    The listener's script lives under ``root`` (the node's), so the ledger's undo finds the
    process by that path even if nobody stops it."""
    ledger.netns(TARGETS_NETNS)
    ledger.link(HOST_SIDE, "type", "veth", "peer", "name", TARGET_SIDE)
    run("ip", "link", "set", TARGET_SIDE, "netns", TARGETS_NETNS)
    run("ip", "addr", "add", f"{GATEWAY}/24", "dev", HOST_SIDE)
    run("ip", "link", "set", HOST_SIDE, "up")
    inside = ("ip", "netns", "exec", TARGETS_NETNS)
    for address in (TARGET_A, TARGET_B):
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
    wait_for(lambda: run(*inside, "ss", "-ltn").stdout.count("LISTEN") >= 2 * len(PORTS)
             and run(*inside, "ss", "-lun").stdout.count(f":{UDP_PORT} ") >= 2, 10, "the listeners")
    return listener
