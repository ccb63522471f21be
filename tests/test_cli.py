"""The console script as operators run it: exit codes, stdout and stderr."""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import stat
import subprocess
from pathlib import Path

import pytest
import yaml
from cryptography import x509

from tests.support import CLI, session_pod

POLICY = {"mode": "allowlist", "rules": [{"cidr": "10.0.0.1/8", "port": 443, "protocol": "tcp"},
                                         {"cidr": "2001:db8::/32", "port": 8000, "end_port": 8100, "protocol": "SCTP"}]}


def run(*args: str, stdin: str | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CLI, *args], input=stdin, capture_output=True, text=True, cwd=cwd, timeout=60)


def write(tmp_path: Path, manifest: object, name: str = "pod.yaml") -> str:
    path = tmp_path / name
    path.write_text(manifest if isinstance(manifest, str) else yaml.safe_dump(manifest))
    return str(path)


def test_render_prints_the_networkpolicy_and_warnings(tmp_path: Path) -> None:
    pod = session_pod(name="p1", session_id="s-1", policy=POLICY, namespace="sessions")
    pod["metadata"]["uid"] = "1234-uid"
    result = run("render", "-f", write(tmp_path, pod), "-o", "json")
    assert result.returncode == 0, result.stderr
    policy = json.loads(result.stdout)
    assert policy["metadata"]["name"] == "sortie-egress-s-1" and policy["metadata"]["namespace"] == "sessions"
    assert policy["metadata"]["ownerReferences"][0]["uid"] == "1234-uid"
    assert policy["spec"]["egress"][2]["ports"] == [{"protocol": "SCTP", "port": 8000, "endPort": 8100}]
    assert result.stderr == 'warning: rules[0].cidr: "10.0.0.1/8" has host bits set; using 10.0.0.0/8\n'


def test_render_reads_yaml_from_stdin_and_prints_yaml(tmp_path: Path) -> None:
    result = run("render", "-f", "-", "--dns", "any", stdin=yaml.safe_dump(session_pod(session_id="s2", policy=POLICY)))
    assert result.returncode == 0, result.stderr
    document = yaml.safe_load(result.stdout)
    assert document["kind"] == "NetworkPolicy" and document["spec"]["egress"][0] == {
        "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]}


def test_render_without_policy_prints_nothing_and_succeeds(tmp_path: Path) -> None:
    result = run("render", "-f", write(tmp_path, session_pod()))
    assert (result.returncode, result.stdout) == (0, "")
    assert "no egress policy" in result.stderr


def test_render_invalid_policy_lists_each_problem(tmp_path: Path) -> None:
    bad = {"mode": "allowlist", "rules": [{"cidr": "10.0.0.300/8"}, {"cidr": "10.0.0.0/8", "port": True}]}
    result = run("render", "-f", write(tmp_path, session_pod(policy=bad)))
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.splitlines() == ['error: rules[0].cidr: "10.0.0.300/8" is not an IP network',
                                          "error: rules[1].port: must be an integer, got true"]


def test_check_is_silent_on_success_and_prints_warnings(tmp_path: Path) -> None:
    clean = run("check", "-f", write(tmp_path, session_pod(policy={"mode": "denylist", "rules": [{"cidr": "10.0.0.0/8"}]})))
    assert (clean.returncode, clean.stdout, clean.stderr) == (0, "", "")
    warned = run("check", "-f", write(tmp_path, session_pod(policy={"mode": "denylist", "rules": [{"cidr": "10.0.0.0/8", "port": 22}]})))
    assert warned.returncode == 0 and warned.stderr.startswith("warning: rules[0]: a denylist cannot deny single ports")


def test_check_rejects_a_bad_session_id(tmp_path: Path) -> None:
    result = run("check", "-f", write(tmp_path, session_pod(session_id="UPPER", policy={"mode": "allowlist"})))
    assert result.returncode == 1 and "cannot name a NetworkPolicy" in result.stderr


@pytest.mark.parametrize(("content", "message"), [
    ("kind: Service\nmetadata: {name: x}\n", "must be a Pod manifest"),
    ("a: [\n", "is not YAML or JSON"),
    ("kind: Pod\n---\nkind: Pod\n", "exactly one manifest, found 2"),
])
def test_unusable_manifest_is_exit_2_with_a_reason(tmp_path: Path, content: str, message: str) -> None:
    result = run("check", "-f", write(tmp_path, content))
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


def test_missing_file_is_exit_2() -> None:
    result = run("render", "-f", "/nonexistent/pod.yaml")
    assert result.returncode == 2 and "cannot read /nonexistent/pod.yaml" in result.stderr


def test_bad_dns_flag_is_a_usage_error(tmp_path: Path) -> None:
    result = run("render", "-f", write(tmp_path, session_pod(policy=POLICY)), "--dns", "10.0.0.300")
    assert result.returncode == 2 and "DNS destination" in result.stderr


def test_certs_generate_writes_a_usable_set(tmp_path: Path) -> None:
    out = tmp_path / "certs"
    result = run("certs", "generate", "--out", str(out), "--hosts", "webhook.example.svc,127.0.0.1")
    assert result.returncode == 0, result.stderr
    assert base64.b64decode(result.stdout.strip()) == (out / "ca.crt").read_bytes()
    assert stat.S_IMODE(os.stat(out / "tls.key").st_mode) == 0o600
    cert = x509.load_pem_x509_certificate((out / "tls.crt").read_bytes())
    ca = x509.load_pem_x509_certificate((out / "ca.crt").read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["webhook.example.svc"]
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    cert.verify_directly_issued_by(ca)
    lifetime = cert.not_valid_after_utc - dt.datetime.now(dt.timezone.utc)
    assert dt.timedelta(days=360) < lifetime <= dt.timedelta(days=366)


def test_certs_generate_defaults_to_certs_folder_and_service_name(tmp_path: Path) -> None:
    result = run("certs", "generate", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    cert = x509.load_pem_x509_certificate((tmp_path / "certs" / "tls.crt").read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    assert "sortie-egress.sortie-system.svc" in names


def test_review_against_nothing_listening_is_exit_2(tmp_path: Path) -> None:
    from tests.cluster.harness import free_port

    result = run("review", "-f", write(tmp_path, session_pod(policy=POLICY)), "--url", f"https://127.0.0.1:{free_port()}/mutate")
    assert result.returncode == 2 and "cannot reach" in result.stderr


def test_review_shows_decision_warnings_and_patched_pod(tmp_path: Path) -> None:
    from tests.support import WebhookProcess, generate_certs

    generate_certs(tmp_path / "c")
    server = WebhookProcess(tmp_path / "c", tmp_path / "log").start()
    try:
        url = f"{server.url}/mutate"
        ok = run("review", "-f", write(tmp_path, session_pod(policy=POLICY)), "--url", url, "--ca", str(tmp_path / "c" / "ca.crt"))
        bad = run("review", "-f", write(tmp_path, session_pod(policy="{"), "bad.yaml"), "--url", url,
                  "--ca", str(tmp_path / "c" / "ca.crt"))
        untrusted = run("review", "-f", write(tmp_path, session_pod(policy=POLICY)), "--url", url)
    finally:
        server.stop()
    assert ok.returncode == 0, ok.stderr
    assert "decision: allowed" in ok.stderr and "warning: rules[0].cidr" in ok.stderr
    assert yaml.safe_load(ok.stdout)["metadata"]["labels"]["sortie.io/egress-mode"] == "allowlist"
    assert bad.returncode == 1 and "decision: denied" in bad.stderr and "(code 422)" in bad.stderr
    assert untrusted.returncode == 2 and "CERTIFICATE_VERIFY_FAILED" in untrusted.stderr


def test_serve_generates_local_certificates_when_none_are_given(tmp_path: Path) -> None:
    import signal
    import ssl
    import urllib.request

    from tests.cluster.harness import free_port, wait_for

    port = free_port()
    process = subprocess.Popen([CLI, "serve", "--host", "127.0.0.1", "--port", str(port)], cwd=tmp_path,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        ca = tmp_path / "certs" / "ca.crt"
        wait_for(ca.exists, 20, "local certificates")

        def healthy() -> bool:
            context = ssl.create_default_context(cafile=str(ca))
            with urllib.request.urlopen(f"https://127.0.0.1:{port}/healthz", context=context, timeout=2) as reply:
                return reply.status == 200

        wait_for(healthy, 20, "the webhook on local certificates")
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=20)
    # uvicorn shuts down gracefully, then re-raises SIGTERM so the exit status tells why it ended.
    assert process.returncode in (0, -signal.SIGTERM)
    assert b"Finished server process" in stderr
    assert b"generated local certificates in certs/" in stderr


def test_serve_refuses_half_a_certificate_pair() -> None:
    result = run("serve", "--tls-cert", "x.crt")
    assert result.returncode == 2 and "--tls-cert and --tls-key go together" in result.stderr


@pytest.mark.parametrize("command", ["audit", "controller"])
@pytest.mark.parametrize("content", [None, "-----BEGIN CERTIFICATE-----\n", "apiVersion: v1\nkind: Config\n"])
def test_unusable_kubeconfig_is_exit_2_without_a_traceback(tmp_path: Path, command: str, content: str | None) -> None:
    path = tmp_path / "kubeconfig"
    if content is not None:
        path.write_text(content)
    result = run(command, "--kubeconfig", str(path), *(["--metrics-port", "0"] if command == "controller" else []))
    assert result.returncode == 2, result.stderr
    assert "is not a usable kubeconfig" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(("flags", "message"), [
    (["--canary-port", "9000", "--canary-address", "nope"], "--canary-address must be an IP address to listen on, not 'nope'"),
    (["--canary-port", "9000", "--canary-address", "10.0.0.300"], "--canary-address must be an IP address"),
    (["--canary-port", "65535"], "--canary-port must be between 1 and 65534 (the closed port is the next), not 65535"),
    (["--canary-tls-secret", "x"], "--canary-tls-secret needs --canary-port"),
])
def test_controller_refuses_a_canary_it_cannot_serve_before_touching_the_cluster(flags: list[str], message: str) -> None:
    result = run("controller", "--kubeconfig", "/nonexistent", *flags)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr, result.stderr


def test_serve_keeps_idle_connections_longer_than_the_api_server_does_and_says_why() -> None:
    result = run("serve", "--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    assert "API server's own idle timeout (90 s" in text and "(default 120)" in text
    from sortie_egress.server.serve import ServeOptions

    assert ServeOptions(host="h", port=1).keep_alive_seconds > 90


@pytest.mark.parametrize("flag", [["--dns", "any"], ["--controller-identity", "x"], ["--privileged-user", "x"]])
def test_serve_flags_that_did_nothing_are_gone(flag: list[str]) -> None:
    result = run("serve", *flag)
    assert result.returncode == 2 and "unrecognized arguments" in result.stderr


def test_a_bound_session_pod_is_refused_by_check(tmp_path: Path) -> None:
    pod = session_pod(policy={"mode": "allowlist", "rules": []})
    pod["spec"]["nodeName"] = "node-1"
    result = run("check", "-f", write(tmp_path, pod))
    assert result.returncode == 1 and "spec.nodeName is set" in result.stderr


def test_a_backend_from_the_environment_is_checked_like_the_flag(tmp_path: Path) -> None:
    manifest = write(tmp_path, session_pod(policy={"mode": "allowlist", "rules": [{"fqdn": "api.example.com"}]}))
    env = {**os.environ, "SORTIE_EGRESS_BACKEND": "Cilium"}
    typo = subprocess.run([CLI, "check", "-f", manifest], capture_output=True, text=True, env=env)
    assert typo.returncode == 2 and ("argument --backend: 'Cilium' is not a backend (choose from networkpolicy, "
                                     "clusternetworkpolicy, cilium; $SORTIE_EGRESS_BACKEND counts too)") in typo.stderr
    env["SORTIE_EGRESS_BACKEND"] = "cilium"
    assert subprocess.run([CLI, "check", "-f", manifest], capture_output=True, text=True, env=env).returncode == 0
    flag = subprocess.run([CLI, "check", "-f", manifest, "--backend", "bogus"], capture_output=True, text=True)
    assert flag.returncode == 2 and "'bogus' is not a backend" in flag.stderr


def test_render_prints_the_node_guard_for_the_dns_it_is_given() -> None:
    """What an operator with another --dns applies instead of the shipped file (docs/operations.md)."""
    shipped = run("render", "--node-guard", "-o", "json")
    assert shipped.returncode == 0, shipped.stderr
    assert json.loads(shipped.stdout)["spec"]["egressDeny"] == [{"toEntities": ["host", "remote-node", "health"]}]
    node_local = run("render", "--node-guard", "--dns", "cluster,169.254.20.10", "-o", "json")
    assert node_local.returncode == 0, node_local.stderr
    [deny] = json.loads(node_local.stdout)["spec"]["egressDeny"]
    assert [p for entry in deny["toPorts"] for p in entry["ports"] if p["protocol"] == "UDP"] == [
        {"port": "1", "protocol": "UDP", "endPort": 52}, {"port": "54", "protocol": "UDP", "endPort": 65535}]
    both = run("render", "--node-guard", "--session-baseline")
    assert both.returncode == 2 and "not allowed with argument" in both.stderr, both.stderr
