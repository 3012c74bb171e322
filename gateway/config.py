"""Gateway configuration: a TOML file, checked key by key before anything connects.

    config = load_config("/etc/meterlink/gateway.toml")
    config.mqtt.port, config.sink.path

`gateway/sample.toml` documents every key with its default (a test checks it against
`SCHEMA`). Every error names the key, the rule and the value received:
`mqtt.port must be an integer 1-65535: got "abc"`. Unknown sections and keys are errors too,
so a typo never silently falls back to a default. Relative paths are taken relative to the
folder of the config file, so a service does not depend on its working directory.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass
from datetime import date, datetime, time
from pathlib import Path
from typing import Any, Callable, Mapping

from gateway.errors import ConfigError
from gateway.wire import PREFIX_RE

DEFAULT_MQTT_HOST = "127.0.0.1"
DEFAULT_MQTT_PORT = 1883
DEFAULT_CLIENT_ID = "meterlink-gateway"
DEFAULT_PREFIX = "m"
DEFAULT_KEEPALIVE = 30
MQTT_QOS = 1  # fixed: a reading is acknowledged only after it is stored
DEFAULT_LOG_LEVEL = "INFO"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")

SAMPLE_PATH = Path(__file__).with_name("sample.toml")


@dataclass(frozen=True, kw_only=True)
class MqttConfig:
    """`[mqtt]`: the broker connection and topic prefix."""

    host: str = DEFAULT_MQTT_HOST
    port: int = DEFAULT_MQTT_PORT
    client_id: str = DEFAULT_CLIENT_ID
    prefix: str = DEFAULT_PREFIX
    username: str | None = None
    password: str | None = None
    keepalive: int = DEFAULT_KEEPALIVE
    qos: int = MQTT_QOS

    @property
    def subscription(self) -> str:
        """The topic filter the gateway subscribes: reading messages of every node."""
        return f"{self.prefix}/+/r"

    def __repr__(self) -> str:
        password = None if self.password is None else "***"
        return (f"MqttConfig(host={self.host!r}, port={self.port}, "
                f"client_id={self.client_id!r}, prefix={self.prefix!r}, "
                f"username={self.username!r}, password={password!r}, "
                f"keepalive={self.keepalive}, qos={self.qos})")


@dataclass(frozen=True, kw_only=True)
class SinkConfig:
    """`[sink]`: where accepted readings go (a JSONL file for now)."""

    path: Path


@dataclass(frozen=True, kw_only=True)
class GatewaySettings:
    """`[gateway]`: process-level settings."""

    stats_file: Path | None = None
    log_level: str = DEFAULT_LOG_LEVEL


@dataclass(frozen=True, kw_only=True)
class Config:
    """The whole gateway configuration."""

    mqtt: MqttConfig
    sink: SinkConfig
    gateway: GatewaySettings = GatewaySettings()


# ---- checking -----------------------------------------------------------------------------

def show(value: Any) -> str:
    """A received value as it would read in TOML, for error messages."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, (datetime, date, time)):
        return value.isoformat()
    return repr(value)


# A checker takes (key, value, base_dir) and returns the value to store or raises ConfigError.
Checker = Callable[[str, Any, Path], Any]


def _integer(low: int, high: int) -> Checker:
    def check(key: str, value: Any, base: Path) -> int:
        if type(value) is not int or not low <= value <= high:
            raise ConfigError(key, f"must be an integer {low}-{high}", got=show(value))
        return value
    return check


def _text(*, allow_empty: bool = False) -> Checker:
    rule = "must be a string" if allow_empty else "must be a non-empty string"

    def check(key: str, value: Any, base: Path) -> str:
        if not isinstance(value, str) or (not value and not allow_empty):
            raise ConfigError(key, rule, got=show(value))
        return value
    return check


def _prefix(key: str, value: Any, base: Path) -> str:
    if not isinstance(value, str) or not PREFIX_RE.match(value):
        raise ConfigError(key, "must be 1-16 characters a-z 0-9 _ -", got=show(value))
    return value


def _qos(key: str, value: Any, base: Path) -> int:
    if type(value) is not int or value != MQTT_QOS:
        raise ConfigError(key, "must be 1 (a reading is acknowledged only once it is stored)",
                          got=show(value))
    return value


def _path(key: str, value: Any, base: Path) -> Path:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(key, "must be a non-empty path string", got=show(value))
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path


def _log_level(key: str, value: Any, base: Path) -> str:
    if not isinstance(value, str) or value.upper() not in LOG_LEVELS:
        raise ConfigError(key, f"must be one of {', '.join(LOG_LEVELS)}", got=show(value))
    return value.upper()


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()

# section -> key -> (checker, default). The one description of the file format.
SCHEMA: dict[str, dict[str, tuple[Checker, Any]]] = {
    "mqtt": {
        "host": (_text(), DEFAULT_MQTT_HOST),
        "port": (_integer(1, 65535), DEFAULT_MQTT_PORT),
        "client_id": (_text(), DEFAULT_CLIENT_ID),
        "prefix": (_prefix, DEFAULT_PREFIX),
        "username": (_text(), None),
        "password": (_text(allow_empty=True), None),
        "keepalive": (_integer(1, 65535), DEFAULT_KEEPALIVE),
        "qos": (_qos, MQTT_QOS),
    },
    "sink": {
        "path": (_path, REQUIRED),
    },
    "gateway": {
        "stats_file": (_path, None),
        "log_level": (_log_level, DEFAULT_LOG_LEVEL),
    },
}

_REQUIRED_WHY = {"sink.path": "(the JSONL file accepted readings are appended to)"}


def parse_config(data: Mapping[str, Any], *, base_dir: str | Path = ".") -> Config:
    """Checks a parsed TOML document against `SCHEMA` and builds the Config."""
    base = Path(base_dir)
    for section in data:
        if section not in SCHEMA:
            raise ConfigError(section, f"is not a known section (known: {', '.join(SCHEMA)})")
    values: dict[str, dict[str, Any]] = {}
    for section, options in SCHEMA.items():
        raw = data.get(section, {})
        if not isinstance(raw, dict):
            raise ConfigError(section, f"must be a table [{section}]", got=show(raw))
        for key in raw:
            if key not in options:
                raise ConfigError(f"{section}.{key}", f"is not a known key of [{section}] "
                                                      f"(known: {', '.join(options)})")
        out: dict[str, Any] = {}
        for key, (check, default) in options.items():
            name = f"{section}.{key}"
            if key in raw:
                out[key] = check(name, raw[key], base)
            elif default is REQUIRED:
                raise ConfigError(name, f"is required {_REQUIRED_WHY.get(name, '')}".rstrip())
            else:
                out[key] = default
        values[section] = out
    return Config(mqtt=MqttConfig(**values["mqtt"]), sink=SinkConfig(**values["sink"]),
                  gateway=GatewaySettings(**values["gateway"]))


def load_config(path: str | Path) -> Config:
    """Reads and checks a gateway config file; ConfigError names the file and the key."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise ConfigError(None, f"cannot read config file: {exc.strerror}",
                          source=str(path)) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(None, f"is not UTF-8 text: {exc.reason} at byte {exc.start}",
                          source=str(path)) from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(None, f"is not valid TOML: {exc}", source=str(path)) from exc
    try:
        return parse_config(data, base_dir=path.resolve().parent)
    except ConfigError as exc:
        raise exc.with_source(str(path)) from None
