"""The Dockerfile: hadolint-clean, multi-stage, non-root, only the venv in the final image."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
HADOLINT = Path(sys.prefix) / "bin" / "hadolint"

Instruction = tuple[str, str]


def _instructions() -> list[Instruction]:
    """(KEYWORD, arguments) per instruction, continuation lines joined, comments dropped."""
    logical: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    split = [line.split(None, 1) for line in logical]
    return [(parts[0].upper(), parts[1] if len(parts) > 1 else "") for parts in split]


def _stages() -> list[list[Instruction]]:
    stages: list[list[Instruction]] = []
    for keyword, args in _instructions():
        if keyword == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((keyword, args))
    return stages


@pytest.mark.skipif(not HADOLINT.exists(), reason=f"hadolint not installed at {HADOLINT}")
def test_hadolint_is_clean() -> None:
    done = subprocess.run(
        [str(HADOLINT), "--format", "json", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    findings = json.loads(done.stdout or "[]")
    assert findings == [], findings
    assert done.returncode == 0, done.stderr


def test_multi_stage_from_python_311_slim() -> None:
    stages = _stages()
    assert len(stages) >= 2
    assert stages[0][0][1].split()[0] == "python:3.11-slim"
    assert stages[-1][0][1].split() == ["python:3.11-slim"]


def test_final_stage_holds_only_the_venv() -> None:
    final = _stages()[-1]
    keywords = [k for k, _ in final]
    assert "RUN" not in keywords, "no package manager or build step in the final image"
    copies = [args for k, args in final if k in ("COPY", "ADD")]
    assert copies
    assert all(args.startswith("--from=builder") for args in copies)
    assert any("/opt/streamd" in args for args in copies)


def test_final_user_is_numeric_non_root() -> None:
    users = [args for k, args in _stages()[-1] if k == "USER"]
    assert users, "final stage must set USER"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit()
    assert int(uid) > 0
    assert not gid or int(gid) > 0


def test_entrypoint_command_and_port() -> None:
    final = dict(_stages()[-1])
    assert json.loads(final["ENTRYPOINT"]) == ["streamd"]
    assert json.loads(final["CMD"]) == ["run", "-c", "/etc/streamd/streamd.toml"]
    assert final["EXPOSE"].split() == ["9464"]


def test_dockerignore_lets_in_exactly_what_the_build_copies() -> None:
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "*", "allow-list: ignore everything by default (.venv, .git, tests)"
    allowed = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    builder = _stages()[0]
    sources: set[str] = set()
    for keyword, args in builder:
        if keyword == "COPY" and "--from=" not in args:
            *srcs, _dest = shlex.split(args)
            sources.update(s.rstrip("/") for s in srcs)
    assert sources
    assert sources <= allowed
    for name in sources:
        assert (ROOT / name).exists(), f"the build copies {name}, which is missing"
