"""Driving `streamd run` from outside, the way the tests, the benchmarks and `streamd demo`
do: the config file, the daemon as a child process with its JSON log events collected, and
its /metrics read back. The daemon itself never imports this (README "Development").
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

Config = Mapping[str, Mapping[str, Any]]
Event = dict[str, Any]


# -- the config file ---------------------------------------------------------------------


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {value!r}")


def toml_text(config: Config) -> str:
    """`{section: {key: value}}` as TOML; a list of dicts becomes an array of tables
    (`[[rules.rule]]`)."""
    lines: list[str] = []
    for section, values in config.items():
        tables = {k: v for k, v in values.items()
                  if isinstance(v, list) and v and isinstance(v[0], dict)}
        lines.append(f"[{section}]")
        lines.extend(f"{key} = {_toml_value(value)}"
                     for key, value in values.items() if key not in tables)
        for key, items in tables.items():
            for item in items:
                lines.append(f"[[{section}.{key}]]")
                lines.extend(f"{k} = {_toml_value(v)}" for k, v in item.items())
        lines.append("")
    return "\n".join(lines)


def write_toml(path: Path, config: Config, *, mode: int | None = None) -> Path:
    """Write `config` to `path`. `mode` (e.g. 0o600 for a file holding a token) is set
    before anything is written; by default the file gets the umask's mode."""
    if mode is not None:
        path.touch(mode=mode)
        path.chmod(mode)
    path.write_text(toml_text(config))
    return path


# -- the daemon as a child process ------------------------------------------------------


class EventTimeout(AssertionError):
    """The awaited log event did not come in time, or the daemon exited first."""


class DaemonProcess:
    """`python -m streamd run -c CONFIG` as a child process; every JSON line it writes to
    stderr is collected as an event (and every line, JSON or not, in `raw_stderr`).

    `module` runs another entry point with the same command line (the benchmarks' latency
    shim). `log_path` also keeps stderr in a file. stdout is a pipe by default, read after
    the process ends (the daemon writes nothing there). The caller's $NOTIFY_SOCKET is not
    passed on: a test that wants one passes its own in `env`. Subclasses may override
    `on_event`, called in the reader thread as each event arrives."""

    def __init__(
        self, config_path: Path, env: Mapping[str, str] | None = None, *,
        module: str = "streamd", log_path: Path | None = None,
        stdout: int | IO[bytes] = subprocess.PIPE,
    ) -> None:
        self.config_path = config_path
        self.events: list[Event] = []
        self.raw_stderr: list[str] = []
        self._cond = threading.Condition()
        self._log = open(log_path, "ab") if log_path is not None else None  # noqa: SIM115
        full_env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
        full_env.update(env or {})
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module, "run", "-c", str(config_path)],
            stdout=stdout, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=full_env,
        )
        self._reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._reader.start()

    def on_event(self, event: Event, received_at: float) -> None:
        """Called for each event (`received_at`: time.monotonic() when it was read), before
        waiters see it."""

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        try:
            for raw in self.proc.stderr:
                received_at = time.monotonic()
                if self._log is not None:
                    self._log.write(raw)
                    self._log.flush()
                line = raw.decode(errors="replace").rstrip("\n")
                try:
                    event = json.loads(line)
                except ValueError:
                    event = None
                if isinstance(event, dict):
                    self.on_event(event, received_at)
                with self._cond:
                    self.raw_stderr.append(line)
                    if isinstance(event, dict):
                        self.events.append(event)
                    self._cond.notify_all()
        finally:
            if self._log is not None:
                self._log.close()

    def wait_event(
        self, name: str, pred: Callable[[Event], bool] = lambda e: True,
        timeout: float = 20.0, count: int = 1,
    ) -> list[Event]:
        """The first `count` events called `name` that satisfy `pred`, once there are that
        many; EventTimeout (with the last lines of stderr) if not within `timeout`."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [e for e in self.events if e.get("event") == name and pred(e)]
                if len(found) >= count:
                    return found
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    tail = "\n".join(self.raw_stderr[-30:])
                    raise EventTimeout(
                        f"no {count} x {name!r} within {timeout}s; stderr:\n{tail}"
                    )
                self._cond.wait(min(left, 0.2))

    def named(self, name: str) -> list[Event]:
        with self._cond:
            return [e for e in self.events if e.get("event") == name]

    @property
    def port(self) -> int:
        """The operations endpoint's port (waits for `http.listening`)."""
        return int(self.wait_event("http.listening")[0]["port"])

    def signal(self, sig: int = signal.SIGTERM) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 30.0) -> int:
        code = self.proc.wait(timeout)
        self._reader.join(5)
        return code

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM, as systemd stops it; killed if it has not exited within `timeout`."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.wait(10)

    def stop(self) -> None:
        """Kill it if it still runs (clean-up after a test)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


# -- /metrics ---------------------------------------------------------------------------


def metric_key(name: str, **labels: str) -> str:
    """A sample's key in `parse_metrics`' answer: `name{a="x",b="y"}`, labels sorted."""
    if not labels:
        return name
    return name + "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text -> {metric_key(name, **labels): value}."""
    return {
        metric_key(sample.name, **sample.labels): float(sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def scrape(port: int, *, timeout: float = 10.0) -> dict[str, float]:
    """Every sample of the daemon's /metrics on 127.0.0.1:`port` (httpx.HTTPError if it
    does not answer)."""
    response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=timeout)
    response.raise_for_status()
    return parse_metrics(response.text)


def metric(port: int, name: str, **labels: str) -> float:
    """One sample from the daemon's /metrics: 0 if absent, -1 if it does not answer."""
    try:
        samples = scrape(port, timeout=2.0)
    except httpx.HTTPError:
        return -1.0
    return samples.get(metric_key(name, **labels), 0.0)
