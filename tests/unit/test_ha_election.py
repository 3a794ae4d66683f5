"""The election without a broker (streamd/ha/election.py): who gets partition 0, the fence
(a leader without proof of membership for ha.session_timeout / 2 stops leading), a revoke
that is not a loss, heartbeats through a rebalance, and the aiokafka internals it needs."""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anyio
import orjson
import pytest
from aiokafka import TopicPartition
from aiokafka.consumer.group_coordinator import GroupCoordinator
from eventlog import EventLog

from streamd.config import HaSettings, Settings
from streamd.errors import ConfigError
from streamd.ha.election import (
    Election,
    Role,
    SeniorityAssignor,
    choose_leader,
    client_settings,
    config_problem,
    instance_id,
)
from streamd.ops.metrics import Metrics

TOPIC = "streamd.leader"
P0 = TopicPartition(TOPIC, 0)
pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # aiokafka's


Log = EventLog


def settings(session: float = 6.0, tmp: Path | None = None) -> Settings:
    base = Settings.model_validate({
        "spool": {"dir": str(tmp or Path("/var/lib/streamd/spool"))},
        "ha": {"mode": "kafka", "topic": TOPIC},
    })
    # Below the 6 s minimum the config allows: the fence then fires within a unit test.
    ha = HaSettings.model_construct(mode="kafka", group="streamd", topic=TOPIC,
                                    session_timeout=session)
    return base.model_copy(update={"ha": ha})


class FakeCoordinator:
    """The attributes of aiokafka's GroupCoordinator the election uses."""

    def __init__(self) -> None:
        self.member_id = "streamd-ha-x-1"
        self.generation = 3
        self.group_id = "streamd"
        self.coordinator_id = 1
        self.rejoins = 0
        self.heartbeat_answers: list[bool] = []
        self.codes: list[int | None] = []
        self.sent: list[Any] = []
        self._client = SimpleNamespace(send=self._send)

    async def _do_heartbeat(self) -> bool:
        return self.heartbeat_answers.pop(0) if self.heartbeat_answers else True

    def request_rejoin(self) -> None:
        self.rejoins += 1

    async def _send_req(self, request: Any) -> Any:
        self.sent.append(request)
        return SimpleNamespace(error_code=0)

    async def _send(self, node: int, request: Any) -> Any:
        self.sent.append(request)
        code = self.codes.pop(0) if self.codes else 27
        if code is None:
            raise ConnectionError("no answer")
        return SimpleNamespace(error_code=code)


def election(session: float = 6.0, clock: Callable[[], float] = time.monotonic
             ) -> tuple[Election, FakeCoordinator, Log, Metrics]:
    log, metrics = Log(), Metrics()
    e = Election(settings(session), log, metrics, clock=clock)  # type: ignore[arg-type]
    fake = FakeCoordinator()
    from streamd.ha.election import _Coordinator

    coordinator = _Coordinator(SimpleNamespace(_coordinator=fake))  # type: ignore[arg-type]
    coordinator.watch_heartbeats(e._prove, clock)
    e._coordinator = coordinator
    return e, fake, log, metrics


def leader_gauge(metrics: Metrics) -> float:
    value = metrics.registry.get_sample_value("streamd_leader")
    assert value is not None
    return value


# --- who gets partition 0 --------------------------------------------------------------


def meta(since: float | None) -> bytes:
    return orjson.dumps({"since": since} if since is not None else {})


def test_the_oldest_membership_leads_ties_by_member_id() -> None:
    assert choose_leader({"b": meta(10.0), "a": meta(20.0)}) == "b"
    assert choose_leader({"b": meta(10.0), "a": meta(10.0)}) == "a"
    # A member without `since` (another version, garbage) never outranks one with it.
    assert choose_leader({"a": b"not json", "z": meta(99.0)}) == "z"
    assert choose_leader({"a": meta(None), "b": b""}) == "a"
    assert choose_leader({}) is None


def test_the_assignor_keeps_its_seniority_until_the_coordinator_forgets_the_member() -> None:
    member = [""]
    now = [100.0]
    assignor = SeniorityAssignor(lambda: member[0], {"instance": "i"}, clock=lambda: now[0])
    first = assignor.metadata([TOPIC])
    assert orjson.loads(first.user_data) == {"instance": "i", "since": 100.0}
    member[0], now[0] = "m-1", 200.0  # rejoins (a rebalance): still the same membership
    assert orjson.loads(assignor.metadata([TOPIC]).user_data)["since"] == 100.0
    member[0], now[0] = "", 300.0  # evicted: joins as a new member, the youngest
    assert orjson.loads(assignor.metadata([TOPIC]).user_data)["since"] == 300.0


def test_the_assignor_gives_partition_0_to_exactly_one_member() -> None:
    assignor = SeniorityAssignor(lambda: "m", {})
    members = {
        m: SimpleNamespace(subscription=[TOPIC], user_data=meta(since))
        for m, since in (("young", 50.0), ("old", 10.0), ("mid", 30.0))
    }
    plan = assignor.assign(None, members)
    held = {m: [tuple(a) for a in plan[m].assignment] for m in members}
    assert held == {"old": [(TOPIC, [0])], "mid": [], "young": []}


# --- roles, the fence, revoke --------------------------------------------------------------


async def test_assigned_partition_0_is_elected_and_a_revoke_is_not_a_loss() -> None:
    e, _, log, metrics = election()
    await e.on_partitions_revoked(set())
    await e.on_partitions_assigned(set())
    assert e.role is Role.STANDBY
    assert e.in_group
    assert log.named("ha.joined")[0]["role"] == "standby"
    await e.on_partitions_revoked(set())
    await e.on_partitions_assigned({P0})
    assert e.role is Role.LEADER
    term = e.term
    assert term is not None
    assert term.number == 1
    (elected,) = log.named("ha.elected")
    assert elected["group"] == "streamd"
    assert elected["member"] == "streamd-ha-x-1"
    assert leader_gauge(metrics) == 1
    # A standby joins: everything is revoked first; partition 0 comes back to us.
    await e.on_partitions_revoked({P0})
    assert e.role is Role.LEADER
    assert e.term == term
    await e.on_partitions_assigned({P0})
    assert e.term == term
    assert len(log.named("ha.elected")) == 1
    assert not log.named("ha.lost")
    # Partition 0 goes elsewhere: lost at once.
    await e.on_partitions_revoked({P0})
    await e.on_partitions_assigned(set())
    assert e.role is Role.STANDBY
    assert e.term is None
    (lost,) = log.named("ha.lost")
    assert "assigned to another member" in lost["reason"]
    assert leader_gauge(metrics) == 0


async def test_a_leader_without_an_answered_heartbeat_is_fenced_within_half_a_session() -> None:
    e, fake, log, metrics = election(session=0.4)  # fence after 0.2 s
    async with anyio.create_task_group() as tg:
        tg.start_soon(e._fence_watch)
        await e.on_partitions_assigned({P0})
        term = e.term
        assert term is not None
        # aiokafka's heartbeat task: answered heartbeats keep it leading for 0.6 s ...
        for _ in range(12):
            assert await e._coordinator._coordinator._do_heartbeat()  # type: ignore[union-attr]
            await anyio.sleep(0.05)
        assert e.role is Role.LEADER
        # ... then the coordinator stops answering.
        fake.heartbeat_answers = [False] * 100
        silent_from = time.monotonic()
        with anyio.fail_after(2):
            reason = await e.wait_lost(term)
        took = time.monotonic() - silent_from
        tg.cancel_scope.cancel()
    assert 0.1 <= took <= 0.3, took
    assert reason.startswith("fenced: ")
    assert log.named("ha.lost")[0]["reason"] == reason
    assert leader_gauge(metrics) == 0
    assert fake.rejoins == 1  # it leads again only once assigned partition 0 again
    await e.on_partitions_assigned({P0})
    assert e.role is Role.LEADER
    assert e.term is not None
    assert e.term.number == 2


async def test_the_leader_keeps_heartbeating_through_a_rebalance() -> None:
    """aiokafka stops heartbeating while it rejoins; a rebalance may take longer than the
    fence (Tansu holds every JoinGroup for half a session). The leader's own heartbeats,
    answered "rebalance in progress", keep proving its membership."""
    e, fake, log, _ = election(session=0.4)
    async with anyio.create_task_group() as tg:
        tg.start_soon(e._fence_watch)
        tg.start_soon(e._heartbeat_through_rebalances)
        await e.on_partitions_assigned({P0})
        term = e.term
        assert term is not None
        await e.on_partitions_revoked({P0})  # the rebalance begins
        await anyio.sleep(0.6)  # three fence windows
        assert e.role is Role.LEADER
        assert not log.named("ha.lost")
        assert all(r.API_KEY == 12 for r in fake.sent)  # Heartbeat
        assert len(fake.sent) >= 5
        fake.codes = [None] * 100  # the coordinator stops answering mid-rebalance
        with anyio.fail_after(2):
            await e.wait_lost(term)
        tg.cancel_scope.cancel()


async def test_an_unknown_member_proves_nothing() -> None:
    e, fake, _, _ = election(session=0.4)
    fake.codes = [25] * 100  # UNKNOWN_MEMBER_ID: the coordinator forgot us
    async with anyio.create_task_group() as tg:
        tg.start_soon(e._fence_watch)
        tg.start_soon(e._heartbeat_through_rebalances)
        await e.on_partitions_assigned({P0})
        term = e.term
        assert term is not None
        await e.on_partitions_revoked({P0})
        with anyio.fail_after(2):
            await e.wait_lost(term)
        tg.cancel_scope.cancel()


# --- identity, settings, configuration ------------------------------------------------------


def test_instance_and_client_id_name_the_host_and_the_spool(tmp_path: Path) -> None:
    one = settings(tmp=tmp_path / "a")
    other = settings(tmp=tmp_path / "b")
    assert instance_id(one, "streamd-0") == instance_id(one, "streamd-0")
    assert instance_id(one, "streamd-0").startswith("streamd-0-")
    assert instance_id(one, "streamd-0") != instance_id(other, "streamd-0")
    assert instance_id(one, "weird host/name").startswith("weird-host-name-")
    client = client_settings(one, None)
    assert client["client_id"].startswith("streamd-ha-")
    assert client["bootstrap_servers"] == "localhost:9092"
    assert "compression_type" not in client
    assert "acks" not in client


def test_the_leader_records_need_a_topic_of_their_own() -> None:
    base = Settings.model_validate({"ha": {"mode": "kafka", "topic": "x.tweets"}})
    problem = config_problem(base)
    assert isinstance(problem, ConfigError)
    assert problem.key == "ha.topic"
    assert config_problem(Settings.model_validate({"ha": {"mode": "kafka"}})) is None


# --- aiokafka's internals --------------------------------------------------------------------


def test_the_aiokafka_internals_the_election_uses_are_there() -> None:
    """If an aiokafka upgrade renames these, the fence and the hand-over speed go: this
    fails first (streamd/ha/election.py `_Coordinator`)."""
    for method in ("_do_heartbeat", "request_rejoin", "_send_req"):
        assert callable(getattr(GroupCoordinator, method, None)), method
    init = inspect.getsource(GroupCoordinator.__init__) + inspect.getsource(
        GroupCoordinator.__mro__[1].__init__)
    for attribute in ("member_id", "generation", "group_id", "coordinator_id", "_client"):
        assert f"self.{attribute} =" in init, attribute
    # The heartbeat task looks _do_heartbeat up on each beat: the wrapper is what it calls.
    assert "await self._do_heartbeat()" in inspect.getsource(GroupCoordinator._heartbeat_routine)


def test_the_coordinator_adapter_refuses_an_aiokafka_without_them() -> None:
    from streamd.errors import StreamdError
    from streamd.ha.election import _Coordinator

    with pytest.raises(StreamdError, match="_do_heartbeat"):
        _Coordinator(SimpleNamespace(_coordinator=SimpleNamespace(member_id="")))  # type: ignore[arg-type]


async def test_leave_group_is_sent_only_where_aiokafka_would_not() -> None:
    from streamd.ha.election import _Coordinator

    fake = FakeCoordinator()
    coordinator = _Coordinator(SimpleNamespace(_coordinator=fake))  # type: ignore[arg-type]
    await coordinator.leave_group()
    assert fake.sent == []  # generation 3: aiokafka's stop() sends it
    fake.generation = 0  # Tansu's first generation: aiokafka skips it
    await coordinator.leave_group()
    (request,) = fake.sent
    assert request.API_KEY == 13  # LeaveGroup
