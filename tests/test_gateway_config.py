"""Gateway config: every key checked, errors naming key, rule and value; the sample documented."""

import re
import tomllib
from pathlib import Path

import pytest

from gateway.config import (DEFAULT_CLIENT_ID, REQUIRED, SAMPLE_PATH, SCHEMA, Config, MqttConfig,
                            load_config, parse_config)
from gateway.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    return path


def test_minimal_config_takes_the_defaults(tmp_path):
    config = load_config(write(tmp_path, '[sink]\npath = "out/readings.jsonl"\n'))
    assert config.mqtt == MqttConfig()
    assert config.mqtt.client_id == DEFAULT_CLIENT_ID
    assert config.mqtt.subscription == "m/+/r"
    assert config.sink.path == tmp_path / "out" / "readings.jsonl"  # relative to the file
    assert config.gateway.stats_file is None and config.gateway.log_level == "INFO"


def test_full_config(tmp_path):
    config = load_config(write(tmp_path, """
[mqtt]
host = "broker.lan"
port = 8883
client_id = "gw-2"
prefix = "city_a"
username = "gw"
password = "s3cret"
keepalive = 60
qos = 1
[sink]
path = "/var/lib/meterlink/readings.jsonl"
[gateway]
stats_file = "stats.json"
log_level = "debug"
"""))
    mqtt = config.mqtt
    assert (mqtt.host, mqtt.port, mqtt.prefix) == ("broker.lan", 8883, "city_a")
    assert config.mqtt.subscription == "city_a/+/r"
    assert config.sink.path == Path("/var/lib/meterlink/readings.jsonl")
    assert config.gateway.stats_file == tmp_path / "stats.json"
    assert config.gateway.log_level == "DEBUG"
    assert "s3cret" not in repr(config)


@pytest.mark.parametrize("text, message", [
    ('[mqtt]\nport = "abc"', 'mqtt.port must be an integer 1-65535: got "abc"'),
    ("[mqtt]\nport = 0", "mqtt.port must be an integer 1-65535: got 0"),
    ("[mqtt]\nport = 70000", "mqtt.port must be an integer 1-65535: got 70000"),
    ("[mqtt]\nport = true", "mqtt.port must be an integer 1-65535: got true"),
    ('[mqtt]\nhost = ""', 'mqtt.host must be a non-empty string: got ""'),
    ("[mqtt]\nhost = 5", "mqtt.host must be a non-empty string: got 5"),
    ('[mqtt]\nprefix = "M/x"', 'mqtt.prefix must be 1-16 characters a-z 0-9 _ -: got "M/x"'),
    ("[mqtt]\nqos = 0",
     "mqtt.qos must be 1 (a reading is acknowledged only once it is stored): got 0"),
    ("[mqtt]\nkeepalive = 1.5", "mqtt.keepalive must be an integer 1-65535: got 1.5"),
    ("[mqtt]\nhots = 1", "mqtt.hots is not a known key of [mqtt] (known: host, port, client_id, "
                         "prefix, username, password, keepalive, qos)"),
    ('[gateway]\nlog_level = "verbose"',
     'gateway.log_level must be one of DEBUG, INFO, WARNING, ERROR: got "verbose"'),
    ("[gateway]\nstats_file = 3", "gateway.stats_file must be a non-empty path string: got 3"),
    ("[extra]\na = 1", "extra is not a known section (known: mqtt, sink, gateway)"),
    ('mqtt = "x"', 'mqtt must be a table [mqtt]: got "x"'),
])
def test_errors_name_key_rule_and_value(tmp_path, text, message):
    path = write(tmp_path, text + '\n[sink]\npath = "r.jsonl"\n' if "[sink]" not in text else text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: {message}"


def test_sink_path_is_required(tmp_path):
    path = write(tmp_path, "[mqtt]\n")
    with pytest.raises(ConfigError, match=r"sink\.path is required"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"sink\.path must be a non-empty path string"):
        load_config(write(tmp_path, '[sink]\npath = ""\n'))


def test_unreadable_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="is not valid TOML"):
        load_config(write(tmp_path, "[mqtt\n"))


def test_sample_documents_every_key_with_its_default(tmp_path):
    text = SAMPLE_PATH.read_text()
    uncommented = re.sub(r"^# (\w+ = )", r"\1", text, flags=re.M)
    shown = tomllib.loads(uncommented)
    for section, options in SCHEMA.items():
        assert f"[{section}]" in text
        for key, (_, default) in options.items():
            assert key in shown.get(section, {}), f"sample.toml lacks {section}.{key}"
            if default is not None and default is not REQUIRED:
                assert shown[section][key] == default, f"{section}.{key} default differs"
    # as shipped (keys commented out) the sample is a valid config
    config = parse_config(tomllib.loads(text), base_dir=tmp_path)
    assert isinstance(config, Config)
    assert config.mqtt == MqttConfig()
    # and with every key uncommented too
    parse_config(shown, base_dir=tmp_path)
