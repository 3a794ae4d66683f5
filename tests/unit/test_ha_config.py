"""The [ha] section (README "High availability"): defaults, validation naming the key (exit
78), environment overrides like every other section."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamd.config import Settings, load_settings
from streamd.errors import ConfigError
from streamd.reasons import ExitCode

RULE = "\n[[rules.rule]]\nvalue = 'cat'\n"


def load(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> Settings:
    path = tmp_path / "streamd.toml"
    path.write_text(text + RULE)
    return load_settings(path, environ or {})


def test_defaults_are_off_and_the_interface_names() -> None:
    ha = Settings.model_validate({}).ha
    assert (ha.mode, ha.group, ha.topic, ha.session_timeout) == (
        "off", "streamd", "streamd.leader", 10)


def test_a_kafka_section(tmp_path: Path) -> None:
    ha = load(tmp_path, '[ha]\nmode = "Kafka"\ngroup = "x-stream"\ntopic = "x.leader"\n'
                        "session_timeout = 6\n").ha
    assert (ha.mode, ha.group, ha.topic, ha.session_timeout) == ("kafka", "x-stream",
                                                                  "x.leader", 6)


def test_environment_overrides(tmp_path: Path) -> None:
    ha = load(tmp_path, "", {"STREAMD_HA__MODE": "kafka", "STREAMD_HA__SESSION_TIMEOUT": "30",
                             "STREAMD_HA__GROUP": "pods"}).ha
    assert (ha.mode, ha.session_timeout, ha.group) == ("kafka", 30, "pods")


@pytest.mark.parametrize(("text", "key", "says"), [
    ('mode = "zookeeper"', "ha.mode", "must be one of off, kafka; got 'zookeeper'"),
    ("session_timeout = 3", "ha.session_timeout", "greater than or equal to 6"),
    ("session_timeout = 3600", "ha.session_timeout", "less than or equal to 1800"),
    ('topic = "no spaces"', "ha.topic", "Kafka topic name"),
    ('topic = ".."', "ha.topic", "Kafka topic name"),
    ('group = ""', "ha.group", "at least 1 character"),
    ('group = " padded"', "ha.group", "without leading or trailing spaces"),
    ("leader = true", "ha.leader", "unknown key"),
])
def test_bad_values_name_the_key(tmp_path: Path, text: str, key: str, says: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, f"[ha]\n{text}\n")
    assert info.value.key == key
    assert says in str(info.value)
    assert info.value.exit_code == ExitCode.CONFIG
