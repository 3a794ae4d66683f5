"""What `streamd check` reports of the election (its "ha" line): the group's members, the
current leader, and this instance's role.

* Members: DescribeGroups. A member's id is `<kafka.client_id>-ha-<instance>-<uuid>`
  (`election.client_settings`), so the instance (host and spool directory) is read back
  from it, and this instance is the member whose id carries its own instance id.
* The leader: the member whose assignment holds partition 0 of ha.topic (Kafka reports the
  assignments; Tansu reports none), else the writer of the group's last leader record, if it
  is still a member.

Nothing is joined or written: `check` must not disturb a running election.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from streamd.config import Settings
from streamd.errors import StreamdError
from streamd.ha.bounded import bounded, settle
from streamd.ha.election import client_settings, config_problem, instance_id
from streamd.ha.records import LeaderRecord, RecordLog
from streamd.ops.logs import get_logger

__all__ = ["GroupView", "judge_group", "probe_group"]

_UUID_LEN: Final = 36


@dataclass(frozen=True)
class GroupView:
    members: tuple[str, ...] = ()  # member ids
    state: str = ""
    assigned_leader: str | None = None  # from the assignments, when the broker reports them
    last_record: LeaderRecord | None = None
    error: str | None = None


async def probe_group(settings: Settings, deadline: float) -> GroupView:
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.coordinator.protocol import ConsumerProtocol

    ha = settings.ha
    try:
        client = client_settings(settings, settings.kafka.resolve_sasl_password())
    except (StreamdError, OSError) as exc:
        return GroupView(error=str(exc))
    client["client_id"] = f"{settings.kafka.client_id}-check"
    admin = AIOKafkaAdminClient(**client, request_timeout_ms=int(deadline * 1000))

    async def describe() -> Any:
        await admin.start()
        return (await admin.describe_consumer_groups([ha.group]))[0]

    try:
        answer = await bounded(describe(), deadline)
    except Exception as exc:  # aiokafka raises its own and OSError kinds alike
        reason = (f"no answer within {deadline:g} s" if isinstance(exc, TimeoutError)
                  else f"{type(exc).__name__}: {exc}")
        return GroupView(error=reason)
    finally:
        await settle(admin.close(), 2.0)
    group: Any = next((g for g in answer.groups if g[1] == ha.group), None)
    if group is None:
        return GroupView(error="the coordinator did not describe the group")
    members = tuple(str(m[0]) for m in group[5])
    assigned: str | None = None
    for member in group[5]:
        raw = member[4]
        if not raw:
            continue
        try:
            assignment = ConsumerProtocol.ASSIGNMENT.decode(raw)
        except Exception:  # not ours: nothing to learn from it
            continue
        if any(topic == ha.topic and 0 in partitions
               for topic, partitions in assignment.assignment):
            assigned = str(member[0])
    records = RecordLog(client, ha.topic, ha.group, get_logger("streamd.check"),
                        timeout=deadline)
    last = await records.last()
    return GroupView(members, str(group[2]), assigned, last)


def _instance_of(member_id: str, prefix: str) -> str:
    """The instance id inside a member id (`<prefix><instance>-<uuid>`), else the id."""
    if member_id.startswith(prefix) and len(member_id) > len(prefix) + _UUID_LEN + 1:
        return member_id[len(prefix):-(_UUID_LEN + 1)]
    return member_id


def judge_group(
    settings: Settings, view: GroupView | None, topics: Mapping[str, int], *,
    now: float | None = None,
) -> tuple[str, str, str | None]:
    """(status: "ok" | "warn" | "fail" | "skip", detail, fix) of the ha check. `topics`: the
    cluster's topics and partition counts (the kafka check's probe); `view` None: the Kafka
    checks failed."""
    ha = settings.ha
    if ha.mode == "off":
        return ("ok", 'ha.mode = "off": no election; this instance reads X whenever it runs',
                None)
    problem = config_problem(settings)
    if problem is not None:
        return ("fail", str(problem), "give ha.topic a topic of its own")
    if view is None:
        return ("skip", "skipped: the kafka check failed", None)
    partitions = topics.get(ha.topic)
    if partitions is None:
        return ("fail", f"ha.topic {ha.topic!r} does not exist: `streamd run` exits 78",
                f"create it with one partition: kafka-topics --bootstrap-server "
                f"{settings.kafka.bootstrap_servers} --create --topic {ha.topic} "
                "--partitions 1")
    if view.error is not None:
        return ("fail", f"cannot describe group {ha.group!r}: {view.error}",
                "check that this principal may describe the group (Describe on the group)")
    me = instance_id(settings)
    prefix = f"{settings.kafka.client_id}-ha-"
    names = [_instance_of(m, prefix) for m in view.members]
    leader, how = view.assigned_leader, "holds partition 0"
    record = view.last_record
    if leader is None and record is not None and record.member in view.members:
        age = (time.time() if now is None else now) - record.written_at
        leader, how = record.member, f"its last leader record is {age:.0f} s old"
    own = [m for m, name in zip(view.members, names, strict=True) if name == me]
    role = ("leader" if leader is not None and leader in own
            else "standby" if own else "not running (not a member)")
    extra = f" (ha.topic has {partitions} partitions; only partition 0 is used)" \
        if partitions != 1 else ""
    if not view.members:
        return ("ok", f"group {ha.group!r} on {ha.topic!r}: no member yet; the first "
                      f"`streamd run` with ha.mode = \"kafka\" leads{extra}", None)
    listed = ", ".join(names)
    if leader is None:
        return ("warn", f"group {ha.group!r} ({view.state}): {len(names)} member(s) [{listed}]"
                        f", none known to lead (a rebalance, or a leader that died before it "
                        f"wrote its record); this instance ({me}): {role}{extra}",
                "wait ha.session_timeout and check again; `streamd connections list` shows "
                "who holds X's connection")
    connection = ""
    if record is not None and record.member == leader and record.connection_ids:
        # What `connections` lists as another client's, on a standby.
        connection = f", its X connection {', '.join(record.connection_ids)}"
    return ("ok", f"group {ha.group!r} ({view.state}): {len(names)} member(s) [{listed}]; "
                  f"leader {_instance_of(leader, prefix)} ({how}{connection}); this instance "
                  f"({me}): {role}{extra}", None)
