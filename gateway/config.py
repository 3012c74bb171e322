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
import math
import re
import tomllib
from dataclasses import dataclass, field
from datetime import date, datetime, time, timezone
from pathlib import Path
from typing import Any, Callable, Mapping

from gateway.channels import ChannelTable, default_table
from gateway.errors import ConfigError
from gateway.wire import PREFIX_RE, SENML_RELATIVE_LIMIT, TIME_MIN_DEFAULT, node_id_problem

DEFAULT_MQTT_HOST = "127.0.0.1"
DEFAULT_MQTT_PORT = 1883
DEFAULT_CLIENT_ID = "meterlink-gateway"
DEFAULT_PREFIX = "m"
DEFAULT_KEEPALIVE = 30
MQTT_QOS = 1  # fixed: a reading is acknowledged only after it is stored
DEFAULT_LOG_LEVEL = "INFO"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")

DEFAULT_MAP_TILES = "https://tile.openstreetmap.org/{z}/{x}/{y}.png"
DEFAULT_MAP_ATTRIBUTION = "© OpenStreetMap contributors"
# a tile URL template: http(s), a host (its first label may be Leaflet's {s}), an optional
# port, and a path with {z}, {x} and {y}; nothing a Content-Security-Policy header could not
# carry (the host goes into the fleet page's img-src)
_TILES_RE = re.compile(r"^(https?)://((?:\{s\}\.)?[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)"
                       r"(:[0-9]{1,5})?(/[^\s\"'<>;,\\]*)$")
_TILE_FIELDS = {"z", "x", "y", "-y", "s", "r"}  # what Leaflet fills in a tile URL by itself

SAMPLE_PATH = Path(__file__).with_name("sample.toml")
SECRET_KEYS = frozenset({"password", "token"})


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
    shared_group: str | None = None
    tls: bool = False
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    # False when the readings come from JetStream ([jetstream]): MQTT then carries the status,
    # acknowledgements and downlink only
    readings: bool = True

    @property
    def subscription(self) -> str:
        """The topic filter for reading messages of every node (shared when a group is set)."""
        plain = f"{self.prefix}/+/r"
        return f"$share/{self.shared_group}/{plain}" if self.shared_group else plain

    @property
    def subscriptions(self) -> list[str]:
        """Every filter the gateway subscribes: readings, status and acknowledgements.

        Status and acks are never shared: every instance keeps the whole registry, and
        Mosquitto does not send retained messages to shared subscriptions.
        """
        return ([self.subscription] if self.readings else []) + [f"{self.prefix}/+/s",
                                                                  f"{self.prefix}/+/a"]

    def __repr__(self) -> str:
        password = None if self.password is None else "***"
        return (f"MqttConfig(host={self.host!r}, port={self.port}, "
                f"client_id={self.client_id!r}, prefix={self.prefix!r}, "
                f"username={self.username!r}, password={password!r}, "
                f"keepalive={self.keepalive}, qos={self.qos}, "
                f"shared_group={self.shared_group!r}, tls={self.tls}, "
                f"ca_file={self.ca_file}, cert_file={self.cert_file})")


@dataclass(frozen=True, kw_only=True)
class JetStreamConfig:
    """`[jetstream]`: readings from a NATS JetStream stream (a NATS cluster's MQTT listeners
    put the nodes' `r` messages there) through one durable pull consumer shared by every
    gateway instance. No `servers`: readings come over MQTT."""

    servers: tuple[str, ...] = ()
    stream: str = "READINGS"
    durable: str = "meterlink-gateway"
    replicas: int = 3
    ack_wait_s: int = 30
    # the gateway user of the cluster's `authorization` (host_tools/nats.py); None: no user
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    instances: int = 1  # gateway instances sharing the durable
    # this instance's name among them (instances > 1): names its durable consumer of the
    # other instances' seen-seq summaries (gateway/seen.py)
    instance: str | None = None

    @property
    def exchanges_seen(self) -> bool:
        """Instances tell each other the seqs they took, so each knows the nodes' gaps."""
        return bool(self.servers) and self.instances > 1


@dataclass(frozen=True, kw_only=True)
class SinkConfig:
    """One `[sinks.NAME]` section: the sink's own keys in `options`, batching and retry."""

    name: str
    options: Mapping[str, Any]
    batch_max_records: int
    batch_max_bytes: int
    batch_max_age_s: float
    backoff_initial_s: float
    backoff_max_s: float
    events: bool

    @property
    def path(self) -> Path:
        """The file sink's readings file (only for the `file` sink)."""
        return self.options["path"]

    def __repr__(self) -> str:
        shown = {k: ("***" if k in SECRET_KEYS and v is not None else v)
                 for k, v in self.options.items()}
        return (f"SinkConfig({self.name!r}, {shown}, batch_max_records={self.batch_max_records},"
                f" batch_max_age_s={self.batch_max_age_s})")


@dataclass(frozen=True, kw_only=True)
class IngestConfig:
    """`[ingest]`: input limits and how many messages share one outbox transaction."""

    max_payload_bytes: int = 4096
    max_topic_length: int = 128
    batch_messages: int = 256
    batch_wait_ms: int = 5
    # plausible reading times: from `time_min` (Unix seconds) to the gateway's clock plus
    # `max_future_s`; a reading with a record outside is quarantined as "time"
    time_min: int = TIME_MIN_DEFAULT
    max_future_s: int = 86400


@dataclass(frozen=True, kw_only=True)
class OutboxConfig:
    """`[outbox]`: the SQLite store."""

    path: Path
    max_bytes: int = 1 << 30
    warn_percent: int = 80
    quarantine_keep: int = 10000


@dataclass(frozen=True, kw_only=True)
class ApiConfig:
    """`[api]`: the local HTTP API (health, registry, metrics, downlink)."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 9480
    token: str | None = None
    token_file: Path | None = None

    def __repr__(self) -> str:
        token = None if self.token is None else "***"
        return (f"ApiConfig(enabled={self.enabled}, host={self.host!r}, port={self.port}, "
                f"token={token!r}, token_file={self.token_file})")


@dataclass(frozen=True, kw_only=True)
class GatewaySettings:
    """`[gateway]`: process-level settings."""

    stats_file: Path | None = None
    log_level: str = DEFAULT_LOG_LEVEL
    require_registration: bool = False
    low_battery_mv: int = 3300
    stale_intervals: int = 3
    ack_timeout_s: float = 60.0
    offline_grace_s: float = 120.0
    replay_after_s: int = 10  # a gap this old is asked of its node again (0: never)


@dataclass(frozen=True, kw_only=True)
class DashboardConfig:
    """`[dashboard]`: the operator pages' map (the fleet page)."""

    map_tiles: str = DEFAULT_MAP_TILES  # "" : no tiles, the markers on a blank background
    map_attribution: str = DEFAULT_MAP_ATTRIBUTION

    @property
    def tile_origin(self) -> str | None:
        """The tile server as a Content-Security-Policy source (`https://*.tile.example` for
        a `{s}` subdomain), for the fleet page's img-src; None without tiles."""
        match = _TILES_RE.match(self.map_tiles)
        if not match:
            return None
        scheme, host, port, _ = match.groups()
        return f"{scheme}://{host.replace('{s}', '*')}{port or ''}"


@dataclass(frozen=True, kw_only=True)
class Rule:
    """`[rules.NAME]`: one early-warning rule (gateway/rules.py evaluates them).

    `kind` "threshold" (`below` or `above`, `clear`, `hold_s`), "rate" (`drop_percent` or
    `rise_percent` within `window_s`), "stale" (no value for `after_s`) or "balance" (a
    district meter's consumption per hour against the sum of its district's other meters:
    `meter`, `loss_percent`, `hours`, `wait_s`). `channel` is the channel label
    (`water_pressure`, `temperature:1`) and `key` its wire key. The scope is `nodes`, a
    `group` or a `district`, or every node when none is set.
    """

    name: str
    kind: str
    channel: str
    key: int
    unit: str
    nodes: tuple[str, ...] = ()
    group: str | None = None
    district: str | None = None
    description: str = ""
    below: float | None = None
    above: float | None = None
    clear: float | None = None
    hold_s: float = 0.0
    drop_percent: float | None = None
    rise_percent: float | None = None
    window_s: float = 0.0
    after_s: float = 0.0
    meter: str | None = None
    loss_percent: float = 0.0
    hours: int = 1
    wait_s: float = 900.0

    @property
    def alarm(self) -> str:
        """The alarm it raises (on each node in scope; a balance on its `meter`)."""
        return f"rule:{self.name}"


@dataclass(frozen=True, kw_only=True)
class Config:
    """The whole gateway configuration."""

    mqtt: MqttConfig
    sinks: tuple[SinkConfig, ...]
    outbox: OutboxConfig
    ingest: IngestConfig = IngestConfig()
    api: ApiConfig = ApiConfig()
    gateway: GatewaySettings = GatewaySettings()
    dashboard: DashboardConfig = DashboardConfig()
    rules: tuple[Rule, ...] = ()
    jetstream: JetStreamConfig = JetStreamConfig()

    @property
    def knows_node_gaps(self) -> bool:
        """Whether this instance's gaps are its nodes' gaps: true with one instance, and with
        several on JetStream (they exchange what they took); false in an MQTT shared group,
        where each instance sees only part of every node's seqs (no `gaps` alarm, no
        `replay`)."""
        return self.mqtt.shared_group is None and (self.jetstream.instances == 1
                                                   or self.jetstream.exchanges_seen)

    @property
    def sink(self) -> SinkConfig:
        """The file sink (the embedded default), for code that only knows one sink."""
        for s in self.sinks:
            if s.name == "file":
                return s
        raise AttributeError("no [sinks.file] configured")


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


def _number(low: float, high: float) -> Checker:
    def check(key: str, value: Any, base: Path) -> float:
        if type(value) not in (int, float) or not low <= value <= high:
            raise ConfigError(key, f"must be a number {low:g}-{high:g}", got=show(value))
        return float(value)
    return check


def locations(key: str, value: Any, base: Path | None) -> dict[str, list[float]]:
    """A table of node id (or "*", every other node) = [longitude, latitude] in degrees,
    GeoJSON order."""
    if not isinstance(value, Mapping):
        raise ConfigError(key, "must be a table of node id = [longitude, latitude]",
                          got=show(value))
    out = {}
    for node, point in value.items():
        where = f"{key}.{node}"
        if (not isinstance(point, (list, tuple)) or len(point) != 2
                or any(type(c) not in (int, float) or not math.isfinite(c) for c in point)):
            raise ConfigError(where, "must be [longitude, latitude] in degrees",
                              got=repr(point))
        lon, lat = point
        if not (-180 <= lon <= 180 and -90 <= lat <= 90):
            raise ConfigError(where, "must be [longitude -180..180, latitude -90..90] "
                                     "(GeoJSON order)", got=repr(point))
        out[str(node)] = [lon, lat]
    return out


def _bool(key: str, value: Any, base: Path) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(key, "must be true or false", got=show(value))
    return value


def _url(key: str, value: Any, base: Path) -> str:
    if not isinstance(value, str) or not value.startswith(("http://", "https://")) \
            or len(value) < 10:
        raise ConfigError(key, "must be an http:// or https:// URL", got=show(value))
    return value.rstrip("/")


def _nats_servers(key: str, value: Any, base: Path) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(
            isinstance(v, str) and v.startswith(("nats://", "tls://")) and len(v) > 7
            for v in value):
        raise ConfigError(key, "must be a non-empty list of nats:// or tls:// server URLs",
                          got=show(value))
    return tuple(value)


def _name(key: str, value: Any, base: Path) -> str:
    if not isinstance(value, str) or not re.match(r"^[A-Za-z0-9_-]{1,64}$", value):
        raise ConfigError(key, "must be 1-64 characters A-Z a-z 0-9 _ - (a JetStream name)",
                          got=show(value))
    return value


def _group(key: str, value: Any, base: Path) -> str:
    if not isinstance(value, str) or not PREFIX_RE.match(value):
        raise ConfigError(key, "must be 1-16 characters a-z 0-9 _ - (MQTT share group)",
                          got=show(value))
    return value


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
    try:
        path = Path(value).expanduser()
    except RuntimeError as exc:  # "~user/..." of a user this machine does not have
        raise ConfigError(key, f"names a home folder that does not exist ({exc})",
                          got=show(value)) from None
    return path if path.is_absolute() else base / path


def _time_min(key: str, value: Any, base: Path) -> int:
    """A TOML date or date-time (UTC when it has no offset) -> Unix seconds."""
    if type(value) is date:
        value = datetime(value.year, value.month, value.day)
    if not isinstance(value, datetime):
        raise ConfigError(key, "must be a TOML date such as 2020-01-01 (no quotes)",
                          got=show(value))
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    seconds = int(value.timestamp())
    if seconds < SENML_RELATIVE_LIMIT:
        raise ConfigError(key, "must be 1978-07-04T21:24:16Z or later (SenML reads a time "
                               "below 2^28 as relative)", got=show(value))
    return seconds


def _tiles(key: str, value: Any, base: Path) -> str:
    """A map tile URL template (Leaflet's), or "" for none."""
    if value == "":
        return value
    match = _TILES_RE.match(value) if isinstance(value, str) else None
    path = match.group(4) if match else ""
    if not match or not all(f"{{{c}}}" in path for c in "zxy") or \
            set(re.findall(r"\{([^}]*)\}", path)) - _TILE_FIELDS:
        raise ConfigError(key, "must be an http:// or https:// URL with {z}, {x} and {y} in its "
                               "path (also allowed: {s} starting the host, {r}, {-y}), or \"\" "
                               "for no tiles", got=show(value))
    return value


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
        "shared_group": (_group, None),
        "tls": (_bool, False),
        "ca_file": (_path, None),
        "cert_file": (_path, None),
        "key_file": (_path, None),
    },
    "jetstream": {
        "servers": (_nats_servers, None),
        "stream": (_name, "READINGS"),
        "durable": (_name, "meterlink-gateway"),
        "replicas": (_integer(1, 5), 3),
        "ack_wait_s": (_integer(5, 3600), 30),
        "user": (_text(), None),
        "password": (_text(allow_empty=True), None),
        "instances": (_integer(1, 64), 1),
        "instance": (_name, None),
    },
    "ingest": {
        "max_payload_bytes": (_integer(16, 1 << 20), 4096),
        "max_topic_length": (_integer(8, 65535), 128),
        "batch_messages": (_integer(1, 100000), 256),
        "batch_wait_ms": (_integer(0, 10000), 5),
        "time_min": (_time_min, date(2020, 1, 1)),
        "max_future_s": (_integer(0, 10 * 366 * 86400), 86400),
    },
    "outbox": {
        "path": (_path, "outbox.db"),
        "max_bytes": (_integer(1 << 20, 1 << 50), 1 << 30),
        "warn_percent": (_integer(1, 100), 80),
        "quarantine_keep": (_integer(0, 1 << 31), 10000),
    },
    "api": {
        "enabled": (_bool, True),
        "host": (_text(), "127.0.0.1"),
        "port": (_integer(0, 65535), 9480),
        "token": (_text(), None),
        "token_file": (_path, None),
    },
    "gateway": {
        "stats_file": (_path, None),
        "log_level": (_log_level, DEFAULT_LOG_LEVEL),
        "require_registration": (_bool, False),
        "low_battery_mv": (_integer(0, 100000), 3300),
        "stale_intervals": (_integer(1, 1000), 3),
        "ack_timeout_s": (_number(1, 86400), 60.0),
        "offline_grace_s": (_number(0, 86400), 120.0),
        "replay_after_s": (_integer(0, 86400), 10),
    },
    "dashboard": {
        "map_tiles": (_tiles, DEFAULT_MAP_TILES),
        "map_attribution": (_text(allow_empty=True), DEFAULT_MAP_ATTRIBUTION),
    },
    # Short form of [sinks.file] path, kept for configs written before sinks had sections.
    "sink": {
        "path": (_path, REQUIRED),
    },
}

# Keys every sink section has, with per-sink defaults in SINK_DEFAULTS.
SINK_COMMON: dict[str, tuple[Checker, Any]] = {
    "batch_max_records": (_integer(1, 100000), 500),
    "batch_max_bytes": (_integer(1024, 1 << 30), 1 << 20),
    "batch_max_age_s": (_number(0, 3600), 1.0),
    "backoff_initial_s": (_number(0.01, 3600), 1.0),
    "backoff_max_s": (_number(0.01, 86400), 300.0),
    "events": (_bool, True),
}

SINK_SCHEMAS: dict[str, dict[str, tuple[Checker, Any]]] = {
    "file": {
        "path": (_path, "readings.jsonl"),
        "events_path": (_path, "events.jsonl"),
        "rotate_bytes": (_integer(0, 1 << 50), 100 << 20),
        "keep": (_integer(1, 1000), 10),
    },
    "http": {
        "url": (_url, REQUIRED),
        "token": (_text(), None),
        "token_file": (_path, None),
        "gzip": (_bool, True),
        "gzip_level": (_integer(1, 9), 1),
        "verify_tls": (_bool, True),
        "ca_file": (_path, None),
        "cert_file": (_path, None),
        "key_file": (_path, None),
        "timeout_s": (_number(0.1, 600), 10.0),
    },
    "ngsi-ld": {
        "url": (_url, REQUIRED),
        "token": (_text(), None),
        "token_file": (_path, None),
        "tenant": (_text(), None),
        "context": (_text(), None),
        "locations": (locations, None),
        "gzip": (_bool, False),
        "gzip_level": (_integer(1, 9), 1),
        "verify_tls": (_bool, True),
        "ca_file": (_path, None),
        "cert_file": (_path, None),
        "key_file": (_path, None),
        "timeout_s": (_number(0.1, 600), 10.0),
    },
    "mqtt": {
        "host": (_text(), REQUIRED),
        "port": (_integer(1, 65535), 1883),
        "client_id": (_text(), "meterlink-bridge"),
        "username": (_text(), None),
        "password": (_text(allow_empty=True), None),
        "topic_prefix": (_text(), "meterlink"),
        "tls": (_bool, False),
        "ca_file": (_path, None),
        "cert_file": (_path, None),
        "key_file": (_path, None),
        "keepalive": (_integer(1, 65535), 30),
        "timeout_s": (_number(0.1, 600), 10.0),
        # the largest SenML pack published (readings in batch order up to this size): 1 KiB
        # holds any one SenML record; 16 MiB is far above what brokers take (AWS IoT 128 KB)
        "pack_max_bytes": (_integer(1024, 1 << 24), 65536),
    },
}
SINK_SCHEMAS["history"] = {
    "path": (_path, "history.db"),
    "raw_days": (_number(1, 3660), 7.0),
    "hourly_days": (_number(1, 36600), 366.0),
}
SINK_DEFAULTS: dict[str, dict[str, Any]] = {
    "file": {"batch_max_age_s": 0.05, "backoff_max_s": 30.0},
    "history": {"batch_max_records": 2000, "batch_max_age_s": 2.0, "backoff_max_s": 30.0,
                "events": False},
}

_REQUIRED_WHY = {"sink.path": "(the JSONL file accepted readings are appended to)",
                 "sinks.http.url": "(the platform endpoint SenML packs are POSTed to)",
                 "sinks.ngsi-ld.url": "(the NGSI-LD broker, e.g. http://orion:1026)",
                 "sinks.mqtt.host": "(the upstream broker)"}


# ---- [rules.NAME] ---------------------------------------------------------------------------

RULE_KINDS = ("threshold", "rate", "stale", "balance")
RULE_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,39}$")
_DURATION_RE = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(s|m|h|d)$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_RULE_DURATION_S = 30 * 86400
# what a balance compares: meter totals (gateway/sinks/history.py TOTALS)
BALANCE_CHANNELS = ("water_volume", "gas_volume", "heat_energy")


def duration(key: str, value: Any, *, zero: bool = False) -> float:
    """Seconds of a duration: "90s", "10m", "2h", "1d", or a number of seconds."""
    seconds = None
    if type(value) in (int, float):
        seconds = float(value)
    elif isinstance(value, str) and _DURATION_RE.match(value):
        number, unit = _DURATION_RE.match(value).groups()
        seconds = float(number) * _UNIT_S[unit]
    low = 0 if zero else 1
    if seconds is None or not low <= seconds <= MAX_RULE_DURATION_S:
        raise ConfigError(key, f"must be a duration {'0' if zero else '1s'} to 30d such as "
                               '"90s", "10m", "2h" (or a number of seconds)', got=show(value))
    return seconds


def _rule_channel(key: str, value: Any, table: ChannelTable) -> tuple[str, int, str]:
    """(label, wire key, unit) of a channel named `name` or `name:instance`."""
    if not isinstance(value, str) or not value:
        raise ConfigError(key, "must be a channel name such as \"water_pressure\" or "
                               "\"temperature:1\"", got=show(value))
    name, _, inst = value.partition(":")
    channel = next((ch for ch in table if ch.name == name), None)
    if channel is None:
        raise ConfigError(key, f"is not a channel of the channel table (version "
                               f"{table.version}; docs/wire-format.md lists them)",
                          got=show(value))
    if inst and (not inst.isdigit() or not 0 < int(inst) <= 15):
        raise ConfigError(key, "has an instance that is not 1-15 (name:instance)",
                          got=show(value))
    instance = int(inst) if inst else 0
    return value, channel.id + 64 * instance, channel.unit


def _rule(name: str, raw: Any, table: ChannelTable) -> Rule:
    where = f"rules.{name}"
    if not RULE_NAME_RE.match(name):
        raise ConfigError(where, "must be named 1-40 characters a-z 0-9 _ -, starting with a "
                                 "letter or digit", got=show(name))
    if not isinstance(raw, dict):
        raise ConfigError(where, f"must be a table [{where}]", got=show(raw))
    kind = raw.get("kind")
    if kind not in RULE_KINDS:
        raise ConfigError(f"{where}.kind", f"must be one of {', '.join(RULE_KINDS)}",
                          got=show(kind) if "kind" in raw else "nothing")
    own = {"threshold": ("below", "above", "clear", "hold"),
           "rate": ("drop_percent", "rise_percent", "window"),
           "stale": ("after",),
           "balance": ("meter", "loss_percent", "hours", "wait")}[kind]
    allowed = ("kind", "channel", "description", "nodes", "group", "district", *own)
    for k in raw:
        if k not in allowed:
            raise ConfigError(f"{where}.{k}", f"is not a key of a {kind} rule (its keys: "
                                              f"{', '.join(allowed)})")
    if "channel" not in raw:
        raise ConfigError(f"{where}.channel", "is required (the channel the rule watches)")
    label, key, unit = _rule_channel(f"{where}.channel", raw["channel"], table)
    out: dict[str, Any] = {"name": name, "kind": kind, "channel": label, "key": key,
                           "unit": unit}
    if "description" in raw:
        out["description"] = _text()(f"{where}.description", raw["description"], Path())
    scopes = [k for k in ("nodes", "group", "district") if k in raw]
    if len(scopes) > 1:
        raise ConfigError(f"{where}.{scopes[1]}", f"cannot be set together with {scopes[0]} "
                                                  "(a rule has one scope)")
    if "nodes" in raw:
        nodes = raw["nodes"]
        if not isinstance(nodes, list) or not nodes:
            raise ConfigError(f"{where}.nodes", "must be a non-empty array of node ids",
                              got=show(nodes))
        for i, node in enumerate(nodes):
            if not isinstance(node, str) or node_id_problem(node):
                why = node_id_problem(node)[1] if isinstance(node, str) else "not a string"
                raise ConfigError(f"{where}.nodes[{i}]", f"must be a node id ({why})",
                                  got=show(node))
        out["nodes"] = tuple(nodes)
    for k in ("group", "district"):
        if k in raw:
            out[k] = _text()(f"{where}.{k}", raw[k], Path())
    number = _number(-1e15, 1e15)
    if kind == "threshold":
        sides = [k for k in ("below", "above") if k in raw]
        if len(sides) != 1:
            raise ConfigError(f"{where}.below", "or above is required, and only one of them"
                              if not sides else "cannot be set together with above")
        side = sides[0]
        level = out[side] = number(f"{where}.{side}", raw[side], Path())
        if "clear" in raw:
            clear = out["clear"] = number(f"{where}.clear", raw["clear"], Path())
            if (side == "below" and clear < level) or (side == "above" and clear > level):
                raise ConfigError(f"{where}.clear", f"must be {'>=' if side == 'below' else '<='}"
                                                    f" {side} ({level:g}): the level the value "
                                                    "returns to before the alarm clears",
                                  got=show(raw["clear"]))
        out["hold_s"] = duration(f"{where}.hold", raw.get("hold", 0), zero=True)
    elif kind == "rate":
        sides = [k for k in ("drop_percent", "rise_percent") if k in raw]
        if len(sides) != 1:
            raise ConfigError(f"{where}.drop_percent", "or rise_percent is required, and only "
                              "one of them" if not sides else "cannot be set together with "
                              "rise_percent")
        high = 100 if sides[0] == "drop_percent" else 100000
        out[sides[0]] = _number(0.1, high)(f"{where}.{sides[0]}", raw[sides[0]], Path())
        if "window" not in raw:
            raise ConfigError(f"{where}.window", "is required (the time the change happens in, "
                                                 "such as \"2m\")")
        out["window_s"] = duration(f"{where}.window", raw["window"])
    elif kind == "stale":
        if "after" not in raw:
            raise ConfigError(f"{where}.after", "is required (how long without a value, such "
                                                "as \"30m\")")
        out["after_s"] = duration(f"{where}.after", raw["after"])
    else:
        if label.partition(":")[0] not in BALANCE_CHANNELS:
            raise ConfigError(f"{where}.channel", "must be a meter total for a balance "
                                                  f"({', '.join(BALANCE_CHANNELS)})",
                              got=show(raw["channel"]))
        for k, why in (("meter", "the district meter's node id"),
                       ("district", "the district whose other meters are its customers"),
                       ("loss_percent", "the share of the district meter's consumption that "
                                        "may go unaccounted in an hour")):
            if k not in raw:
                raise ConfigError(f"{where}.{k}", f"is required ({why})")
        meter = raw["meter"]
        if not isinstance(meter, str) or node_id_problem(meter):
            raise ConfigError(f"{where}.meter", "must be a node id", got=show(meter))
        out["meter"] = meter
        out["loss_percent"] = _number(0, 100)(f"{where}.loss_percent", raw["loss_percent"],
                                              Path())
        out["hours"] = _integer(1, 168)(f"{where}.hours", raw.get("hours", 1), Path())
        out["wait_s"] = duration(f"{where}.wait", raw.get("wait", 900), zero=True)
    return Rule(**out)


def parse_rules(raw: Any, table: ChannelTable | None = None) -> tuple[Rule, ...]:
    """The `[rules.NAME]` tables; ConfigError naming the key at fault."""
    if not isinstance(raw, dict):
        raise ConfigError("rules", "must hold tables [rules.NAME]", got=show(raw))
    table = table if table is not None else default_table()
    return tuple(_rule(name, body, table) for name, body in raw.items())


def _section(name: str, raw: Any, options: Mapping[str, tuple[Checker, Any]], base: Path,
             defaults: Mapping[str, Any] | None = None) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise ConfigError(name, f"must be a table [{name}]", got=show(raw))
    for key in raw:
        if key not in options:
            raise ConfigError(f"{name}.{key}", f"is not a known key of [{name}] "
                                               f"(known: {', '.join(options)})")
    out: dict[str, Any] = {}
    for key, (check, default) in options.items():
        full = f"{name}.{key}"
        if defaults and key in defaults:
            default = defaults[key]
        if key in raw:
            out[key] = check(full, raw[key], base)
        elif default is REQUIRED:
            raise ConfigError(full, f"is required {_REQUIRED_WHY.get(full, '')}".rstrip())
        elif (isinstance(default, str) and check is _path) or check is _time_min:
            out[key] = check(full, default, base)
        else:
            out[key] = default
    return out


def parse_config(data: Mapping[str, Any], *, base_dir: str | Path = ".",
                 table: ChannelTable | None = None) -> Config:
    """Checks a parsed TOML document against `SCHEMA` and builds the Config (rule channels
    against `table`, the shipped channel table by default)."""
    base = Path(base_dir)
    known = [*SCHEMA, "sinks", "rules"]
    for section in data:
        if section not in known:
            raise ConfigError(section, f"is not a known section (known: {', '.join(known)})")
    values = {name: _section(name, data.get(name, {}), options, base)
              for name, options in SCHEMA.items() if name != "sink"}
    raw_sinks = data.get("sinks", {})
    if not isinstance(raw_sinks, dict):
        raise ConfigError("sinks", "must hold tables [sinks.NAME]", got=show(raw_sinks))
    sinks: list[SinkConfig] = []
    for name, raw in raw_sinks.items():
        if name not in SINK_SCHEMAS:
            raise ConfigError(f"sinks.{name}", f"is not a known sink "
                                               f"(known: {', '.join(SINK_SCHEMAS)})")
        own = SINK_SCHEMAS[name]
        merged = _section(f"sinks.{name}", raw, {**own, **SINK_COMMON}, base,
                          SINK_DEFAULTS.get(name))
        common = {k: merged.pop(k) for k in SINK_COMMON}
        if common["backoff_max_s"] < common["backoff_initial_s"]:
            raise ConfigError(f"sinks.{name}.backoff_max_s",
                              "must be >= backoff_initial_s", got=show(common["backoff_max_s"]))
        sinks.append(SinkConfig(name=name, options=merged, **common))
    if "sink" in data:
        legacy = _section("sink", data["sink"], SCHEMA["sink"], base)
        if any(s.name == "file" for s in sinks):
            raise ConfigError("sink", "cannot be used together with [sinks.file]: "
                                      "move sink.path to sinks.file.path")
        file_opts = _section("sinks.file", {}, {**SINK_SCHEMAS["file"], **SINK_COMMON}, base,
                             SINK_DEFAULTS["file"])
        file_opts["path"] = legacy["path"]
        file_opts["events_path"] = legacy["path"].with_name("events.jsonl")
        common = {k: file_opts.pop(k) for k in SINK_COMMON}
        sinks.insert(0, SinkConfig(name="file", options=file_opts, **common))
    if not sinks:
        raise ConfigError("sinks", "must configure at least one sink, e.g. [sinks.file] "
                                   "(or the short form [sink] path = \"readings.jsonl\")")
    for where, opts in [("mqtt", values["mqtt"])] + [(f"sinks.{c.name}", c.options) for c in sinks]:
        if ("cert_file" in opts) and (opts["cert_file"] is None) != (opts["key_file"] is None):
            raise ConfigError(f"{where}.cert_file", "needs key_file too (and the other way round)",
                              got=show(str(opts["cert_file"] or opts["key_file"])))
    jetstream = JetStreamConfig(**{**values["jetstream"],
                                   "servers": values["jetstream"]["servers"] or ()})
    if jetstream.exchanges_seen and jetstream.instance is None:
        raise ConfigError("jetstream.instance", "must name this instance (unique among the "
                                                f"{jetstream.instances} instances, e.g. "
                                                "\"gw-a\") when instances is above 1")
    return Config(mqtt=MqttConfig(**values["mqtt"], readings=not jetstream.servers),
                  sinks=tuple(sinks), outbox=OutboxConfig(**values["outbox"]),
                  ingest=IngestConfig(**values["ingest"]), api=ApiConfig(**values["api"]),
                  gateway=GatewaySettings(**values["gateway"]),
                  dashboard=DashboardConfig(**values["dashboard"]),
                  rules=parse_rules(data.get("rules", {}), table), jetstream=jetstream)


def load_config(path: str | Path, *, table: ChannelTable | None = None) -> Config:
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
    except RecursionError:
        raise ConfigError(None, "is not valid TOML: arrays or tables nested too deeply",
                          source=str(path)) from None
    try:
        return parse_config(data, base_dir=path.resolve().parent, table=table)
    except ConfigError as exc:
        raise exc.with_source(str(path)) from None
