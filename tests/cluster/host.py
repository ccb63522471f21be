"""Every change the test node makes to this host, recorded before it is made, undone in reverse.

The node needs a bridge, veths, network namespaces, routes, a sysctl, iptables
rules and ipsets (kube-router's), mounts and cgroups (containerd's and the
kubelet's). Tests must leave the host exactly as they found it, also when they
fail or are interrupted. So each change is appended to a ledger file *before*
it is made, and ``undo`` replays the ledger backwards: from the same process at
teardown, or from a later run that finds a ledger left behind by one that died.

Packet filtering is restored whole: the nftables ruleset (which is what
iptables-nft writes; every family) and ``ipset save`` are taken first, and put
back at the end, rules before sets since rules reference sets, so whatever
kube-router or a CNI plugin added is gone without having to know its names.
(``iptables-restore`` of a snapshot is not enough: it leaves tables the
snapshot does not mention untouched.) Likewise processes that name the node's
root in their command line (containerd shims outlive the kubelet's cgroups)
are killed, and network namespaces that appeared during the run (the CNI's
pod sandboxes) are deleted.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

log = logging.getLogger("sortie.tests.host")

#: The address range of everything the node's tests create (RFC 2544 benchmarking space:
#: neither private nor routed on the internet). A blackhole route keeps any of it from
#: ever leaving through the machine's own interfaces, whatever else is up or down.
TEST_RANGE = "198.18.0.0/15"
#: Links a dataplane names this way (Cilium's); routes on them are the dataplane's.
DATAPLANE_LINK_PREFIXES = ("cilium_", "lxc")


def run(*argv: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(list(argv), capture_output=True, text=True, input=input)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr.strip()}")
    return result


class HostLedger:
    """An append-only record of host changes in ``path`` (JSON lines), and their undoing."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _record(self, kind: str, **details: Any) -> None:
        with self.path.open("a", encoding="utf-8") as ledger:
            ledger.write(json.dumps({"kind": kind, **details}) + "\n")
            ledger.flush()
            os.fsync(ledger.fileno())

    def entries(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    # --- changes ----------------------------------------------------------------

    def save_packet_filter(self) -> None:
        """Snapshot the nftables ruleset and ipsets; ``undo`` restores exactly this."""
        ruleset = run("nft", "list", "ruleset").stdout
        sets = run("ipset", "save").stdout
        self._record("packet-filter", ruleset=ruleset, ipsets=sets)

    def processes(self, marker: str) -> None:
        """Processes whose command line names ``marker`` (the node's root) are killed at undo."""
        self._record("processes", marker=marker)

    def network_namespaces(self) -> None:
        """Network namespaces that appear from now on (the CNI's pod sandboxes) are deleted at undo."""
        self._record("network-namespaces", before=netns_names())

    def ip_rules(self) -> None:
        """IPv4 policy-routing rules as they are now (Cilium moves ``lookup local`` and adds its
        proxy's): at undo, rules that appeared are deleted and rules that went are put back."""
        self._record("ip-rules", before=[rule_args(rule) for rule in ip_json("rule")])

    def routes(self) -> None:
        """Routes in every table as they are now: at undo, routes that appeared since on links
        that still exist (Cilium's proxy tables route via ``lo``) are deleted."""
        self._record("routes", before=[route_args(route) for route in ip_json("route", "show", "table", "all")])

    def sysctl(self, key: str, value: str) -> None:
        path = Path("/proc/sys") / key.replace(".", "/")
        old = path.read_text().strip()
        self._record("sysctl", key=key, old=old)
        path.write_text(value)

    def link(self, name: str, *create: str) -> None:
        """``ip link add NAME <create...>``: deleted (with any peer) at undo."""
        self._record("link", name=name)
        run("ip", "link", "add", name, *create)

    def adopt_link(self, name: str) -> None:
        """A link something else will create (the CNI bridge): deleted at undo all the same."""
        self._record("link", name=name)

    def links_named(self, prefix: str) -> None:
        """Links whose name begins with ``prefix`` that appear from now on (Cilium's ``lxc*``) are
        deleted at undo."""
        self._record("links-named", prefix=prefix, before=link_names(prefix))

    def netns(self, name: str) -> None:
        self._record("netns", name=name)
        run("ip", "netns", "add", name)

    def route(self, *spec: str) -> None:
        self._record("route", spec=list(spec))
        run("ip", "route", "add", *spec)

    def folder(self, path: Path) -> None:
        """A state folder (containerd's, kubelet's): mounts under it are undone, then it is removed."""
        self._record("folder", path=str(path))
        path.mkdir(parents=True, exist_ok=True)

    def host_paths(self, paths: tuple[str, ...]) -> None:
        """Folders the node's programs use whatever they are told (the kubelet's device-plugins and
        container-log links, libcni's cache, containerd's shim sockets, network namespace files):
        at undo, one that did not exist is removed, and in one that did, what appeared since."""
        state = {path: sorted(os.listdir(path)) if os.path.isdir(path) else None for path in paths}
        self._record("host-paths", state=state)

    def cgroup(self, relative: str) -> None:
        """A cgroup subtree (the kubelet's cgroupRoot), made under every v1 hierarchy (or in v2)."""
        self._record("cgroup", relative=relative)
        base = Path("/sys/fs/cgroup")
        hierarchies = [base] if (base / "cgroup.controllers").exists() else [p for p in base.iterdir() if p.is_dir()]
        for hierarchy in hierarchies:
            folder = hierarchy / relative
            folder.mkdir(exist_ok=True)
            for inherited in ("cpuset.cpus", "cpuset.mems"):  # v1 cpuset: empty means no task may join
                if (folder / inherited).exists() and not (folder / inherited).read_text().strip():
                    (folder / inherited).write_text((hierarchy / inherited).read_text())

    # --- undo -------------------------------------------------------------------

    def undo(self) -> list[str]:
        """Undo every recorded change, newest first; returns what could not be undone."""
        problems: list[str] = []
        entries = list(reversed(self.entries()))
        # Processes first, whenever they were recorded: a kube-router still running would
        # write its rules again after the ruleset is restored.
        entries.sort(key=lambda entry: entry["kind"] != "processes")
        for entry in entries:
            try:
                getattr(self, "_undo_" + entry["kind"].replace("-", "_"))(entry)
            except Exception as exc:  # keep going: undo as much as can be undone
                problems.append(f"{entry}: {exc}")
        if not problems:
            self.path.unlink(missing_ok=True)
        return problems

    def _undo_packet_filter(self, entry: dict[str, Any]) -> None:
        run("nft", "-f", "-", input="flush ruleset\n" + entry["ruleset"])
        before = {line.split()[1] for line in entry["ipsets"].splitlines() if line.startswith("create ")}
        for line in run("ipset", "save").stdout.splitlines():
            if line.startswith("create ") and line.split()[1] not in before:
                run("ipset", "destroy", line.split()[1])
        if run("nft", "list", "ruleset").stdout != entry["ruleset"]:
            raise RuntimeError("the nftables ruleset differs from the one saved before the node started")

    def _undo_processes(self, entry: dict[str, Any]) -> None:
        marker = entry["marker"].encode()

        def naming_it() -> set[int]:
            found = set()
            for proc in Path("/proc").iterdir():
                if proc.name.isdigit() and int(proc.name) != os.getpid():
                    try:
                        if marker in (proc / "cmdline").read_bytes():
                            found.add(int(proc.name))
                    except OSError:
                        continue  # gone meanwhile
            return found

        kill_until_gone(naming_it, f"naming {entry['marker']}")

    def _undo_network_namespaces(self, entry: dict[str, Any]) -> None:
        for name in netns_names():
            if name not in entry["before"]:
                delete_netns(name)

    def _undo_sysctl(self, entry: dict[str, Any]) -> None:
        (Path("/proc/sys") / entry["key"].replace(".", "/")).write_text(entry["old"])

    def _undo_ip_rules(self, entry: dict[str, Any]) -> None:
        before = [list(rule) for rule in entry["before"]]
        now = [rule_args(rule) for rule in ip_json("rule")]
        # Put back before taking away: between the two, `lookup local` would be missing, and with it
        # every local address (loopback included) for whatever runs meanwhile.
        for rule in before:
            if rule not in now:
                run("ip", "rule", "add", *rule)
        for rule in now:
            if rule not in before:
                run("ip", "rule", "del", *rule)

    def _undo_routes(self, entry: dict[str, Any]) -> None:
        before = [list(route) for route in entry["before"]]
        for route in ip_json("route", "show", "table", "all"):
            args = route_args(route)
            # Only what a dataplane makes: its own tables, or its own links (never a route of the
            # machine's interfaces that changed meanwhile for reasons of its own).
            ours = (str(route.get("table", "main")) not in ("main", "local", "default")
                    or str(route.get("dev", "")).startswith(DATAPLANE_LINK_PREFIXES))
            if ours and args not in before:
                run("ip", "route", "del", *args, check=False)

    def _undo_link(self, entry: dict[str, Any]) -> None:
        if run("ip", "link", "show", entry["name"], check=False).returncode == 0:
            run("ip", "link", "delete", entry["name"])

    def _undo_links_named(self, entry: dict[str, Any]) -> None:
        for name in link_names(entry["prefix"]):
            if name not in entry["before"]:
                run("ip", "link", "delete", name, check=False)

    def _undo_netns(self, entry: dict[str, Any]) -> None:
        if entry["name"] in netns_names():
            delete_netns(entry["name"])

    def _undo_route(self, entry: dict[str, Any]) -> None:
        run("ip", "route", "del", *entry["spec"], check=False)

    def _undo_folder(self, entry: dict[str, Any]) -> None:
        root = Path(entry["path"])
        for mount in sorted(mounts_under(root), key=len, reverse=True):
            run("umount", "-l", mount, check=False)
        run("rm", "-rf", "--one-file-system", str(root), check=False)
        if root.exists():
            raise RuntimeError(f"{root} could not be removed")

    def _undo_host_paths(self, entry: dict[str, Any]) -> None:
        for path, before in entry["state"].items():
            if not os.path.isdir(path):
                continue
            for mount in sorted(mounts_under(Path(path)), key=len, reverse=True):
                run("umount", "-l", mount, check=False)
            if before is None:
                run("rm", "-rf", "--one-file-system", path)
                continue
            for name in set(os.listdir(path)) - set(before):
                run("rm", "-rf", "--one-file-system", os.path.join(path, name))

    def _undo_cgroup(self, entry: dict[str, Any]) -> None:
        for folder in cgroup_folders(entry["relative"]):
            kill_cgroup_tree(folder)
            for child in sorted((p for p in folder.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
                rmdir_once_released(child)
            rmdir_once_released(folder)


def delete_netns(name: str) -> None:
    """``ip netns delete``, also where the namespace's file is mounted more than once.

    containerd bind-mounts its sandboxes' namespaces under /run/netns; a later ``ip netns add``
    bind-mounts /run/netns onto itself recursively, which copies those mounts. ``ip netns
    delete`` detaches one mount and fails on the unlink while another is there ("busy"), so
    each further layer is detached before the next try."""
    path = f"/run/netns/{name}"
    for _ in range(8):
        result = run("ip", "netns", "delete", name, check=False)
        if result.returncode == 0 or name not in netns_names():
            return
        if "busy" not in result.stderr.lower():
            break
        run("umount", "-l", path, check=False)
    raise RuntimeError(f"ip netns delete {name} failed: {result.stderr.strip()}")


def link_names(prefix: str) -> list[str]:
    return [link["ifname"] for link in json.loads(run("ip", "-j", "link", "show").stdout or "[]")
            if link["ifname"].startswith(prefix)]


def ip_json(*argv: str) -> list[dict[str, Any]]:
    """``ip -4 -j ARGV``, parsed."""
    return json.loads(run("ip", "-4", "-j", *argv).stdout or "[]")


def rule_args(rule: dict[str, Any]) -> list[str]:
    """The ``ip rule add/del`` arguments that make ``rule`` (one entry of ``ip -j rule``)."""
    args = ["pref", str(rule["priority"])]
    if rule.get("src", "all") != "all":
        args += ["from", f"{rule['src']}/{rule.get('srclen', 32)}"]
    if "dst" in rule:
        args += ["to", f"{rule['dst']}/{rule.get('dstlen', 32)}"]
    if "fwmark" in rule:
        args += ["fwmark", f"{rule['fwmark']}/{rule['fwmask']}" if "fwmask" in rule else rule["fwmark"]]
    for key in ("iif", "oif"):
        if key in rule:
            args += [key, rule[key]]
    if rule.get("action", "lookup") not in ("lookup", "to_tbl"):
        args += [rule["action"]]
    elif "table" in rule:
        args += ["lookup", str(rule["table"])]
    return args


def route_args(route: dict[str, Any]) -> list[str]:
    """The ``ip route del`` arguments that name ``route`` (one entry of ``ip -j route show table all``)."""
    args = [route.get("type", "unicast"), route["dst"], "table", str(route.get("table", "main"))]
    for key in ("dev", "proto", "scope"):
        value = route.get("protocol" if key == "proto" else key)
        if value is not None:
            args += [key, str(value)]
    if "gateway" in route:
        args += ["via", route["gateway"]]
    return args


def netns_names() -> list[str]:
    """Named network namespaces (``ip netns list`` prints "name (id: N)" for some)."""
    return [line.split()[0] for line in run("ip", "netns", "list").stdout.splitlines() if line.strip()]


def mounts_under(root: Path) -> list[str]:
    found = []
    prefix = str(root.resolve()).rstrip("/") + "/"
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point.startswith(prefix) or point == prefix.rstrip("/"):
            found.append(point)
    return found


def cgroup_folders(relative: str) -> list[Path]:
    base = Path("/sys/fs/cgroup")
    candidates = [base / relative] if (base / "cgroup.controllers").exists() else [
        controller / relative for controller in base.iterdir() if controller.is_dir()]
    return [folder for folder in candidates if folder.is_dir()]


def kill_until_gone(find: Callable[[], set[int]], what: str, timeout: float = 10.0) -> None:
    """SIGKILL whatever ``find`` returns until it returns nothing (processes may fork meanwhile)."""
    deadline = time.monotonic() + timeout
    while pids := find():
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"processes {sorted(pids)} {what} survived SIGKILL")
        time.sleep(0.05)  # the kernel reaps asynchronously: poll until they are gone


def rmdir_once_released(folder: Path, seconds: float = 10.0) -> None:
    """rmdir a cgroup, waiting while the kernel still releases its killed tasks (EBUSY: seen once
    after a bench run, the cgroup empty a moment later)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            folder.rmdir()
            return
        except OSError as exc:
            if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                raise
        time.sleep(0.1)  # the kernel frees a dying cgroup asynchronously: poll until it lets go


def kill_cgroup_tree(folder: Path) -> None:
    """SIGKILL every process in ``folder`` and below, and wait until they are gone."""
    kill_until_gone(lambda: {int(pid) for procs in folder.rglob("cgroup.procs") for pid in procs.read_text().split()},
                    f"in {folder}")


@contextmanager
def recorded(ledger: HostLedger) -> Iterator[HostLedger]:
    """Undo a ledger left behind by a run that died, then this one's, whatever happens inside."""
    leftovers = ledger.undo()
    if leftovers:
        raise RuntimeError(f"a previous node run left changes that cannot be undone: {leftovers}")
    try:
        yield ledger
    finally:
        problems = ledger.undo()
        if problems:
            raise RuntimeError(f"host changes not undone: {problems}")
