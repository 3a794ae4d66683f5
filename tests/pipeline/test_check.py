"""`streamd check` end to end: the CLI against the simulator and a real broker (Tansu), plus
the pure judges with a fixed clock and time zone."""

from __future__ import annotations

import io
import json
import socket
import time
from collections.abc import Iterator
from datetime import timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from rig import daemon_config, write_toml

from streamd.cli import main
from streamd.commands.check import (
    CHECK_NAMES,
    TIER_FIX,
    USER_CONTEXT_FIX,
    CheckEnv,
    Status,
    XAnswer,
    XProbe,
    check_command,
    describe_reset,
    judge_rate_limits,
)
from streamd.config import load_settings
from streamd.dev.broker import LocalBroker, free_port
from streamd.simulator import Simulator, SimulatorConfig

GOOD_TOKEN = "good-T0ken-for-check-tests"
BAD_TOKEN = "wrong-T0ken-never-printed"
RULE = {"value": "cat has:images", "tag": "cats"}


def _start(tier: str) -> Simulator:
    return Simulator(
        SimulatorConfig(tokens=(GOOD_TOKEN,), tier=tier, heartbeat_interval=0.5)
    ).start()


@pytest.fixture(scope="module")
def pro_sim() -> Iterator[Simulator]:
    sim = _start("pro")
    try:
        yield sim
    finally:
        sim.stop()


@pytest.fixture
def sim(pro_sim: Simulator) -> Simulator:
    """The shared pro-tier simulator holding exactly the configured rule."""
    pro_sim.delete_rules([r.id for r in pro_sim.rules()])
    pro_sim.add_rules([(RULE["value"], RULE["tag"])])
    return pro_sim


def config(
    sim: Simulator, broker: LocalBroker | str, topics: tuple[str, str], tmp_path: Path,
    **overrides: dict[str, Any],
) -> dict[str, dict[str, Any]]:
    bootstrap = broker if isinstance(broker, str) else broker.bootstrap
    base = daemon_config(sim.url, bootstrap, *topics, tmp_path)
    # Quiet the config warnings the daemon tests accept, so a good setup is all OK.
    base["x"]["bearer_token"] = GOOD_TOKEN
    base["stream"]["stall_timeout"] = 30
    base["rules"] = {"mode": "sync", "rule": [RULE]}
    base["spool"]["max_bytes"] = 1_000_000
    for section, values in overrides.items():
        base.setdefault(section, {}).update(values)
    return base


def run_check(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, cfg: dict[str, dict[str, Any]],
    *extra: str,
) -> tuple[int, dict[str, tuple[str, str]], str]:
    """Exit code, {name: (label, rest of line)} and the whole output (stdout + stderr)."""
    path = write_toml(tmp_path / "streamd.toml", cfg)
    path.chmod(0o600)  # it holds the token: readable by others it is a WARN (tested below)
    code = main(["check", "-c", str(path), *extra])
    captured = capsys.readouterr()
    lines: dict[str, tuple[str, str]] = {}
    for line in captured.out.splitlines():
        if line.startswith("["):
            label, _, rest = line.partition("] ")
            name, _, detail = rest.partition(": ")
            lines[name] = (label + "]", detail)
    return code, lines, captured.out + captured.err


def statuses(lines: dict[str, tuple[str, str]]) -> dict[str, str]:
    return {name: label for name, (label, _) in lines.items()}


def test_good_setup_passes_every_check(
    sim: Simulator, broker: LocalBroker, topics: tuple[str, str], tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, lines, output = run_check(capsys, tmp_path, config(sim, broker, topics, tmp_path))
    assert code == 0, output
    assert list(lines) == list(CHECK_NAMES)
    assert set(statuses(lines).values()) == {"[ OK ]"}, output
    assert "verdict: PASS (11 OK)" in output
    assert "449 of 450 requests left" in lines["rate_limits"][1]
    assert " UTC " in lines["rate_limits"][1]
    assert " local), in " in lines["rate_limits"][1]
    assert "in sync" in lines["rules"][1]
    assert "started and stopped, publishing nothing" in lines["producer"][1]
    # check creates nothing: it says what `streamd run` will create.
    assert not (tmp_path / "spool").exists()
    assert f"`streamd run` will create {tmp_path / 'spool'}" in lines["spool"][1]
    assert GOOD_TOKEN not in output


def test_json_output_shape(
    sim: Simulator, broker: LocalBroker, topics: tuple[str, str], tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = write_toml(tmp_path / "streamd.toml", config(sim, broker, topics, tmp_path))
    path.chmod(0o600)
    assert main(["check", "--json", "-c", str(path)]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["verdict"] == "pass"
    assert [c["name"] for c in document["checks"]] == list(CHECK_NAMES)
    for check in document["checks"]:
        assert set(check) == {"name", "status", "detail", "fix"}
        assert check["status"] == "ok"
        assert check["fix"] is None


def test_bad_token_fails_the_token_check_and_skips_its_dependants(
    sim: Simulator, broker: LocalBroker, topics: tuple[str, str], tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    token_file = tmp_path / "x_token"
    token_file.write_text(BAD_TOKEN + "\n")
    cfg = config(sim, broker, topics, tmp_path)
    del cfg["x"]["bearer_token"]
    cfg["x"]["bearer_token_file"] = str(token_file)
    code, lines, output = run_check(capsys, tmp_path, cfg)
    assert code == 1
    label, detail = lines["token"]
    assert label == "[FAIL]"
    assert "X rejected the token from x.bearer_token_file" in detail
    assert "HTTP 401" in detail
    assert "fix: check x.bearer_token_file" in detail
    got = statuses(lines)
    assert got["stream_access"] == got["rate_limits"] == got["rules"] == "[SKIP]"
    assert got["kafka"] == got["producer"] == got["topics"] == got["spool"] == "[ OK ]"
    assert "verdict: FAIL" in output
    assert "failed: token" in output
    assert BAD_TOKEN not in output


def test_user_context_token_is_named(
    sim: Simulator, broker: LocalBroker, topics: tuple[str, str], tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # The simulator answers its user-context token with 403 unsupported-authentication.
    cfg = config(sim, broker, topics, tmp_path, x={"bearer_token": "user-token"})
    code, lines, _ = run_check(capsys, tmp_path, cfg)
    assert code == 1
    label, detail = lines["token"]
    assert label == "[FAIL]"
    assert "unsupported-authentication" in detail
    assert USER_CONTEXT_FIX in detail


def test_missing_token_is_a_failed_check_not_a_crash(
    sim: Simulator, broker: LocalBroker, topics: tuple[str, str], tmp_path: Path,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    monkeypatch.delenv("STREAMD_X__BEARER_TOKEN", raising=False)
    cfg = config(sim, broker, topics, tmp_path)
    del cfg["x"]["bearer_token"]
    code, lines, output = run_check(capsys, tmp_path, cfg)
    assert code == 1
    assert lines["token"][0] == "[FAIL]"
    assert "x.bearer_token" in lines["token"][1]
    assert "LoadCredential=x_bearer_token" in lines["token"][1]
    assert statuses(lines)["rules"] == "[SKIP]"
    assert "internal error" not in output


def test_basic_tier_names_the_tier_and_what_to_do(
    broker: LocalBroker, topics: tuple[str, str], tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    basic = _start("basic")
    try:
        code, lines, output = run_check(capsys, tmp_path, config(basic, broker, topics, tmp_path))
    finally:
        basic.stop()
    assert code == 1
    label, detail = lines["token"]
    assert label == "[FAIL]"
    assert "403 client-forbidden" in detail
    assert TIER_FIX in detail
    assert lines["stream_access"][0] == "[FAIL]"
    assert "Pro/Enterprise or pay-per-use" in output
    assert basic.connects() == []  # stream access was judged without connecting


def test_unreachable_broker_fails_kafka_and_skips_topics(
    sim: Simulator, topics: tuple[str, str], tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    nowhere = f"127.0.0.1:{free_port()}"
    code, lines, output = run_check(capsys, tmp_path, config(sim, nowhere, topics, tmp_path))
    assert code == 1
    label, detail = lines["kafka"]
    assert label == "[FAIL]"
    assert f"cannot reach {nowhere}" in detail
    assert "fix: check kafka.bootstrap_servers" in detail
    assert lines["topics"][0] == "[SKIP]"
    assert lines["producer"][0] == "[SKIP]"
    assert statuses(lines)["token"] == "[ OK ]"
    assert "failed: kafka" in output


def test_missing_topic_fails_with_the_create_command(
    sim: Simulator, broker: LocalBroker, topics: tuple[str, str], tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    absent = f"{topics[1]}-absent"
    cfg = config(sim, broker, (topics[0], absent), tmp_path)
    code, lines, _ = run_check(capsys, tmp_path, cfg)
    assert code == 1
    label, detail = lines["topics"]
    assert label == "[FAIL]"
    assert f"missing: {absent}" in detail
    assert f"create it: kafka-topics --bootstrap-server {broker.bootstrap} --create --topic " \
           f"{absent}" in detail
    assert statuses(lines)["kafka"] == "[ OK ]"


def test_unwritable_spool_dir_fails(
    sim: Simulator, broker: LocalBroker, topics: tuple[str, str], tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # A path below a regular file can never be created, even by root (tests may run as root,
    # where permission bits would not stop the probe).
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    cfg = config(sim, broker, topics, tmp_path, spool={"dir": str(blocker / "spool")})
    code, lines, _ = run_check(capsys, tmp_path, cfg)
    assert code == 1
    label, detail = lines["spool"]
    assert label == "[FAIL]"
    assert f"{blocker} is a file, not a directory, so {blocker / 'spool'} cannot be " \
           "created" in detail
    assert "fix: set spool.dir (or STREAMD_SPOOL__DIR) to a directory this user may " \
           "write, e.g. spool.dir = " in detail


def test_an_existing_spool_dir_is_written_to_and_left_clean(
    sim: Simulator, broker: LocalBroker, topics: tuple[str, str], tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    (tmp_path / "spool").mkdir()
    code, lines, output = run_check(capsys, tmp_path, config(sim, broker, topics, tmp_path))
    assert code == 0, output
    assert lines["spool"] == ("[ OK ]", f"{tmp_path / 'spool'} is writable (write + fsync + "
                                        "delete)")
    assert list((tmp_path / "spool").iterdir()) == []  # the probe file is gone


def test_check_creates_no_directory_and_says_what_run_would_create(
    sim: Simulator, broker: LocalBroker, topics: tuple[str, str], tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Issue 19, item 6: `check` has no side effect on the file system; it reports each
    directory `streamd run` will create."""
    spool = tmp_path / "state" / "streamd" / "spool"
    cfg = config(sim, broker, topics, tmp_path, spool={"dir": str(spool)})
    code, lines, output = run_check(capsys, tmp_path, cfg)
    assert code == 0, output
    assert sorted(tmp_path.iterdir()) == [tmp_path / "streamd.toml"]  # run_check wrote it
    label, detail = lines["spool"]
    assert label == "[ OK ]"
    made = ", ".join(str(p) for p in (tmp_path / "state", spool.parent, spool))
    assert detail == (f"{spool} does not exist yet: `streamd run` will create {made} "
                      "(check created nothing)")


def test_a_broker_without_idempotent_producer_fails_with_the_fix(
    sim: Simulator, broker: LocalBroker, topics: tuple[str, str], tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Issue 19, item 1: Tansu refuses InitProducerId, and `streamd run` would then fail to
    start its producer every second: check starts one with the daemon's settings and says
    what to change."""
    cfg = config(sim, broker, topics, tmp_path, kafka={"enable_idempotence": True})
    code, lines, output = run_check(capsys, tmp_path, cfg)
    assert code == 1
    label, detail = lines["producer"]
    assert label == "[FAIL]"
    assert detail.startswith("this broker does not support the idempotent producer "
                             "(InitProducerId: ")
    assert detail.endswith("; a producer without idempotence starts — fix: set "
                           "kafka.enable_idempotence = false")
    assert statuses(lines)["kafka"] == statuses(lines)["topics"] == "[ OK ]"
    assert "verdict: FAIL (10 OK, 1 FAIL) — failed: producer" in output
    assert "Unexpected error during InitProducerIdRequest" not in output  # aiokafka's log


def test_a_rule_x_rejects_fails_the_check_and_changes_nothing(
    sim: Simulator, broker: LocalBroker, topics: tuple[str, str], tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Issue 19, item 1: X's dry run (`dry_run=true`) validates the configured rules, as
    `streamd run` does before it applies them (and exits 78 on an invalid one)."""
    bad = {"value": "cat nosuch:thing", "tag": "bad"}
    good = {"value": "dog", "tag": "dogs"}  # valid: a real sync would add it
    cfg = config(sim, broker, topics, tmp_path, rules={"rule": [RULE, good, bad]})
    before = [(r.value, r.tag) for r in sim.rules()]
    requests = len(sim.rules_requests())
    code, lines, output = run_check(capsys, tmp_path, cfg)
    assert code == 1
    label, detail = lines["rules"]
    assert label == "[FAIL]"
    assert "X rejects rule 'cat nosuch:thing' (tag 'bad'): Reference to invalid operator " \
           "'nosuch'" in detail
    assert "(dry run, nothing changed; `streamd run` would exit 78)" in detail
    assert "fix: correct the rule's value in the config" in detail
    assert [(r.value, r.tag) for r in sim.rules()] == before  # "dog" was not added
    posts = [r for r in sim.rules_requests()[requests:] if r.method == "POST"]
    assert len(posts) == 1, posts  # the dry run: X's verdict, not a guess
    assert "failed: rules" in output


def test_rules_out_of_sync_is_a_warning_and_still_passes(
    sim: Simulator, broker: LocalBroker, topics: tuple[str, str], tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    sim.add_rules([("dog", "dogs"), ("bird", None)])
    cfg = config(sim, broker, topics, tmp_path,
                 rules={"rule": [RULE, {"value": "fox", "tag": "f"}]})
    code, lines, output = run_check(capsys, tmp_path, cfg)
    assert code == 0, output
    label, detail = lines["rules"]
    assert label == "[WARN]"
    assert "3 on the server, 2 configured" in detail
    assert "1 to add, 2 to delete" in detail
    assert "streamd rules sync" in detail
    assert "verdict: PASS" in output


def test_rule_over_max_length_fails_locally(
    sim: Simulator, broker: LocalBroker, topics: tuple[str, str], tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    cfg = config(sim, broker, topics, tmp_path, rules={"max_length": 10})
    code, lines, _ = run_check(capsys, tmp_path, cfg)
    assert code == 1
    assert lines["rules"][0] == "[FAIL]"
    assert "over rules.max_length = 10" in lines["rules"][1]


def test_mode_off_with_no_server_rules_fails(
    sim: Simulator, broker: LocalBroker, topics: tuple[str, str], tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    sim.delete_rules([r.id for r in sim.rules()])
    cfg = config(sim, broker, topics, tmp_path)
    cfg["rules"] = {"mode": "off"}
    code, lines, _ = run_check(capsys, tmp_path, cfg)
    assert code == 1
    assert lines["rules"][0] == "[FAIL]"
    assert "409" in lines["rules"][1]


# --- pure judges: fixed clock and zone ----------------------------------------------------

RESET = 1_700_000_900.0  # 2023-11-14 22:28:20 UTC
CEST = timezone(timedelta(hours=2), "CEST")


def _answer(status: int = 200, **headers: str) -> XProbe:
    return XProbe(XAnswer(status, headers, b"{}"), rules=())


def test_reset_shown_in_utc_local_and_seconds() -> None:
    text = describe_reset(RESET, RESET - 840, CEST)
    assert text == "2023-11-14 22:28:20 UTC (2023-11-15 00:28:20 CEST local), in 840 s"


def test_rate_limits_ok_warn_and_millisecond_resets() -> None:
    headers = {"x-rate-limit-limit": "450", "x-rate-limit-remaining": "449"}
    ok = judge_rate_limits(_answer(**headers, **{"x-rate-limit-reset": str(int(RESET))}),
                           now=RESET - 10, local_tz=CEST)
    assert ok.status is Status.OK
    assert ok.detail == ("rules GET: 449 of 450 requests left; window resets 2023-11-14 "
                         "22:28:20 UTC (2023-11-15 00:28:20 CEST local), in 10 s")
    in_ms = judge_rate_limits(
        _answer(**headers, **{"x-rate-limit-reset": str(int(RESET * 1000))}),
        now=RESET - 10, local_tz=CEST,
    )
    assert in_ms.detail == ok.detail
    exhausted = judge_rate_limits(
        _answer(**{**headers, "x-rate-limit-remaining": "0",
                   "x-rate-limit-reset": str(int(RESET))}),
        now=RESET, local_tz=CEST,
    )
    assert exhausted.status is Status.WARN
    assert "exhausted" in exhausted.detail
    assert judge_rate_limits(_answer(), now=RESET).status is Status.WARN
    assert judge_rate_limits(_answer(401), now=RESET).status is Status.SKIP


def test_silent_broker_fails_within_the_deadline(
    sim: Simulator, topics: tuple[str, str], tmp_path: Path,
) -> None:
    # A socket that accepts connections (kernel backlog) but never answers a request.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        bootstrap = f"127.0.0.1:{silent.getsockname()[1]}"
        cfg = config(sim, bootstrap, topics, tmp_path)
        path = write_toml(tmp_path / "streamd.toml", cfg)
        out = io.StringIO()
        started = time.monotonic()
        code = check_command(load_settings(path), as_json=True, out=out,
                             env=CheckEnv(kafka_deadline=1.0))
        elapsed = time.monotonic() - started
    assert code == 1
    checks = {c["name"]: c for c in json.loads(out.getvalue())["checks"]}
    assert checks["kafka"]["status"] == "fail"
    assert "no answer within 1 s" in checks["kafka"]["detail"]
    assert checks["topics"]["status"] == "skip"
    assert elapsed < 5


# --- secrets and hostile answers ----------------------------------------------------------


def test_config_readable_by_others_is_a_warning_naming_the_chmod(
    sim: Simulator, broker: LocalBroker, topics: tuple[str, str], tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = write_toml(tmp_path / "streamd.toml", config(sim, broker, topics, tmp_path))
    path.chmod(0o644)
    code = main(["check", "-c", str(path)])
    output = capsys.readouterr().out
    assert code == 0, output
    (line,) = [line for line in output.splitlines() if line.startswith("[WARN] config:")]
    assert f"chmod 600 {path}" in line
    assert "x.bearer_token" in line
    assert GOOD_TOKEN not in output


HOSTILE_DETAIL = "\x1b[2J\r[ OK ] token"


class _HostileX:
    """An X stand-in whose rules endpoint answers 401 with a problem whose title and detail
    try to clear the screen and draw a passing line (the simulator's bodies are fixed)."""

    def __init__(self) -> None:
        import http.server
        import threading

        body = json.dumps({"title": f"Unauthorized{HOSTILE_DETAIL}",
                           "detail": f"Unauthorized{HOSTILE_DETAIL}\u202e",
                           "type": "about:blank", "status": 401}).encode()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(401)
                self.send_header("Content-Type", "application/problem+json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> _HostileX:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize("as_json", [False, True])
def test_a_hostile_problem_detail_cannot_fake_a_passing_line(
    sim: Simulator, topics: tuple[str, str], tmp_path: Path,
    capsys: pytest.CaptureFixture[str], as_json: bool,
) -> None:
    nowhere = f"127.0.0.1:{free_port()}"
    with _HostileX() as hostile:
        cfg = config(sim, nowhere, topics, tmp_path, x={"api_url": hostile.url})
        extra = ("--json",) if as_json else ()
        code, lines, output = run_check(capsys, tmp_path, cfg, *extra)
    assert code == 1
    for bad in ("\x1b", "\r", "\u202e"):
        assert bad not in output
    if as_json:
        token = {c["name"]: c for c in json.loads(output)["checks"]}["token"]
        assert token["status"] == "fail"
        assert "\x1b[2J" in token["detail"]  # JSON readers get X's text, escaped by JSON
        return
    assert "\\x1b[2J" in lines["token"][1]  # shown as text
    assert lines["token"][0] == "[FAIL]"
    assert not any(line.startswith("[ OK ] token") for line in output.splitlines())
    assert GOOD_TOKEN not in output
