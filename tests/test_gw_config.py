"""Gateway config: every key checked, errors naming key, rule and value; the sample documented."""

import re
import tomllib
from pathlib import Path

import pytest

from gateway.config import (DEFAULT_CLIENT_ID, REQUIRED, RULE_KINDS, SAMPLE_PATH, SCHEMA,
                            SINK_COMMON, SINK_DEFAULTS, SINK_SCHEMAS, Config, MqttConfig,
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
    assert config.outbox.path == tmp_path / "outbox.db"
    assert [s.name for s in config.sinks] == ["file"]
    assert config.gateway.require_registration is False


def test_sink_sections_shared_subscription_and_secrets(tmp_path):
    config = load_config(write(tmp_path, """
[mqtt]
shared_group = "gw"
[sinks.file]
path = "r.jsonl"
[sinks.http]
url = "https://platform.example/ingest/"
token = "t0ken"
batch_max_records = 50
[sinks.ngsi-ld]
url = "http://orion:1026"
"""))
    assert config.mqtt.subscriptions == ["$share/gw/m/+/r", "m/+/s", "m/+/a"]
    http = config.sinks[1]
    assert (http.name, http.options["url"], http.batch_max_records) == \
        ("http", "https://platform.example/ingest", 50)
    assert http.options["gzip"] is True and http.backoff_initial_s == 1.0
    assert config.sinks[0].batch_max_age_s == SINK_DEFAULTS["file"]["batch_max_age_s"]
    assert "t0ken" not in repr(config)


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
                         "prefix, username, password, keepalive, qos, shared_group, tls, ca_file, "
                         "cert_file, key_file)"),
    ("[jetstream]\ninstances = 0", "jetstream.instances must be an integer 1-64: got 0"),
    ('[jetstream]\nservers = ["nats://10.0.0.11:4222"]\ninstances = 2',
     'jetstream.instance must name this instance (unique among the 2 instances, e.g. "gw-a") '
     'when instances is above 1'),
    ('[jetstream]\ninstance = "gw a"',
     'jetstream.instance must be 1-64 characters A-Z a-z 0-9 _ - (a JetStream name): '
     'got "gw a"'),
    ("[gateway]\nrequire_registration = 1",
     "gateway.require_registration must be true or false: got 1"),
    ('[sinks.http]\nurl = "http://h.example"\nbackoff_initial_s = "1s"',
     'sinks.http.backoff_initial_s must be a number 0.01-3600: got "1s"'),
    ('[sinks.http]\nurl = "http://h.example"\ngzip_level = 0',
     "sinks.http.gzip_level must be an integer 1-9: got 0"),
    ('[sinks.kafka]\nurl = 1',
     "sinks.kafka is not a known sink (known: file, http, ngsi-ld, mqtt, history)"),
    ('[sinks.mqtt]\nport = 1', "sinks.mqtt.host is required (the upstream broker)"),
    ('[gateway]\nlog_level = "verbose"',
     'gateway.log_level must be one of DEBUG, INFO, WARNING, ERROR: got "verbose"'),
    ("[gateway]\nstats_file = 3", "gateway.stats_file must be a non-empty path string: got 3"),
    ("[extra]\na = 1", "extra is not a known section (known: mqtt, jetstream, ingest, outbox, api, gateway, "
                      "dashboard, sink, sinks, rules)"),
    ('[dashboard]\nmap_tiles = "https://tile.example/{z}/{x}.png"',
     'dashboard.map_tiles must be an http:// or https:// URL with {z}, {x} and {y} in its path '
     '(also allowed: {s} starting the host, {r}, {-y}), or "" for no tiles: '
     'got "https://tile.example/{z}/{x}.png"'),
    ('mqtt = "x"', 'mqtt must be a table [mqtt]: got "x"'),
])
def test_errors_name_key_rule_and_value(tmp_path, text, message):
    path = write(tmp_path, text + '\n[sink]\npath = "r.jsonl"\n' if "[sink]" not in text else text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: {message}"


def test_a_sink_is_required_and_the_short_form_cannot_mix(tmp_path):
    with pytest.raises(ConfigError, match=r"sinks must configure at least one sink"):
        load_config(write(tmp_path, "[mqtt]\n"))
    with pytest.raises(ConfigError, match=r"sink\.path must be a non-empty path string"):
        load_config(write(tmp_path, '[sink]\npath = ""\n'))
    with pytest.raises(ConfigError, match=r"sink cannot be used together with \[sinks.file\]"):
        load_config(write(tmp_path, '[sink]\npath = "a"\n[sinks.file]\npath = "b"\n'))


def test_unreadable_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="is not valid TOML"):
        load_config(write(tmp_path, "[mqtt\n"))


def test_sample_documents_every_key_with_its_default(tmp_path):
    text = SAMPLE_PATH.read_text()
    uncommented = re.sub(r"^# (\[(?:sinks|rules)\.[a-z0-9_-]+\]|\w+ = )", r"\1", text,
                         flags=re.M)
    shown = tomllib.loads(uncommented)
    for section, options in SCHEMA.items():
        if section == "sink":
            continue  # the short form of [sinks.file], mentioned but not shown
        assert f"[{section}]" in text
        for key, (_, default) in options.items():
            assert key in shown.get(section, {}), f"sample.toml lacks {section}.{key}"
            if default is not None and default is not REQUIRED:
                assert shown[section][key] == default, f"{section}.{key} default differs"
    for name, options in SINK_SCHEMAS.items():
        section = shown["sinks"][name]
        for key, (_, default) in {**options, **SINK_COMMON}.items():
            default = SINK_DEFAULTS.get(name, {}).get(key, default)
            assert key in section, f"sample.toml lacks sinks.{name}.{key}"
            if default is not None and default is not REQUIRED:
                assert section[key] == default, f"sinks.{name}.{key} default differs"
    # as shipped (only the file sink on) the sample is a valid config
    config = parse_config(tomllib.loads(text), base_dir=tmp_path)
    assert isinstance(config, Config)
    assert config.mqtt == MqttConfig()
    assert [s.name for s in config.sinks] == ["file"]
    # and with every key uncommented too: every sink, and a rule of each kind
    full = parse_config(shown, base_dir=tmp_path)
    assert len(full.sinks) == len(SINK_SCHEMAS)
    assert sorted(r.kind for r in full.rules) == sorted(RULE_KINDS)
