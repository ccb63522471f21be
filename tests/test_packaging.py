"""The container image's install steps, run in a fresh virtual environment (no container engine here),
and the kubectl plugin."""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import session_pod

ROOT = Path(__file__).resolve().parent.parent


def _dockerfile() -> str:
    return (ROOT / "Dockerfile").read_text()


def _build_stage_steps() -> tuple[list[str], list[str]]:
    """The build stage's COPY sources and RUN commands, continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", _dockerfile())
    build = text.split("FROM ", 2)[1]
    copies = [line.split()[1:-1] for line in build.splitlines() if line.startswith("COPY ")]
    runs = [line[4:] for line in build.splitlines() if line.startswith("RUN ")]
    return [source for sources in copies for source in sources], runs


def test_final_image_runs_as_numeric_non_root_with_the_cli_as_entrypoint() -> None:
    final = _dockerfile().split("FROM ", 2)[2]
    assert re.search(r"^USER 65532:65532$", final, re.M)
    assert 'ENTRYPOINT ["sortie-egress"]' in final
    assert "pip install" not in final and "gcc" not in final


@pytest.mark.timeout(600)
def test_image_install_steps_work_in_a_fresh_virtualenv(tmp_path: Path) -> None:
    sources, runs = _build_stage_steps()
    src = tmp_path / "src"
    src.mkdir()
    for source in sources:  # exactly what the Dockerfile copies, nothing else
        origin = ROOT / source
        if origin.is_dir():
            shutil.copytree(origin, src / source, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(origin, src / source)
    prefix = tmp_path / "opt-sortie"
    for command in runs:
        command = command.replace("/opt/sortie", str(prefix)).replace("python -m venv", f"{sys.executable} -m venv")
        result = subprocess.run(["bash", "-c", command], cwd=src, capture_output=True, text=True, timeout=540)
        assert result.returncode == 0, result.stderr[-2000:]
    cli = prefix / "bin" / "sortie-egress"
    version = subprocess.run([str(cli), "--version"], capture_output=True, text=True, cwd=tmp_path)
    assert version.returncode == 0 and version.stdout.startswith("sortie-egress ")
    import yaml

    pod = tmp_path / "pod.yaml"
    pod.write_text(yaml.safe_dump(session_pod(policy={"mode": "allowlist", "rules": [{"cidr": "10.0.0.0/8"}]})))
    rendered = subprocess.run([str(cli), "render", "-f", str(pod)], capture_output=True, text=True, cwd=tmp_path)
    assert rendered.returncode == 0 and "kind: NetworkPolicy" in rendered.stdout, rendered.stderr
    # The injected wait under its name and under the name the release before the rename injected
    # (issue 23: its pods keep starting on this image), from the image's own interpreter.
    for module in ("sortie_egress.wait", "webhook.wait"):
        ran = subprocess.run([str(prefix / "bin" / "python"), "-m", module, "--canary", "127.0.0.1", "--port", "1",
                              "--timeout", "0.2"], capture_output=True, text=True, cwd=tmp_path, timeout=30)
        assert ran.returncode == 1 and "was not seen enforced" in ran.stderr, (module, ran.returncode, ran.stderr[-500:])


def test_kubectl_finds_the_plugin(tmp_path: Path) -> None:
    import yaml

    bin_dir = Path(sys.executable).parent
    assert (bin_dir / "kubectl-sortie").exists()
    pod = tmp_path / "pod.yaml"
    pod.write_text(yaml.safe_dump(session_pod(policy={"mode": "allowlist", "rules": [{"cidr": "10.0.0.1/8"}]})))
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    listed = subprocess.run([str(bin_dir / "kubectl"), "plugin", "list"], capture_output=True, text=True, env=env)
    assert "kubectl-sortie" in listed.stdout
    checked = subprocess.run([str(bin_dir / "kubectl"), "sortie", "check", "-f", str(pod)], capture_output=True, text=True, env=env)
    assert checked.returncode == 0 and "host bits set" in checked.stderr
    rendered = subprocess.run([str(bin_dir / "kubectl"), "sortie", "render", "-f", str(pod)], capture_output=True, text=True, env=env)
    assert rendered.returncode == 0 and "sortie-egress-" in rendered.stdout


def test_the_wait_imports_the_standard_library_and_its_own_small_modules_only() -> None:
    """It starts in every session pod (docs/development.md, invariants): no pydantic, no client."""
    probe = ("import sys; import sortie_egress.wait; "
             "print(sorted(m for m in sys.modules if m.split('.')[0] not in sys.stdlib_module_names))")
    loaded = subprocess.run([sys.executable, "-S", "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=30)
    assert loaded.returncode == 0, loaded.stderr
    assert ast.literal_eval(loaded.stdout) == ["__main__", "sortie_egress", "sortie_egress.admission", "sortie_egress.admission.session",
                                   "sortie_egress.constants", "sortie_egress.enforcement_wait",
                                   "sortie_egress.enforcement_wait.injection", "sortie_egress.enforcement_wait.protocol",
                                   "sortie_egress.wait"]
