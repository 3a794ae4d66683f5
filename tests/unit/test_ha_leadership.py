"""Leadership without a broker or X (streamd/ha/leadership.py, records.py): the hand-over
(the previous leader's connections terminated, the gap started where it stopped reading),
the records a leader writes, a lost term ending the reader with `not_leader`, the leader
record's tolerance, and what /readyz, STATUS= and the watchdog say of a standby."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anyio
import orjson
import pytest
from aiokafka import TopicPartition
from anyio.streams.memory import MemoryObjectSendStream
from eventlog import EventLog

from streamd.config import Settings
from streamd.ha.election import Election, Role
from streamd.ha.leadership import Leadership
from streamd.ha.records import LeaderRecord
from streamd.ops.health import STANDBY_READY, DaemonState
from streamd.ops.http import OpsApp
from streamd.ops.metrics import Metrics
from streamd.records import OutRecord
from streamd.x.connections import Kill, KillReport, XConnection

pytestmark = pytest.mark.anyio
TOPIC = "streamd.leader"
P0 = TopicPartition(TOPIC, 0)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


Log = EventLog


# --- the leader record -----------------------------------------------------------------------


def record(**changes: Any) -> LeaderRecord:
    fields: dict[str, Any] = {
        "group": "streamd", "member": "streamd-ha-a-1", "instance": "a-1234", "host": "a",
        "kind": "reading", "connection_ids": ("c-1",), "connected_at": 1000.0,
        "last_read_at": 1010.5, "written_at": 1011.0,
    }
    fields.update(changes)
    return LeaderRecord(**fields)


def test_a_record_reads_back_as_written() -> None:
    r = record()
    assert LeaderRecord.from_bytes(r.to_bytes()) == r


@pytest.mark.parametrize("raw", [
    None, b"", b"not json", b"[]", b'{"v": 2}', orjson.dumps({"v": 1, "group": "g"}),
    record(kind="other").to_bytes(), b"x" * 20000,
    orjson.dumps({**orjson.loads(record().to_bytes()), "member": "\x1b[2J"}),
])
def test_anything_else_reads_as_no_record(raw: bytes | None) -> None:
    assert LeaderRecord.from_bytes(raw) is None


def test_odd_fields_are_dropped_not_trusted() -> None:
    raw = orjson.loads(record().to_bytes())
    raw.update(connection_ids=["ok", 7, "", "x" * 200, "\n"], last_read_at=float("nan"),
               connected_at=True)
    back = LeaderRecord.from_bytes(orjson.dumps(raw, option=orjson.OPT_SERIALIZE_NUMPY))
    assert back is not None
    assert back.connection_ids == ("ok",)
    assert back.last_read_at is None
    assert back.connected_at is None


# --- the hand-over ---------------------------------------------------------------------------


@dataclass
class Live:
    last_read_at: float | None = None


class Reader:
    """A StreamReader-like: run() until stop(), again after resume()."""

    def __init__(self, live: list[Live] | None = None) -> None:
        self.live = live if live is not None else [Live(900.0)]
        self.connected = False
        self.runs = 0
        self.changed = anyio.Event()
        self._stop = anyio.Event()

    @property
    def last_read_at(self) -> float | None:
        return max((r.last_read_at for r in self.live if r.last_read_at), default=None)

    def _set(self, connected: bool) -> None:
        self.connected = connected
        self.changed.set()
        self.changed = anyio.Event()

    async def run(self, send: MemoryObjectSendStream[list[OutRecord]]) -> None:
        async with send:
            self.runs += 1
            self._set(True)
            await self._stop.wait()
            for r in self.live:
                r.last_read_at = 2000.0 + self.runs
            self._set(False)

    def stop(self) -> None:
        self._stop.set()

    def resume(self) -> None:
        self._stop = anyio.Event()

    async def until(self, connected: bool) -> None:
        with anyio.fail_after(2):
            while self.connected is not connected:
                await self.changed.wait()


class Records:
    def __init__(self, last: LeaderRecord | None) -> None:
        self._last = last
        self.written: list[LeaderRecord] = []

    async def start(self) -> bool:
        return True

    async def write(self, r: LeaderRecord, *, within: float | None = None) -> bool:
        self.written.append(r)
        return True

    async def last(self) -> LeaderRecord | None:
        return self._last

    async def close(self, within: float = 2.0) -> None:
        pass


class Api:
    def __init__(self, active: Sequence[str]) -> None:
        self.active = list(active)
        self.terminated: list[str] = []

    async def list(self, *, status: str, endpoint: str | None) -> list[XConnection]:
        return [XConnection(i, endpoint, "127.0.0.1", 1000.0) for i in self.active]

    async def terminate(self, uuids: Sequence[str]) -> KillReport:
        self.terminated += uuids
        return KillReport(tuple(Kill(u, True) for u in uuids))


def wired(tmp_path: Path, last: LeaderRecord | None, active: Sequence[str] = ()
          ) -> tuple[Leadership, Election, Records, Api, DaemonState, Log, Metrics]:
    settings = Settings.model_validate({
        "spool": {"dir": str(tmp_path / "spool")}, "ha": {"mode": "kafka", "topic": TOPIC}})
    log, metrics, state = Log(), Metrics(), DaemonState(quiet_limit=60.0)
    e = Election(settings, log, metrics)  # type: ignore[arg-type]
    e._coordinator = SimpleNamespace(member_id="streamd-ha-b-2")  # type: ignore[assignment]
    records, api = Records(last), Api(active)

    @contextlib.asynccontextmanager
    async def connections() -> AsyncIterator[Any]:
        yield api

    leadership = Leadership(settings, e, records, state, log, metrics,  # type: ignore[arg-type]
                            connections=connections)
    return leadership, e, records, api, state, log, metrics


async def lead_once(leadership: Leadership, e: Election, reader: Reader,
                    state: DaemonState) -> None:
    send, receive = anyio.create_memory_object_stream[list[OutRecord]](10)
    async with anyio.create_task_group() as tg, send, receive:
        tg.start_soon(leadership.lead, reader, send)
        await e.on_partitions_assigned({P0})
        await reader.until(connected=True)
        await leadership.on_own("c-new", 1500.0)
        await e.on_partitions_assigned(set())  # partition 0 goes elsewhere
        await reader.until(connected=False)
        await anyio.sleep(0.05)  # the term's end: its event and its last record
        state.begin_stop(anyio.current_time())
        tg.cancel_scope.deadline = anyio.current_time() + 2


async def test_the_new_leader_ends_the_previous_leaders_connection_and_backfills_its_gap(
    tmp_path: Path,
) -> None:
    previous = record(connection_ids=("c-old", "c-gone"), last_read_at=1234.5)
    leadership, e, records, api, state, log, metrics = wired(
        tmp_path, previous, active=["c-old", "someone-else"])
    reader = Reader()
    await lead_once(leadership, e, reader, state)
    # Only the previous leader's connection that X still counts, nothing else.
    assert api.terminated == ["c-old"]
    (terminated,) = log.named("connections.terminated")
    assert terminated["why"] == "handover"
    assert terminated["ids"] == ["c-old"]
    assert metrics.registry.get_sample_value(
        "streamd_connections_terminated_total", {"why": "handover"}) == 1
    (handover,) = log.named("ha.handover")
    assert handover["previous"] == "streamd-ha-a-1"
    assert handover["gap_from"] == "1970-01-01T00:20:34.500Z"
    # The reader ran once, lost its term, and said why.
    assert reader.runs == 1
    (ended,) = log.named("stream.disconnected")
    assert ended["reason"] == "not_leader"
    assert "another member" in ended["detail"]
    assert metrics.registry.get_sample_value(
        "streamd_stream_disconnects_total", {"reason": "not_leader"}) == 1
    # Its records: the connection id when learnt, and where it stopped reading.
    kinds = [(r.kind, r.connection_ids) for r in records.written]
    assert kinds == [("connected", ("c-new",)), ("released", ("c-new",))]
    assert records.written[-1].last_read_at == 2001.0
    assert records.written[-1].member == "streamd-ha-b-2"


async def test_the_gap_starts_at_the_previous_leaders_last_read(tmp_path: Path) -> None:
    leadership, e, _, _, state, _, _ = wired(tmp_path, record(last_read_at=1234.5))
    reader = Reader(live=[Live(None), Live(5000.0)])
    seen: list[list[float | None]] = []
    original = reader.run

    async def run(send: MemoryObjectSendStream[list[OutRecord]]) -> None:
        seen.append([r.last_read_at for r in reader.live])
        await original(send)

    reader.run = run  # type: ignore[method-assign]
    await lead_once(leadership, e, reader, state)
    # A later read of our own is kept: only an older (or unknown) start moves.
    assert seen == [[1234.5, 5000.0]]


async def test_its_own_record_terminates_nothing(tmp_path: Path) -> None:
    leadership, e, _, api, state, log, _ = wired(tmp_path, None, active=["c-old"])
    own = record(instance=e.instance, connection_ids=("c-old",))
    leadership._records = Records(own)  # type: ignore[assignment]
    await lead_once(leadership, e, Reader(), state)
    assert api.terminated == []  # its own stale connection is the SlotKeeper's (own_stale)
    assert log.named("ha.handover")[0]["own"] is True


async def test_a_standby_records_nothing_and_never_runs_the_reader(tmp_path: Path) -> None:
    leadership, e, records, _, state, _, _ = wired(tmp_path, None)
    reader = Reader()
    send, receive = anyio.create_memory_object_stream[list[OutRecord]](10)
    async with anyio.create_task_group() as tg, send, receive:
        tg.start_soon(leadership.lead, reader, send)
        await e.on_partitions_assigned(set())
        await leadership.on_own("c-x", 1.0)  # not a leader: ignored
        await anyio.sleep(0.1)
        state.begin_stop(anyio.current_time())
    assert reader.runs == 0
    assert records.written == []
    assert e.role is Role.JOINING  # it left the group on the way out


# --- what operations read of a standby ----------------------------------------------------


def test_a_healthy_standby_is_ready_with_its_role(tmp_path: Path) -> None:
    state = DaemonState(quiet_limit=60.0)
    state.stream = SimpleNamespace(connected=False, usage_capped=False, in_backoff=False,  # type: ignore[assignment]
                                   last_reason=None, received=0, last_progress=0.0)
    kafka = SimpleNamespace(available=True, stats=SimpleNamespace(published=3))
    state.kafka = kafka  # type: ignore[assignment]
    ha = SimpleNamespace(role="standby", in_group=True, group="streamd")
    state.ha = ha  # type: ignore[assignment]
    assert state.readiness() == STANDBY_READY
    assert state.status_line() == "standby in group streamd; received 0, published 3"
    assert state.moving()
    assert state.ready_to_announce()
    kafka.available = False
    assert state.readiness() == "kafka_unavailable"
    ha.in_group = False
    assert state.readiness() == "not_in_group"
    assert state.status_line().startswith("standby, not in group streamd")
    ha.role, ha.in_group, kafka.available = "leader", True, True
    assert state.readiness() == "stream_disconnected"  # a leader is judged as without HA


def test_readyz_answers_200_with_the_role() -> None:
    async def main() -> tuple[int, bytes]:
        sent: list[dict[str, Any]] = []

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        async def receive() -> dict[str, Any]:
            return {"type": "http.request"}

        app = OpsApp(Metrics().asgi_app(), lambda: STANDBY_READY)
        await app({"type": "http", "path": "/readyz"}, receive, send)
        return sent[0]["status"], sent[1]["body"]

    status, body = anyio.run(main)
    assert status == 200
    assert orjson.loads(body) == {"role": "standby"}


async def test_a_hand_over_that_hangs_does_not_keep_the_leader_off_x(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    import streamd.ha.leadership as module

    monkeypatch.setattr(module, "RECORD_TIMEOUT_S", 0.1)
    monkeypatch.setattr(module, "HANDOVER_API_TIMEOUT_S", 0.1)
    leadership, e, records, _, state, log, _ = wired(tmp_path, None)

    async def hang() -> LeaderRecord | None:
        await anyio.sleep_forever()
        return None

    records.last = hang  # type: ignore[method-assign]
    reader = Reader()
    await lead_once(leadership, e, reader, state)
    assert reader.runs == 1
    assert log.named("ha.handover")[0]["detail"].startswith("the hand-over took too long")


async def test_a_reader_that_ends_by_itself_ends_the_main_loop(tmp_path: Path) -> None:
    """As without leadership: the reader's run() returning without a stop (its policy said
    so) is the end of the main loop, not a reason to reconnect at once."""
    leadership, e, _, _, _, _, _ = wired(tmp_path, None)
    reader = Reader()
    reader.stop()  # it returns as soon as it runs (resume() gives it a fresh event) ...
    original_resume = reader.resume

    def resume() -> None:
        original_resume()
        reader.stop()  # ... and ends at once

    reader.resume = resume  # type: ignore[method-assign]
    send, receive = anyio.create_memory_object_stream[list[OutRecord]](10)
    async with send, receive:
        await e.on_partitions_assigned({P0})
        with anyio.fail_after(2):
            await leadership.lead(reader, send)
    assert reader.runs == 1
