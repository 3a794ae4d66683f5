"""The election (README "High availability"): one leader among the instances sharing
`ha.group`, through Kafka's consumer group protocol, and the fence that stops a leader that
can no longer prove it leads.

Every instance runs one AIOKafkaConsumer with `group_id = ha.group`, subscribed to the
one-partition topic `ha.topic`. The member assigned partition 0 is the leader.

* **Who gets partition 0.** The group's assignor is ours (`SeniorityAssignor`): partition 0
  goes to the member whose membership is oldest (`since`, carried in its join metadata), ties
  broken by member id. So a standby that joins or restarts never takes over from a working
  leader, and of two instances started together exactly one leads.
* **Revoke is not loss.** aiokafka speaks the eager protocol: every rebalance (a standby
  joining or leaving) first revokes everything from everyone. The leader keeps its X
  connection through the rebalance (it does not reconnect: `Role` stays LEADER) and loses
  leadership only when the rebalance ends with partition 0 assigned elsewhere - or when the
  fence below fires first. That is what Kafka's cooperative protocol (KIP-429) gives the
  partitions that stay; aiokafka does not implement it. aiokafka also stops heartbeating
  while it rejoins; the leader keeps heartbeating through the rebalance itself (answered
  "rebalance in progress": the coordinator keeps the member's session alive, as Kafka's
  protocol intends), so its fence holds however long the rebalance takes.
* **The fence.** A leader proves it is still a member by the coordinator's answers: each
  heartbeat answered (from the moment it was sent) and each assignment (when it arrived).
  When `ha.session_timeout / 2` passes without a proof it stops leading at once
  (`ha.lost` with reason "fenced"), whatever aiokafka still believes, and asks to rejoin:
  it reconnects to X only once it is assigned partition 0 again. Kafka replaces a member
  only after `ha.session_timeout` without hearing from it, so the fenced leader has been
  off X for half a session timeout before anyone else can be elected.

What aiokafka (0.14) does not expose is reached through `_Coordinator`: each heartbeat's
outcome, one heartbeat of our own, a rejoin request, and a LeaveGroup in generation 0.
`tests/unit/test_ha_election.py` fails if an aiokafka upgrade removes them.
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import os
import re
import socket
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import anyio
import orjson
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener
from aiokafka.coordinator.protocol import (
    ConsumerProtocolMemberAssignment,
    ConsumerProtocolMemberMetadata,
)

from streamd.config import Settings
from streamd.errors import ConfigError, StreamdError
from streamd.flow import Changes
from streamd.ha.bounded import bounded, settle
from streamd.kafka.producer import producer_kwargs
from streamd.ops.logs import Logger
from streamd.ops.metrics import Metrics

__all__ = [
    "ASSIGNOR_NAME",
    "Election",
    "Role",
    "SeniorityAssignor",
    "Term",
    "choose_leader",
    "client_settings",
    "config_problem",
    "instance_id",
]

# The group protocol's name: members of one group must agree on it.
ASSIGNOR_NAME: Final = "streamd-ha-v1"
# Heartbeats per session timeout (Kafka's guidance is at least 3): a leader survives a few
# missed heartbeats before its fence (half a session) fires, and a standby learns of a
# rebalance (its leader left) within a tenth of a session.
HEARTBEATS_PER_SESSION: Final = 10
# Heartbeat answers that prove membership: none, and "rebalance in progress" (the
# coordinator knows the member and keeps its session alive while the group rebalances).
_PROOF_CODES: Final = frozenset({0, 27})
# The fence: a leader without proof for this fraction of ha.session_timeout stops leading.
FENCE_FRACTION: Final = 0.5
# Joining again after a failure (Kafka unreachable at start-up): doubling, capped.
JOIN_RETRY_MIN_S: Final = 0.5
JOIN_RETRY_MAX_S: Final = 5.0
# Leaving the group on shutdown (LeaveGroup: the successor need not wait for a timeout).
LEAVE_TIMEOUT_S: Final = 3.0
# aiokafka's connection settings among the producer's (security included).
CLIENT_KEYS: Final = ("bootstrap_servers", "security_protocol", "ssl_context",
                      "sasl_mechanism", "sasl_plain_username", "sasl_plain_password")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


class Role(enum.StrEnum):
    JOINING = "joining"  # not a member (yet): starting, or Kafka does not answer
    STANDBY = "standby"
    LEADER = "leader"


@dataclass(frozen=True, slots=True)
class Term:
    """One leadership term: the n-th election of this instance."""

    number: int
    member: str


def instance_id(settings: Settings, hostname: str | None = None) -> str:
    """Which streamd this is: the host and the spool directory (one daemon per spool), as a
    Kafka-safe name. `streamd check` on the same host with the same config finds itself
    among the group's members by it."""
    host = hostname or socket.gethostname()
    spool = str(settings.spool.dir.absolute())
    digest = hashlib.sha256(f"{host}\0{spool}".encode()).hexdigest()[:8]
    return f"{_UNSAFE.sub('-', host)[:64] or 'host'}-{digest}"


def client_settings(settings: Settings, sasl_password: str | None) -> dict[str, Any]:
    """aiokafka's connection settings for the election's clients: the Kafka section's
    bootstrap servers and security, a client id naming this instance (Kafka makes the
    member id from it: `<client id>-<uuid>`)."""
    kwargs = producer_kwargs(settings.kafka, sasl_password)
    client: dict[str, Any] = {k: kwargs[k] for k in CLIENT_KEYS if k in kwargs}
    client["client_id"] = f"{settings.kafka.client_id}-ha-{instance_id(settings)}"
    return client


def config_problem(settings: Settings) -> ConfigError | None:
    """What `ha.mode = "kafka"` cannot run with (exit 78), else None."""
    ha, kafka = settings.ha, settings.kafka
    if ha.topic in (kafka.topic, kafka.dlq_topic):
        return ConfigError("ha.topic", f"{ha.topic!r} is also kafka.topic or kafka.dlq_topic: "
                                       "the leader records need a topic of their own")
    return None


# --- who leads: the assignor ------------------------------------------------------------


def _member_info(user_data: bytes) -> dict[str, Any]:
    try:
        obj = orjson.loads(user_data) if user_data else {}
    except orjson.JSONDecodeError:
        return {}
    return obj if isinstance(obj, dict) else {}


def choose_leader(members: Mapping[str, bytes]) -> str | None:
    """The member (id -> its join metadata's user data) that gets partition 0: the oldest
    membership (`since`), then the smallest member id. A member whose metadata has no
    `since` (not a streamd of this version) comes last."""
    def key(member_id: str) -> tuple[float, str]:
        since = _member_info(members[member_id]).get("since")
        if isinstance(since, int | float) and not isinstance(since, bool):
            return (float(since), member_id)
        return (float("inf"), member_id)

    return min(members, key=key) if members else None


class SeniorityAssignor:
    """aiokafka's partition assignor protocol (duck-typed: aiokafka's abstract base declares
    class methods, this one keeps state). `since` is when this membership began: set at the
    first join, kept across rebalances, renewed when the coordinator forgot the member (its
    member id is reset: it joins as a new member)."""

    name = ASSIGNOR_NAME
    version = 0

    def __init__(
        self, member_id: Callable[[], str], info: Mapping[str, str], *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._member_id = member_id
        self._info = dict(info)
        self._clock = clock
        self.since: float | None = None

    def metadata(self, topics: Iterable[str]) -> ConsumerProtocolMemberMetadata:
        if self.since is None or not self._member_id():
            self.since = self._clock()
        user_data = orjson.dumps({**self._info, "since": self.since})
        return ConsumerProtocolMemberMetadata(self.version, sorted(topics), user_data)

    def assign(
        self, cluster: Any, members: Mapping[str, ConsumerProtocolMemberMetadata]
    ) -> dict[str, ConsumerProtocolMemberAssignment]:
        leader = choose_leader({m: md.user_data for m, md in members.items()})
        topics = sorted({t for md in members.values() for t in md.subscription})
        return {
            member: ConsumerProtocolMemberAssignment(
                self.version, [(t, [0]) for t in topics] if member == leader else [], b"")
            for member in members
        }

    def on_assignment(self, assignment: ConsumerProtocolMemberAssignment) -> None:
        pass


# --- aiokafka's internals, in one place ---------------------------------------------------


class _Coordinator:
    """What the election needs of aiokafka's GroupCoordinator beyond its public API: the
    member id, each heartbeat's outcome, and a rejoin request."""

    def __init__(self, consumer: AIOKafkaConsumer) -> None:
        self._coordinator: Any = getattr(consumer, "_coordinator", None)
        missing = [a for a in ("member_id", "generation", "group_id", "coordinator_id",
                               "_client", "_do_heartbeat", "request_rejoin", "_send_req")
                   if not hasattr(self._coordinator, a)]
        if missing:
            raise StreamdError(
                "ha.mode = \"kafka\" needs aiokafka's group coordinator to have "
                f"{', '.join(missing)} (aiokafka 0.14); this aiokafka has not")

    @property
    def member_id(self) -> str:
        return str(getattr(self._coordinator, "member_id", "") or "")

    def watch_heartbeats(self, proved: Callable[[float], None],
                         clock: Callable[[], float]) -> None:
        """Call `proved(sent_at)` for each heartbeat the coordinator answered (aiokafka
        counts "rebalance in progress" as answered: the member is still known)."""
        original: Callable[[], Awaitable[bool]] = self._coordinator._do_heartbeat

        async def watched() -> bool:
            sent_at = clock()
            answered = await original()
            if answered:
                proved(sent_at)
            return answered

        self._coordinator._do_heartbeat = watched

    def request_rejoin(self) -> None:
        self._coordinator.request_rejoin()

    async def heartbeat(self, within: float) -> int | None:
        """One heartbeat for the current membership: the coordinator's error code, or None
        without an answer within `within` seconds. It goes over the client's other
        connection to the coordinator: a broker answers one request of a connection at a
        time, and during a rebalance the coordination connection holds the pending
        JoinGroup."""
        from aiokafka.protocol.group import HeartbeatRequest

        coordinator = self._coordinator
        node = coordinator.coordinator_id
        if not coordinator.member_id or node is None:
            return None
        try:
            answer = await bounded(coordinator._client.send(node, HeartbeatRequest(
                coordinator.group_id, coordinator.generation, coordinator.member_id)), within)
        except Exception:  # no answer (the coordination task finds the coordinator again)
            return None
        return int(answer.error_code)

    async def leave_group(self) -> None:
        """Send LeaveGroup where aiokafka's stop() would not: it skips it in generation 0,
        which Tansu gives a group's first generation (Kafka starts at 1). Without it the
        successor waits out a session timeout instead of taking over at once."""
        from aiokafka.protocol.group import LeaveGroupRequest

        coordinator = self._coordinator
        if coordinator.generation != 0 or not coordinator.member_id:
            return  # stop() sends it (or there is no membership to leave)
        await coordinator._send_req(
            LeaveGroupRequest(coordinator.group_id, coordinator.member_id))


# --- the election ---------------------------------------------------------------------


class Election(ConsumerRebalanceListener):  # type: ignore[misc]
    """This instance's membership of the group and its role. `run()` joins (retrying while
    Kafka does not answer) and stays a member until `close()`."""

    def __init__(
        self,
        settings: Settings,
        log: Logger,
        metrics: Metrics,
        *,
        sasl_password: str | None = None,
        changes: Changes | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        make_consumer: Callable[..., AIOKafkaConsumer] = AIOKafkaConsumer,
    ) -> None:
        ha = settings.ha
        self.group = ha.group
        self.topic = ha.topic
        self.session_timeout = ha.session_timeout
        self.fence_after = ha.session_timeout * FENCE_FRACTION
        self.instance = instance_id(settings)
        self.host = socket.gethostname()
        self._settings = settings
        self._log = log
        self._metrics = metrics
        self._client = client_settings(settings, sasl_password)
        self._changes = changes  # the daemon's: role changes are announced there
        self._clock = clock
        self._wall_clock = wall_clock
        self._make_consumer = make_consumer
        self._consumer: AIOKafkaConsumer | None = None
        self._coordinator: _Coordinator | None = None
        self._internal = Changes()  # role changes and proofs of the watchdog's interest
        self._closing = False
        self._closed = anyio.Event()
        # The state the role is computed from.
        self._joined = False  # assigned at least once (partition 0 or nothing)
        self._holds = False  # partition 0 is ours per the last assignment
        self._fenced = False  # the fence fired; cleared by the next assignment
        self._rebalancing = False
        self._proof: float | None = None  # clock() of the newest proof of membership
        self._role = Role.JOINING
        self._term: Term | None = None
        self._terms = 0
        self._lost_reason = ""
        self.assignor = SeniorityAssignor(
            self._member_id, {"instance": self.instance, "host": self.host,
                              "pid": str(os.getpid())},
            clock=wall_clock)

    # --- what the daemon reads ---------------------------------------------------------

    @property
    def role(self) -> Role:
        return self._role

    @property
    def member(self) -> str:
        return self._coordinator.member_id if self._coordinator is not None else ""

    @property
    def in_group(self) -> bool:
        """A member that heard from the coordinator within a session timeout."""
        proof = self._proof
        return (self._joined and proof is not None
                and self._clock() - proof < self.session_timeout)

    @property
    def term(self) -> Term | None:
        """The current term while leading, else None."""
        return self._term if self._role is Role.LEADER else None

    async def wait_elected(self) -> Term:
        seen = self._internal.version()
        while True:
            term = self.term
            if term is not None:
                return term
            seen = await self._internal.wait(seen)

    async def wait_lost(self, term: Term) -> str:
        """Return why `term` ended, once it has."""
        seen = self._internal.version()
        while self.term == term:
            seen = await self._internal.wait(seen)
        return self._lost_reason

    # --- the membership ----------------------------------------------------------------

    async def run(self) -> None:
        """Join, stay a member until close(). Raises ConfigError when ha.topic is missing."""
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._fence_watch)
                tg.start_soon(self._heartbeat_through_rebalances)
                if await self._join():
                    tg.start_soon(self._poll)
                await self._closed.wait()
                tg.cancel_scope.cancel()
        finally:
            # Cancelled without close(): the daemon stopped before its main loop; its
            # shutdown budget leaves a second for this.
            await self._stop_consumer(1.0)

    async def close(self, within: float | None = None) -> None:
        """Leave the group (LeaveGroup: a successor is elected without waiting out a
        session timeout), within `within` seconds (default LEAVE_TIMEOUT_S)."""
        self._closing = True
        await self._stop_consumer(LEAVE_TIMEOUT_S if within is None else within)
        self._joined = self._holds = False
        self._update("stopping")
        self._closed.set()

    async def _join(self) -> bool:
        problem = config_problem(self._settings)
        if problem is not None:
            raise problem
        delay = JOIN_RETRY_MIN_S
        failures = 0
        self._log.info("ha.joining", group=self.group, topic=self.topic,
                       session_timeout=self.session_timeout, instance=self.instance)
        while not self._closing:
            try:
                await self._start_consumer()
                return True
            except ConfigError:
                raise
            except Exception as exc:  # aiokafka raises its own and OSError kinds alike
                await self._stop_consumer()
                failures += 1
                if failures == 1 or failures % 10 == 0:
                    self._log.warning(
                        "ha.unavailable", group=self.group, attempts=failures,
                        detail=f"cannot join the group: {type(exc).__name__}: {exc}; "
                               "retrying (no instance leads while Kafka does not answer)")
            await anyio.sleep(delay)
            delay = min(delay * 2, JOIN_RETRY_MAX_S)
        return False

    async def _start_consumer(self) -> None:
        session_ms = int(self.session_timeout * 1000)
        consumer = self._make_consumer(
            **self._client,
            group_id=self.group,
            session_timeout_ms=session_ms,
            heartbeat_interval_ms=max(100, session_ms // HEARTBEATS_PER_SESSION),
            # A rebalance waits this long for members to rejoin: no longer than a session,
            # so a silent member is replaced after one session timeout either way.
            rebalance_timeout_ms=session_ms,
            request_timeout_ms=session_ms + 5000,
            enable_auto_commit=False,
            auto_offset_reset="latest",
            partition_assignment_strategy=(self.assignor,),
        )
        self._consumer = consumer
        within = max(10.0, self.session_timeout)
        await bounded(consumer.start(), within)
        topics = await bounded(consumer.topics(), within)
        if self.topic not in topics:
            raise ConfigError(
                "ha.topic",
                f"topic {self.topic!r} does not exist on {self._settings.kafka.bootstrap_servers}"
                f": create it with one partition (e.g. kafka-topics --create --topic "
                f"{self.topic} --partitions 1)")
        partitions = consumer.partitions_for_topic(self.topic) or set()
        if len(partitions) > 1:
            self._log.warning("config.warning", key="ha.topic",
                              detail=f"{self.topic!r} has {len(partitions)} partitions: "
                                     "only partition 0 is used")
        coordinator = _Coordinator(consumer)
        coordinator.watch_heartbeats(self._prove, self._clock)
        self._coordinator = coordinator
        consumer.subscribe([self.topic], listener=self)

    async def _stop_consumer(self, within: float = LEAVE_TIMEOUT_S) -> None:
        consumer, self._consumer = self._consumer, None
        coordinator = self._coordinator
        if consumer is None:
            return
        closing = self._closing

        async def teardown() -> None:
            with contextlib.suppress(Exception):  # best effort, as aiokafka's own
                if coordinator is not None and closing:
                    await coordinator.leave_group()
            await consumer.stop()

        await settle(teardown(), within)
        self._joined = self._holds = False
        self._update("stopping")

    async def _poll(self) -> None:
        """Keep the consumer active (aiokafka leaves the group of a consumer that is never
        polled) and surface its errors; what it fetches is not used."""
        consumer = self._consumer
        assert consumer is not None
        from aiokafka.errors import ConsumerStoppedError, KafkaError

        while True:
            try:
                await consumer.getmany(timeout_ms=1000, max_records=100)
            except ConsumerStoppedError:
                return
            except KafkaError as exc:
                self._log.warning("ha.error", group=self.group,
                                  detail=f"{type(exc).__name__}: {exc}")
                await anyio.sleep(1.0)

    # --- the rebalance listener (called in aiokafka's coordination task) -------------------

    async def on_partitions_revoked(self, revoked: Any) -> None:
        # The leader keeps its connection: see the module docstring ("Revoke is not loss").
        self._rebalancing = True
        self._internal.notify()  # wakes the leader's heartbeats through the rebalance

    async def on_partitions_assigned(self, assigned: Any) -> None:
        self._rebalancing = False
        self._joined = True
        self._prove(self._clock())
        self._fenced = False
        self._holds = any(tp.topic == self.topic and tp.partition == 0 for tp in assigned)
        if self._role is Role.JOINING:
            self._log.info("ha.joined", member=self.member, group=self.group,
                           role="leader" if self._holds else "standby")
        self._update(f"partition 0 of {self.topic} was assigned to another member")

    # --- proofs and the fence ----------------------------------------------------------

    def _member_id(self) -> str:
        return self.member

    def _prove(self, at: float) -> None:
        if self._proof is None or at > self._proof:
            self._proof = at

    @property
    def fence_deadline(self) -> float | None:
        """clock() by which the leader stops without a newer proof (None: not leading)."""
        if self._role is not Role.LEADER or self._proof is None:
            return None
        return self._proof + self.fence_after

    async def _fence_watch(self) -> None:
        seen = self._internal.version()
        while True:
            deadline = self.fence_deadline
            if deadline is None:
                seen = await self._internal.wait(seen)
                continue
            left = deadline - self._clock()
            if left <= 0:
                self.fence()
                continue
            with anyio.move_on_after(left):
                seen = await self._internal.wait(seen)

    async def _heartbeat_through_rebalances(self) -> None:
        """While the leader rejoins, keep proving membership with heartbeats of its own."""
        interval = self.session_timeout / HEARTBEATS_PER_SESSION
        seen = self._internal.version()
        while True:
            coordinator = self._coordinator
            if not (self._rebalancing and self._role is Role.LEADER) or coordinator is None:
                seen = await self._internal.wait(seen)
                continue
            sent_at = self._clock()
            # A request without an answer proves nothing; the fence does not wait for it.
            if await coordinator.heartbeat(interval * 2) in _PROOF_CODES:
                self._prove(sent_at)
            await anyio.sleep(max(0.0, sent_at + interval - self._clock()))

    def fence(self) -> None:
        """Stop leading: no proof of membership for ha.session_timeout / 2. Leads again only
        when assigned partition 0 again (a rejoin is requested)."""
        proof = self._proof
        silent = self._clock() - proof if proof is not None else float("nan")
        self._fenced = True
        self._update(f"fenced: the group coordinator answered nothing for {silent:.1f} s "
                     f"(ha.session_timeout / 2 = {self.fence_after:g} s): this instance "
                     "cannot prove it still leads")
        if self._coordinator is not None and not self._closing:
            self._coordinator.request_rejoin()

    def _update(self, lost_reason: str) -> None:
        if self._holds and not self._fenced:
            role = Role.LEADER
        elif self._joined:
            role = Role.STANDBY
        else:
            role = Role.JOINING
        old, self._role = self._role, role
        if role is old:
            return
        # A member that left has no member id any more: its lost term still names it.
        member = self.member or (self._term.member if self._term is not None else "")
        if role is Role.LEADER:
            self._terms += 1
            self._term = Term(self._terms, member)
            self._metrics.leader.set(1)
            self._log.info("ha.elected", member=member, group=self.group,
                           instance=self.instance, term=self._terms)
        elif old is Role.LEADER:
            self._lost_reason = lost_reason
            self._metrics.leader.set(0)
            self._log.warning("ha.lost", member=member, group=self.group,
                              instance=self.instance, reason=lost_reason)
        self._internal.notify()
        if self._changes is not None:
            self._changes.notify()
