"""The daemon's use of the rules endpoints: one sync at a time (start-up, SIGHUP and the
409 path never interleave), and a stop ends a rules wait at once."""

from __future__ import annotations

from typing import Any

import anyio
import httpx
from rules_fakes import FakeClock, FakeX

from streamd.config import Settings
from streamd.daemon import Daemon


def _daemon(**backoff: float) -> Daemon:
    settings = Settings.model_validate({
        "rules": {"mode": "sync", "rule": [{"value": "cat", "tag": "cats"},
                                           {"value": "dog", "tag": "dogs"}]},
        "backoff": backoff,
    })
    return Daemon(settings, environ={})


class SlowX:
    """FakeX behind a handler that takes a moment, counting requests in flight."""

    def __init__(self) -> None:
        self.fake = FakeX(FakeClock())
        self.in_flight = 0
        self.most_in_flight = 0

    async def handler(self, request: httpx.Request) -> httpx.Response:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await anyio.sleep(0.02)
            return self.fake.handler(request)
        finally:
            self.in_flight -= 1


def test_syncs_never_interleave() -> None:
    slow = SlowX()
    daemon = _daemon()
    results: list[Any] = []

    async def main() -> None:
        async with httpx.AsyncClient(base_url="https://x.test",
                                     transport=httpx.MockTransport(slow.handler)) as client:
            daemon._rules_client = client

            async def sync(reason: str) -> None:
                results.append((reason, await daemon.sync_rules(reason=reason)))

            async with anyio.create_task_group() as tg:
                for reason in ("startup", "sighup", "no_rules"):
                    tg.start_soon(sync, reason)

    anyio.run(main)
    assert sorted(results) == [("no_rules", True), ("sighup", True), ("startup", True)]
    assert slow.most_in_flight == 1
    # The first sync added both rules; the other two found them in place (one GET each).
    posts = [r for r in slow.fake.requests if r.method == "POST"]
    assert len([p for p in posts if p.url.params.get("dry_run") != "true"]) == 1


def test_a_stop_ends_a_rules_wait_at_once() -> None:
    daemon = _daemon(http_initial=300.0, http_max=600.0)

    def down(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503, json={"title": "Service Unavailable", "type": "about:blank"})

    async def main() -> tuple[bool, float]:
        async with httpx.AsyncClient(base_url="https://x.test",
                                     transport=httpx.MockTransport(down)) as client:
            daemon._rules_client = client
            synced = False
            waiting = anyio.Event()
            hook = daemon._on_rules_retry

            def on_retry(reason: str, attempt: int, delay: float, failure: str) -> None:
                hook(reason, attempt, delay, failure)
                waiting.set()

            daemon._on_rules_retry = on_retry  # type: ignore[method-assign]
            started = anyio.current_time()
            async with anyio.create_task_group() as tg:

                async def sync() -> None:
                    nonlocal synced
                    synced = await daemon.sync_rules(reason="startup")

                tg.start_soon(sync)
                # The first attempt failed and a 300 s wait began: the daemon is waiting on
                # purpose (the systemd watchdog is fed) and says why.
                await waiting.wait()
                assert daemon.state.rules_busy == 1
                assert str(daemon.state.rules_waiting).startswith("server_error")
                daemon.request_stop()
            return synced, anyio.current_time() - started

    synced, took = anyio.run(main)
    assert synced is False
    assert took < 5.0
    assert daemon.state.rules_busy == 0
