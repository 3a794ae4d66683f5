"""`streamd check`'s "ha" line, judged without a broker (streamd/ha/group.py)."""

from __future__ import annotations

from pathlib import Path

from streamd.config import Settings
from streamd.ha.election import instance_id
from streamd.ha.group import GroupView, judge_group
from streamd.ha.records import LeaderRecord

UUID = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
TOPICS = {"streamd.leader": 1, "x.tweets": 3}


def settings(tmp_path: Path, mode: str = "kafka") -> Settings:
    return Settings.model_validate({"spool": {"dir": str(tmp_path / "spool")},
                                    "ha": {"mode": mode}})


def member(instance: str) -> str:
    return f"streamd-ha-{instance}-{UUID}"


def test_off_passes_and_says_so(tmp_path: Path) -> None:
    status, detail, fix = judge_group(settings(tmp_path, "off"), None, {})
    assert (status, fix) == ("ok", None)
    assert detail.startswith('ha.mode = "off"')


def test_the_topic_must_exist(tmp_path: Path) -> None:
    status, detail, fix = judge_group(settings(tmp_path), GroupView(), {"x.tweets": 3})
    assert status == "fail"
    assert "'streamd.leader' does not exist" in detail
    assert fix is not None
    assert "--topic streamd.leader --partitions 1" in fix


def test_skipped_without_kafka_and_failed_without_a_description(tmp_path: Path) -> None:
    assert judge_group(settings(tmp_path), None, {})[0] == "skip"
    status, detail, _ = judge_group(settings(tmp_path), GroupView(error="denied"), TOPICS)
    assert (status, detail) == ("fail", "cannot describe group 'streamd': denied")


def test_no_member_yet_passes(tmp_path: Path) -> None:
    status, detail, _ = judge_group(settings(tmp_path), GroupView(state="Empty"), TOPICS)
    assert status == "ok"
    assert "no member yet" in detail


def test_the_leader_from_the_assignments_and_this_instances_role(tmp_path: Path) -> None:
    s = settings(tmp_path)
    me = instance_id(s)
    view = GroupView((member("other-11112222"), member(me)), "Stable",
                     assigned_leader=member("other-11112222"))
    status, detail, _ = judge_group(s, view, TOPICS)
    assert status == "ok"
    assert detail == (f"group 'streamd' (Stable): 2 member(s) [other-11112222, {me}]; leader "
                      f"other-11112222 (holds partition 0); this instance ({me}): standby")


def test_the_leader_from_its_record_when_the_broker_reports_no_assignment(
    tmp_path: Path,
) -> None:
    s = settings(tmp_path)
    me = instance_id(s)
    record = LeaderRecord("streamd", member(me), me, "h", "reading", ("c-1",),
                          written_at=1000.0)
    view = GroupView((member(me),), "Stable", last_record=record)
    status, detail, _ = judge_group(s, view, TOPICS, now=1004.0)
    assert status == "ok"
    assert detail.endswith(f"leader {me} (its last leader record is 4 s old, its X "
                           f"connection c-1); this instance ({me}): leader")
    # The record's writer is gone (it died; no successor wrote yet): nobody known to lead.
    gone = LeaderRecord("streamd", member("gone-00000000"), "gone", "h", "reading")
    status, detail, fix = judge_group(
        s, GroupView((member(me),), "Stable", last_record=gone), TOPICS)
    assert status == "warn"
    assert "none known to lead" in detail
    assert detail.endswith(f"this instance ({me}): standby")
    assert fix is not None


def test_not_a_member(tmp_path: Path) -> None:
    s = settings(tmp_path)
    view = GroupView((member("other-11112222"),), "Stable",
                     assigned_leader=member("other-11112222"))
    assert judge_group(s, view, TOPICS)[1].endswith("): not running (not a member)")
