#!/usr/bin/env python3
"""Everything the product renders, written to one folder, so a refactor can show it changed nothing.

Run it before and after a change and ``diff -r`` the two folders (docs/development.md):

    .venv/bin/python scripts/render-all.py /tmp/before
    ... change ...
    .venv/bin/python scripts/render-all.py /tmp/after && diff -r /tmp/before /tmp/after

It renders every Helm ``ci/`` values file (Helm 3 and 4, and the defaults), every kustomization
under ``manifests/``, and through the CLI (the interface that outlives module moves) the check and
render of every example pod and of every policy in the golden corpus on every backend, and the
shipped cluster-wide policies for each ``--dns``. Nothing is sent to a cluster.
"""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "manifests" / "helm" / "sortie-egress"
BACKENDS = ("networkpolicy", "clusternetworkpolicy", "cilium")
DNS = ("cluster", "cidrs:10.96.0.10/32", "any")
SESSION_POD = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": "golden", "namespace": "sessions", "uid": "00000000-0000-4000-8000-000000000001",
                            "labels": {"sortie.io/session-id": "golden-session", "sortie.io/app-id": "app"},
                            "annotations": {}},
               "spec": {"containers": [{"name": "app", "image": "registry.example/app:1"}]}}


def cli_main():  # noqa: ANN201 - whichever package name this checkout has
    sys.path.insert(0, str(ROOT))
    try:
        from sortie_egress.cli import main
    except ImportError:
        from sortie_egress.cli import main  # before the rename (issue 23)
    return main


def run_cli(main, args: list[str]) -> str:  # noqa: ANN001
    """The CLI's stdout, stderr and exit code, as one text."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(args)
        except SystemExit as exc:
            code = exc.code
    return f"# exit {code}\n# stderr:\n{err.getvalue()}# stdout:\n{out.getvalue()}"


def helm_binaries() -> dict[str, Path]:
    sys.path.insert(0, str(ROOT))
    from tests.cluster.helm import find_helm

    return find_helm().by_major()


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    out = Path(argv[0])
    out.mkdir(parents=True, exist_ok=True)
    kubectl = ROOT / ".venv" / "bin" / "kubectl"
    for kustomization in sorted(ROOT.glob("manifests/**/kustomization.yaml")):
        folder = kustomization.parent
        rendered = subprocess.run([str(kubectl), "kustomize", str(folder)], capture_output=True, text=True)
        name = "kustomize-" + str(folder.relative_to(ROOT)).replace("/", "_") + ".yaml"
        (out / name).write_text(rendered.stdout + rendered.stderr)
    for major, helm in helm_binaries().items():
        for values in [None, *sorted((CHART / "ci").glob("*.yaml"))]:
            args = [str(helm), "template", "sortie-egress", str(CHART), "--namespace", "sortie-system"]
            if values is not None:
                args += ["-f", str(values)]
            rendered = subprocess.run(args, capture_output=True, text=True)
            (out / f"{major}-{values.stem if values else 'defaults'}.yaml").write_text(rendered.stdout + rendered.stderr)
    main_cli = cli_main()
    pods = {path.stem: path for path in sorted((ROOT / "examples").glob("*.yaml"))}
    scratch = out / "pods"
    scratch.mkdir(exist_ok=True)
    golden = json.loads((ROOT / "tests" / "golden" / "canonical-policies.json").read_text())["policies"]
    for index, entry in enumerate(golden):
        pod = json.loads(json.dumps(SESSION_POD))
        pod["metadata"]["annotations"]["sortie.io/egress-policy"] = entry["annotation"]
        path = scratch / f"golden-{index:02d}.json"
        path.write_text(json.dumps(pod))
        pods[path.stem] = path
    with (out / "cli.txt").open("w") as report:
        for name, path in pods.items():
            for backend in BACKENDS:
                for command in (["check"], ["render", "-o", "json"]):
                    args = [*command, "-f", str(path), "--backend", backend]
                    report.write(f"\n## {name} {' '.join(command)} {backend}\n" + run_cli(main_cli, args))
        for dns in DNS:
            for shipped in ("--session-baseline", "--node-guard"):
                report.write(f"\n## {shipped} {dns}\n" + run_cli(main_cli, ["render", shipped, "--dns", dns, "-o", "json"]))
    print(f"rendered into {out}: {len(list(out.iterdir()))} files")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
