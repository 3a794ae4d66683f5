"""The shutdown's one budget: counted from the stop request, the publisher gets until
flush_timeout after it, the state saves until SHUTDOWN_MARGIN_S after that; a save the
budget has no room for is skipped (and said), the spool is closed whatever happens."""

from __future__ import annotations

import io
import types
from pathlib import Path
from typing import Any

import anyio
import orjson

from streamd.config import Settings
from streamd.daemon import LAST_READ_KEY, SHUTDOWN_MARGIN_S, Daemon, ShutdownBudget, _Parts
from streamd.dedup import Deduplicator
from streamd.kafka.spool import Spool
from streamd.ops.logs import configure_logging


def test_the_budget_counts_from_the_stop_request() -> None:
    budget = ShutdownBudget(stop_at=100.0, flush_timeout=15.0)
    assert budget.flush_by == 115.0
    assert budget.done_by == 115.0 + SHUTDOWN_MARGIN_S


def release(tmp_path: Path, *, stopped_ago: float) -> tuple[Path, list[dict[str, Any]]]:
    """Run the end of the shutdown for a stop asked for `stopped_ago` seconds ago."""
    log = io.StringIO()
    configure_logging("info", "json", log)
    settings = Settings.model_validate({"kafka": {"flush_timeout": 10.0}})
    daemon = Daemon(settings, environ={})
    spool_dir = tmp_path / "spool"
    dedup = Deduplicator()
    dedup.preload(["1", "2"])
    send, receive = anyio.create_memory_object_stream[list[Any]]()
    send.close()

    async def main() -> None:
        spool = Spool(spool_dir, 1 << 20)
        reader = types.SimpleNamespace(last_read_at=1234.5)
        parts = _Parts(spool, dedup, publisher=None, reader=reader,  # type: ignore[arg-type]
                       token="t", send=send, receive=receive)
        daemon.state.begin_stop(anyio.current_time() - stopped_ago)
        with anyio.CancelScope(shield=True):
            await daemon._release(parts)

    anyio.run(main)
    return spool_dir, [orjson.loads(line) for line in log.getvalue().splitlines()]


def saved(spool_dir: Path) -> tuple[str | None, list[str]]:
    with Spool(spool_dir, 1 << 20) as spool:
        return spool.get_meta(LAST_READ_KEY), spool.recent_ids(900.0, 10)


def test_within_the_budget_the_state_is_saved(tmp_path: Path) -> None:
    spool_dir, events = release(tmp_path, stopped_ago=0.0)
    assert not [e for e in events if e["event"] == "spool.state_not_saved"]
    last_read, ids = saved(spool_dir)  # the spool was closed: it opens again
    assert last_read == "1234.5"
    assert sorted(ids) == ["1", "2"]


def test_past_the_budget_the_saves_are_skipped_and_the_spool_still_closed(
    tmp_path: Path,
) -> None:
    spool_dir, events = release(tmp_path, stopped_ago=10.0 + SHUTDOWN_MARGIN_S + 1)
    skipped = [e for e in events if e["event"] == "spool.state_not_saved"]
    assert [e["error"] for e in skipped] == ["the shutdown budget ran out"]
    assert saved(spool_dir) == (None, [])

