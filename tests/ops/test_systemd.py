"""The systemd unit: `systemd-analyze verify`, its security exposure score, its contract."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from streamd.daemon import SHUTDOWN_MARGIN_S

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "streamd.service"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed on this machine"
)
# systemd-analyze security prints exposure 0.0-10.0; its levels are PERFECT 0.0, SAFE <1.0,
# OK <5.0, MEDIUM <7.5, EXPOSED <9.0, UNSAFE <10, DANGEROUS. --threshold uses 0-100.
OK_THRESHOLD = 49
EXPECTED_MAX_EXPOSURE = 1.5  # measured 1.1 with systemd 252; catches accidental regressions


def _directives() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if line and not line.startswith(("#", "[")) and "=" in line:
            key, value = line.split("=", 1)
            found.setdefault(key, []).append(value)
    return found


@pytest.fixture
def unit_for_this_venv(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this venv's `streamd` (verify checks it exists)."""
    script = Path(sys.prefix) / "bin" / "streamd"
    if not script.exists():
        pytest.skip(f"{script} missing: install the package (pip install -e .)")
    text = UNIT.read_text().replace("ExecStart=/usr/bin/streamd", f"ExecStart={script}")
    copy = tmp_path / "streamd.service"
    copy.write_text(text)
    return copy


@needs_analyze
def test_unit_verifies(unit_for_this_venv: Path) -> None:
    assert SYSTEMD_ANALYZE is not None
    done = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", str(unit_for_this_venv)],
        capture_output=True, text=True, timeout=20, check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == "", done.stderr


@needs_analyze
def test_security_exposure_is_ok_or_better(unit_for_this_venv: Path) -> None:
    assert SYSTEMD_ANALYZE is not None
    done = subprocess.run(
        [
            SYSTEMD_ANALYZE,
            "security",
            "--offline=true",
            f"--threshold={OK_THRESHOLD}",
            "--no-pager",
            str(unit_for_this_venv),
        ],
        capture_output=True, text=True, timeout=20, check=False,
    )
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+) (\w+)", done.stdout)
    assert match, done.stdout + done.stderr
    exposure, level = float(match.group(1)), match.group(2)
    print(f"systemd-analyze security: {exposure} {level}")
    assert done.returncode == 0, f"exposure {exposure} {level} above the OK threshold"
    assert level in {"PERFECT", "SAFE", "OK"}
    assert exposure <= EXPECTED_MAX_EXPOSURE


def test_unit_contract() -> None:
    d = _directives()
    assert d["Type"] == ["notify"]
    assert d["ExecStart"] == ["/usr/bin/streamd run -c /etc/streamd/streamd.toml"]
    assert d["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert d["Restart"] == ["on-failure"]
    assert set(d["RestartPreventExitStatus"][0].split()) == {"77", "78"}
    assert d["LoadCredential"][0].split(":", 1)[0] == "x_bearer_token"
    assert d["StateDirectory"] == ["streamd"]  # -> /var/lib/streamd, spool.dir's parent
    assert d["DynamicUser"] == ["yes"]
    assert d["NoNewPrivileges"] == ["yes"]
    assert d["CapabilityBoundingSet"] == [""]
    assert d["ProtectSystem"] == ["strict"]
    assert set(d["RestrictAddressFamilies"][0].split()) == {"AF_INET", "AF_INET6", "AF_UNIX"}
    assert "@system-service" in d["SystemCallFilter"]
    assert d["MemoryDenyWriteExecute"] == ["yes"]
    watchdog = int(d["WatchdogSec"][0].rstrip("s"))
    assert watchdog > 30 + 20, "must exceed stream.stall_timeout plus a heartbeat interval"
    stop = int(d["TimeoutStopSec"][0].rstrip("s"))
    # The daemon's own bound is kafka.flush_timeout (15 s) + SHUTDOWN_MARGIN_S; SIGKILL must
    # come later than that, with room for a slow disk.
    assert stop >= 15 + SHUTDOWN_MARGIN_S + 10, "must exceed the daemon's shutdown bound"


# What the daemon's stack does at run time, under the kernel's equivalent of
# MemoryDenyWriteExecute (prctl PR_SET_MDWE, Linux >= 6.3): a W+X mapping would fail here.
_MDWE_SCRIPT = textwrap.dedent(
    """
    import asyncio, ctypes, mmap, ssl, sys
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(65, 1, 0, 0, 0) != 0:  # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN
        print("MDWE-UNSUPPORTED"); sys.exit(0)
    try:
        mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
        sys.exit("MDWE is not enforced")
    except OSError:
        pass
    import anyio, httpx, orjson, pydantic, structlog, prometheus_client, uvicorn, h2
    import aiokafka, aiokafka.codec as codec
    import streamd, streamd.ops.sdnotify

    class Rule(pydantic.BaseModel):
        value: str
        tag: str | None = None

    assert Rule.model_validate_json(b'{"value": "cats", "tag": "c"}').tag == "c"
    assert orjson.loads(orjson.dumps({"data": {"id": "1"}}))["data"]["id"] == "1"
    assert codec.zstd_decode(codec.zstd_encode(b"x" * 1000)) == b"x" * 1000
    assert codec.gzip_decode(codec.gzip_encode(b"y" * 100)) == b"y" * 100
    ssl.create_default_context()
    registry = prometheus_client.CollectorRegistry()
    prometheus_client.Counter("t", "t", registry=registry).inc()
    prometheus_client.generate_latest(registry)
    structlog.get_logger().info("mdwe.ok")

    async def main() -> None:
        async def serve(reader, writer):
            await reader.readuntil(b"\\r\\n\\r\\n")
            writer.write(b"HTTP/1.1 200 OK\\r\\ncontent-length: 2\\r\\n\\r\\nok")
            await writer.drain()
            writer.close()
        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with httpx.AsyncClient() as client:
            response = await client.get(f"http://127.0.0.1:{port}/")
        assert response.text == "ok"
        server.close()

    anyio.run(main)
    print("MDWE-OK")
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_MDWE is Linux-only")
def test_python_stack_runs_without_writable_executable_memory() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _MDWE_SCRIPT],
        capture_output=True, text=True, timeout=20, check=False,
    )
    assert done.returncode == 0, done.stderr
    if "MDWE-UNSUPPORTED" in done.stdout:
        pytest.skip("kernel lacks PR_SET_MDWE (Linux < 6.3): cannot check MemoryDenyWriteExecute")
    assert "MDWE-OK" in done.stdout, done.stdout + done.stderr
