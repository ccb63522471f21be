"""Admission latency at a fixed offered load (issue 13): p50/p99/p99.9 at 2,000 and 5,000 admissions/s.

At saturation (bench/admission.py) p99 is queueing; what a cluster feels is the tail at a steady
rate below capacity. `oha` (a Rust load generator, from crates.io) sends requests at a fixed
rate (``-q``) over keep-alive TLS connections, with ``--latency-correction``: a request is timed
from when the schedule said to send it, not from when a free connection sent it, so a stall is
counted for every request it delays (no coordinated omission).

Our webhook and nginx answering a fixed body (the same certificate and TLS versions; the
reference for what the load generator, TLS and loopback add on this machine) run as child
processes and are measured in interleaved rounds at each rate; the summary takes medians.
The body is the ~4.5 KB realistic review of bench/admission.py with one app's policy (the memo
answers, as in a burst of sessions: oha sends one body). Server CPU per request from /proc.

    cargo install oha --version 1.16.0 --locked --root ~/.cache/sortie-egress/oha-1.16.0
    .venv/bin/python bench/latency.py [--rates 2000,5000] [--seconds 20] [--rounds 3] [--connections 16]

A script, not a test: docs/benchmarks.md records its figures (the README the headline ones).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from admission import UID_SLOT, _children, cpu_seconds, request_body, review_template, start_servers  # noqa: E402

OHA_VERSION = "1.16.0"
DEFAULT_OHA = Path.home() / ".cache" / "sortie-egress" / f"oha-{OHA_VERSION}" / "bin" / "oha"
#: Issue 13: p99 at 2,000 admissions/s.
TARGET_P99_MS, TARGET_RATE = 1.0, 2000


@dataclass
class RateResult:
    server: str
    rate: int
    achieved: float
    success: float
    p50_ms: float
    p99_ms: float
    p999_ms: float
    cpu_us_per_request: float
    #: Ours only: the share of admissions our webhook answered within 250 us and 1 ms (its own histogram).
    within_250us: float = float("nan")
    within_1ms: float = float("nan")


def find_oha(explicit: str | None) -> str:
    for candidate in (explicit, os.environ.get("OHA"), str(DEFAULT_OHA), shutil.which("oha")):
        if candidate and Path(candidate).is_file():
            return candidate
    raise SystemExit(f"oha not found: cargo install oha --version {OHA_VERSION} --locked "
                     f"--root {DEFAULT_OHA.parent.parent} (or --oha PATH)")


def corrected_latencies(csv_text: str, warmup: float) -> tuple[list[float], dict[str, int]]:
    """The latencies of the requests sent after ``warmup`` seconds, and every answer's status.

    With ``--latency-correction`` oha's per-request duration runs from when the fixed-rate
    schedule said to send the request (its ``RequestResult::duration``), so a request sent late
    because every connection was busy is charged the wait. The warm-up is left out: the first
    requests pay for the TLS handshakes of every connection (about 70 ms here), which at 2,000/s
    for 10 s is by itself the p99.
    """
    latencies = []
    statuses: dict[str, int] = {}
    for row in csv_text.splitlines()[1:]:
        fields = row.split(",")
        if len(fields) < 7:
            continue
        statuses[fields[6]] = statuses.get(fields[6], 0) + 1
        if float(fields[0]) >= warmup:
            latencies.append(float(fields[4]))
    return latencies, statuses


def server_buckets(port: int, ca: str) -> dict[str, float]:
    """Our webhook's own admission-time histogram (request received to answer ready): le -> count."""
    context = ssl.create_default_context(cafile=ca)
    with urllib.request.urlopen(f"https://127.0.0.1:{port}/metrics", context=context, timeout=5) as reply:
        text = reply.read().decode()
    return {le: float(count) for le, count in re.findall(
        r'^sortie_egress_admission_duration_seconds_bucket\{endpoint="mutate",le="([^"]+)"\} (\S+)$', text, re.M)}


def server_side_share(before: dict[str, float], after: dict[str, float], bound: str) -> float:
    """The share of the admissions between two readings that our webhook answered within ``bound`` seconds."""
    total = after["+Inf"] - before.get("+Inf", 0.0)
    return (after[bound] - before.get(bound, 0.0)) / max(total, 1.0)


def percentile(ordered: list[float], fraction: float) -> float:
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def run_oha(oha: str, port: int, ca: str, body: Path, rate: int, seconds: float, connections: int, pid: int,
            server: str, warmup: float = 2.0, client_cpus: set[int] | None = None) -> RateResult:
    argv = [oha, "--no-tui", "--output-format", "csv", "--latency-correction", "-q", str(rate), "-z", f"{warmup + seconds}s",
            "-c", str(connections), "-m", "POST", "-T", "application/json", "-D", str(body), "--cacert", ca,
            f"https://127.0.0.1:{port}/mutate"]
    cpu_before = cpu_seconds(pid)
    finished = subprocess.run(argv, capture_output=True, text=True, timeout=warmup + seconds + 60,
                              preexec_fn=(lambda: os.sched_setaffinity(0, client_cpus)) if client_cpus else None)
    cpu = cpu_seconds(pid) - cpu_before
    if finished.returncode != 0:
        raise SystemExit(f"oha failed ({finished.returncode}): {finished.stderr.strip()[-400:]}")
    latencies, statuses = corrected_latencies(finished.stdout, warmup)
    answered = sum(statuses.values())
    if set(statuses) - {"200"}:
        raise SystemExit(f"{server}: answers other than 200 at {rate}/s: {statuses}")
    if not latencies:
        raise SystemExit(f"{server}: no request answered after the warm-up at {rate}/s")
    latencies.sort()
    return RateResult(server=server, rate=rate, achieved=answered / (warmup + seconds), success=answered / max(
                          round(rate * (warmup + seconds)), 1),
                      p50_ms=percentile(latencies, 0.50) * 1000, p99_ms=percentile(latencies, 0.99) * 1000,
                      p999_ms=percentile(latencies, 0.999) * 1000, cpu_us_per_request=cpu / max(answered, 1) * 1e6)


def line(result: RateResult, suffix: str = "") -> str:
    return (f"{result.server:14} offered {result.rate:5}/s achieved {result.achieved:7.0f}/s  success "
            f"{result.success * 100:5.1f}%  p50 {result.p50_ms:6.3f}  p99 {result.p99_ms:6.3f}  p99.9 "
            f"{result.p999_ms:6.3f} ms  server CPU {result.cpu_us_per_request:5.1f} us/req"
            + ("" if result.within_1ms != result.within_1ms else  # NaN: not ours
               f"  answered server-side within 250 us {result.within_250us * 100:6.2f}%, 1 ms {result.within_1ms * 100:6.2f}%")
            + suffix)


def median(runs: list[RateResult]) -> RateResult:
    first = runs[0]
    return RateResult(first.server, first.rate, *(statistics.median(getattr(run, field) for run in runs) for field in
                                                   ("achieved", "success", "p50_ms", "p99_ms", "p999_ms",
                                                    "cpu_us_per_request", "within_250us", "within_1ms")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", default="2000,5000")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--no-pin", dest="pin", action="store_false",
                        help="do not put the server and oha on separate CPUs")
    parser.add_argument("--oha", help=f"the oha binary (default: $OHA, then {DEFAULT_OHA}, then PATH)")
    args = parser.parse_args()
    oha = find_oha(args.oha)
    rates = [int(rate) for rate in args.rates.split(",")]
    names = ("sortie-egress", "nginx") if shutil.which("nginx") else ("sortie-egress",)
    print(f"{subprocess.run([oha, '--version'], capture_output=True, text=True).stdout.strip()}; {args.connections} "
          f"connections; {args.seconds:.0f} s per run after 2 s of warm-up; "
          f"{'server and oha on separate CPUs' if args.pin else 'not pinned'}; {args.rounds} interleaved round(s); {os.cpu_count()} CPUs; "
          f"servers: {', '.join(names)}", flush=True)
    runs: list[RateResult] = []
    with tempfile.TemporaryDirectory(prefix="sortie-bench-latency-") as folder:
        body = Path(folder) / "review.json"
        body.write_bytes(request_body(review_template(), UID_SLOT.encode(), None))
        servers = start_servers(Path(folder), names)
        client_cpus: set[int] | None = None
        if args.pin and len(os.sched_getaffinity(0)) >= 2:
            # The server on one CPU, oha on the rest: neither's threads preempt the other's, as in a
            # cluster where the webhook has its own core and the API server is elsewhere.
            server_cpu, *rest = sorted(os.sched_getaffinity(0))
            client_cpus = set(rest)
            for process, _, _ in servers.values():
                for pid in (process.pid, *_children(process.pid)):
                    os.sched_setaffinity(pid, {server_cpu})
        try:
            for name, (process, port, ca) in servers.items():  # warm-up: connections, caches, the memo
                run_oha(oha, port, ca, body, 1000, 1, args.connections, process.pid, name, 0.5, client_cpus)
            for rate in rates:
                for round_number in range(1, args.rounds + 1):
                    for name, (process, port, ca) in servers.items():
                        before = server_buckets(port, ca) if name == "sortie-egress" else {}
                        result = run_oha(oha, port, ca, body, rate, args.seconds, args.connections, process.pid, name,
                                         client_cpus=client_cpus)
                        if name == "sortie-egress":
                            after = server_buckets(port, ca)
                            result.within_250us = server_side_share(before, after, "0.00025")
                            result.within_1ms = server_side_share(before, after, "0.001")
                        runs.append(result)
                        print(line(result, f"  (round {round_number})"), flush=True)
        finally:
            for process, _, _ in servers.values():
                process.send_signal(signal.SIGTERM)
                process.wait(15)
    print(f"\nmedians over {args.rounds} round(s):")
    for rate in rates:
        at: dict[str, RateResult] = {}
        for name in names:
            result = at[name] = median([run for run in runs if run.server == name and run.rate == rate])
            verdict = ""
            if name == "sortie-egress" and rate == TARGET_RATE:
                verdict = f"  (issue 13: p99 <= {TARGET_P99_MS} ms at {TARGET_RATE}/s: " \
                          f"{'met' if result.p99_ms <= TARGET_P99_MS else 'NOT met'})"
            print(line(result, verdict))
        if "nginx" in at:
            ours, nginx = at["sortie-egress"], at["nginx"]
            print(f"{'':14} at {rate}/s ours - nginx: p50 {ours.p50_ms - nginx.p50_ms:+6.3f}  p99 "
                  f"{ours.p99_ms - nginx.p99_ms:+6.3f}  p99.9 {ours.p999_ms - nginx.p999_ms:+6.3f} ms (what the "
                  f"webhook adds to what this host's TLS, loopback and scheduling cost a fixed answer)")


if __name__ == "__main__":
    main()
