"""The one configuration loader: a YAML file, validated at start.

Every error names the file and the key (``config.yaml: servers[1].url: ...``). Any string value
written as ``${NAME}`` is read from the environment, so secrets need not live in the file.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from lb_core.checksum import ALGORITHMS

_ENV_REF = re.compile(r"^\$\{([A-Za-z_][A-Za-z0-9_]*)\}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
DISABLE_STATES = {"enabled": 0, "disabled": 1, "auto": 3}


class ConfigError(Exception):
    """A configuration problem, already phrased for the operator."""


@dataclass(frozen=True, slots=True)
class ServerConfig:
    name: str
    url: str  # base URL ending in /bigbluebutton/
    secret: str
    checksum: str = "sha256"
    weight: float = 1.0
    max_meetings: int | None = None
    max_participants: int | None = None
    disable_state: int = 3
    simulate: bool = False

    @property
    def api_url(self) -> str:
        return self.url + "api/"


@dataclass(frozen=True, slots=True)
class IntegrationConfig:
    name: str
    secrets: tuple[str, ...]
    enabled: bool = True
    can_record: bool = True
    max_meetings: int | None = None


@dataclass(frozen=True, slots=True)
class MonitorConfig:
    interval_s: float = 10.0
    timeout_s: float = 5.0
    down_after: int = 2
    up_after: int = 2
    concurrency: int = 32


@dataclass(frozen=True, slots=True)
class BalancerConfig:
    meeting_size: float = 15.0  # participants a new meeting is expected to bring
    warmup_s: float = 900.0  # how long that expectation lasts before real counts take over
    meeting_cost: float = 1.0  # load of a meeting itself, beyond its participants
    voice_cost: float = 0.5
    video_cost: float = 1.0


@dataclass(frozen=True, slots=True)
class GeoConfig:
    database: str | None = None
    prefer_nearby: bool = False
    trusted_proxies: tuple[str, ...] = ()
    nearby_km: float = 300.0


UPLOAD_CALLS = frozenset({"create", "insertDocument", "putRecordingTextTrack"})


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    """What an anonymous client may cost the LB before its checksum is checked."""

    max_body_bytes: int = 64 * 1024  # form bodies of calls that are not uploads
    max_upload_bytes: int = 64 * 1024 * 1024  # create, insertDocument, putRecordingTextTrack
    max_query_bytes: int = 64 * 1024
    max_params: int = 1000
    request_head_timeout_s: float = 10.0
    request_body_timeout_s: float = 60.0
    idle_timeout_s: float = 60.0
    max_connections: int = 1000

    def body_limit(self, call: str) -> int:
        """The largest body ``call`` may carry: uploads get the large limit, every other call the small one."""
        return self.max_upload_bytes if call in UPLOAD_CALLS else self.max_body_bytes


@dataclass(frozen=True, slots=True)
class AdminConfig:
    host: str = "127.0.0.1"
    port: int | None = None
    token: str | None = None


@dataclass(frozen=True, slots=True)
class CallbacksConfig:
    """Calls to integrations' callback URLs: their own pool and the networks they may reach."""

    allowed_networks: tuple[str, ...] = ()  # beyond public addresses, e.g. ("127.0.0.0/8",) for tests
    max_connections: int = 32
    max_per_host: int = 4
    timeout_s: float = 10.0
    connect_timeout_s: float = 3.0
    max_response_bytes: int = 64 * 1024


@dataclass(frozen=True, slots=True)
class Config:
    path: str
    listen_host: str
    listen_port: int
    public_url: str
    integrations: tuple[IntegrationConfig, ...]
    servers: tuple[ServerConfig, ...]
    store_path: str
    checksum_algorithms: tuple[str, ...] = tuple(ALGORITHMS)
    backend_timeout_s: float = 10.0
    backend_connect_timeout_s: float = 3.0
    max_body_bytes: int = 64 * 1024 * 1024
    instance_id: str | None = None
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    balancer: BalancerConfig = field(default_factory=BalancerConfig)
    geo: GeoConfig = field(default_factory=GeoConfig)
    admin: AdminConfig = field(default_factory=AdminConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    log_level: str = "info"
    callback_retry_delays_s: tuple[float, ...] = (1, 2, 5, 10, 30, 60, 120, 300, 600)
    callbacks: CallbacksConfig = field(default_factory=CallbacksConfig)
    web_port: int | None = None  # mitmweb's port under ``run --web``; set by the runner, not the file
    running_cache_s: float = 1.0
    get_meetings_cache_s: float = 2.0
    record_events: bool = True
    events_retention_days: float = 90.0

    @property
    def default_integration(self) -> IntegrationConfig:
        return self.integrations[0]


class _Reader:
    """Walks a mapping, remembering the key path for error messages."""

    def __init__(self, source: str, data: Any, path: str = "") -> None:
        self.source = source
        self.data = data
        self.path = path
        self.used: set[str] = set()

    def fail(self, key: str | None, message: str) -> ConfigError:
        where = self._join(key) if key is not None else (self.path or "(top level)")
        return ConfigError(f"{self.source}: {where}: {message}")

    def _join(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def _raw(self, key: str) -> Any:
        self.used.add(key)
        value = self.data.get(key)
        if isinstance(value, str):
            match = _ENV_REF.match(value.strip())
            if match:
                env = os.environ.get(match.group(1))
                if env is None:
                    raise self.fail(key, f"environment variable {match.group(1)} is not set")
                return env
        return value

    def has(self, key: str) -> bool:
        return key in self.data and self.data[key] is not None

    def string(self, key: str, default: str | None = None, *, required: bool = False) -> str | None:
        value = self._raw(key)
        if value is None:
            if required:
                raise self.fail(key, "is required")
            return default
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise self.fail(key, "must be a string")
        text = str(value)
        if required and not text.strip():
            raise self.fail(key, "must not be empty")
        return text

    def number(self, key: str, default: float | None, *, minimum: float = 0, integer: bool = False) -> Any:
        value = self._raw(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(key, "must be a number")
        if integer and not isinstance(value, int):
            raise self.fail(key, "must be a whole number")
        if value < minimum:
            raise self.fail(key, f"must be at least {minimum}")
        return value

    def boolean(self, key: str, default: bool) -> bool:
        value = self._raw(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self.fail(key, "must be true or false")
        return value

    def mapping(self, key: str) -> _Reader:
        value = self._raw(key)
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise self.fail(key, "must be a mapping")
        return _Reader(self.source, value, self._join(key))

    def items(self, key: str) -> list[_Reader]:
        value = self._raw(key)
        if value is None:
            return []
        if not isinstance(value, list):
            raise self.fail(key, "must be a list")
        readers = []
        for index, item in enumerate(value):
            if not isinstance(item, dict):
                raise ConfigError(f"{self.source}: {self._join(key)}[{index}]: must be a mapping")
            readers.append(_Reader(self.source, item, f"{self._join(key)}[{index}]"))
        return readers

    def strings(self, key: str) -> tuple[str, ...]:
        value = self._raw(key)
        if value is None:
            return ()
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.fail(key, "must be a list of strings")
        return tuple(value)

    def done(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            raise self.fail(unknown[0], "unknown key")


def normalise_server_url(url: str) -> str:
    """Accept ``https://host``, ``https://host/bigbluebutton/`` or ``.../bigbluebutton/api``."""
    url = url.strip().rstrip("/")
    for suffix in ("/api", "/bigbluebutton"):
        if url.endswith(suffix):
            url = url[: -len(suffix)]
    return url + "/bigbluebutton/"


def check_url(reader: _Reader, key: str, url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise reader.fail(key, f"must be an http(s) URL, got {url!r}")
    try:
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError:
        raise reader.fail(key, f"has an invalid port: {url!r}") from None


def check_name(reader: _Reader, key: str, name: str) -> None:
    if not _NAME.match(name):
        raise reader.fail(key, "must be 1-64 letters, digits, '.', '_', ':' or '-'")


def read_server(reader: _Reader) -> ServerConfig:
    name = reader.string("name", required=True)
    assert name is not None
    check_name(reader, "name", name)
    url = reader.string("url", required=True)
    assert url is not None
    check_url(reader, "url", url)
    secret = reader.string("secret", required=True)
    algorithm = reader.string("checksum", "sha256")
    if algorithm not in ALGORITHMS:
        raise reader.fail("checksum", f"must be one of {', '.join(ALGORITHMS)}")
    state = reader.string("state", "auto")
    if state not in DISABLE_STATES:
        raise reader.fail("state", "must be auto, enabled or disabled")
    weight = reader.number("weight", 1.0, minimum=0.01)
    server = ServerConfig(
        name=name,
        url=normalise_server_url(url),
        secret=secret or "",
        checksum=algorithm or "sha256",
        weight=float(weight),
        max_meetings=reader.number("max_meetings", None, minimum=1, integer=True),
        max_participants=reader.number("max_participants", None, minimum=1, integer=True),
        disable_state=DISABLE_STATES[state or "auto"],
        simulate=reader.boolean("simulate", False),
    )
    reader.done()
    return server


def read_integration(reader: _Reader) -> IntegrationConfig:
    name = reader.string("name", required=True)
    assert name is not None
    check_name(reader, "name", name)
    secret = reader.string("secret", required=True)
    previous = reader.string("previous_secret")
    integration = IntegrationConfig(
        name=name,
        secrets=tuple(s for s in (secret, previous) if s),
        enabled=reader.boolean("enabled", True),
        can_record=reader.boolean("can_record", True),
        max_meetings=reader.number("max_meetings", None, minimum=0, integer=True),
    )
    reader.done()
    return integration


def parse(data: Any, source: str = "config.yaml", base_dir: Path | None = None) -> Config:
    """Validate a parsed YAML document; relative paths are taken from ``base_dir``."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: (top level): must be a mapping of settings")
    top = _Reader(source, data)
    base = base_dir or Path.cwd()

    listen = top.mapping("listen")
    listen_host = listen.string("host", "127.0.0.1") or "127.0.0.1"
    listen_port = listen.number("port", 8090, minimum=0, integer=True)
    if listen_port > 65535:
        raise listen.fail("port", "must be at most 65535")
    listen.done()

    public_url = (top.string("public_url") or f"http://{listen_host}:{listen_port}").rstrip("/")
    check_url(top, "public_url", public_url)

    secret = top.string("secret", required=True)
    previous = top.string("previous_secret")
    default = IntegrationConfig(name="default", secrets=tuple(s for s in (secret, previous) if s))

    integrations: list[IntegrationConfig] = [default]
    for item in top.items("integrations"):
        integration = read_integration(item)
        if any(i.name == integration.name for i in integrations):
            raise item.fail("name", f"duplicate integration name {integration.name!r}")
        integrations.append(integration)
    seen_secrets: dict[str, str] = {}
    for integration in integrations:
        for s in integration.secrets:
            if s in seen_secrets and seen_secrets[s] != integration.name:
                raise top.fail("integrations", f"integrations {seen_secrets[s]!r} and {integration.name!r} share a secret")
            seen_secrets[s] = integration.name

    servers: list[ServerConfig] = []
    for item in top.items("servers"):
        server = read_server(item)
        if any(s.name == server.name for s in servers):
            raise item.fail("name", f"duplicate server name {server.name!r}")
        servers.append(server)

    store = top.mapping("store")
    store_path = store.string("path", "data/lb.json") or "data/lb.json"
    store.done()

    algorithms = top.strings("checksum_algorithms") or tuple(ALGORITHMS)
    for algorithm in algorithms:
        if algorithm not in ALGORITHMS:
            raise top.fail("checksum_algorithms", f"unknown algorithm {algorithm!r}")

    backend = top.mapping("backend")
    backend_timeout = float(backend.number("timeout_s", 10.0, minimum=0.1))
    connect_timeout = float(backend.number("connect_timeout_s", 3.0, minimum=0.1))
    max_body = backend.number("max_body_bytes", 64 * 1024 * 1024, minimum=1024, integer=True)
    backend.done()

    m = top.mapping("monitor")
    monitor = MonitorConfig(
        interval_s=float(m.number("interval_s", 10.0, minimum=0.05)),
        timeout_s=float(m.number("timeout_s", 5.0, minimum=0.05)),
        down_after=m.number("down_after", 2, minimum=1, integer=True),
        up_after=m.number("up_after", 2, minimum=1, integer=True),
        concurrency=m.number("concurrency", 32, minimum=1, integer=True),
    )
    m.done()

    b = top.mapping("balancer")
    balancer = BalancerConfig(
        meeting_size=float(b.number("meeting_size", 15.0)),
        warmup_s=float(b.number("warmup_s", 900.0)),
        meeting_cost=float(b.number("meeting_cost", 1.0)),
        voice_cost=float(b.number("voice_cost", 0.5)),
        video_cost=float(b.number("video_cost", 1.0)),
    )
    b.done()

    g = top.mapping("geo")
    database = g.string("database")
    if database:
        database = str((base / database).resolve()) if not os.path.isabs(database) else database
        if not os.path.isfile(database):
            raise g.fail("database", f"no such file: {database}")
    geo = GeoConfig(
        database=database,
        prefer_nearby=g.boolean("prefer_nearby", False),
        trusted_proxies=g.strings("trusted_proxies"),
        nearby_km=float(g.number("nearby_km", 300.0)),
    )
    for network in geo.trusted_proxies:
        try:
            ipaddress.ip_network(network, strict=False)
        except ValueError:
            raise g.fail("trusted_proxies", f"{network!r} is not an IP network") from None
    if geo.prefer_nearby and not geo.database:
        raise g.fail("prefer_nearby", "needs geo.database")
    g.done()

    a = top.mapping("admin")
    admin = AdminConfig(
        host=a.string("host", "127.0.0.1") or "127.0.0.1",
        port=a.number("port", None, minimum=0, integer=True),
        token=a.string("token"),
    )
    if admin.port is not None and not admin.token:
        raise a.fail("token", "is required when admin.port is set")
    if admin.token is not None and len(admin.token) < 16:
        raise a.fail("token", "must be at least 16 characters")
    a.done()

    lim = top.mapping("limits")
    limits = LimitsConfig(
        max_body_bytes=lim.number("max_body_bytes", 64 * 1024, minimum=1024, integer=True),
        max_upload_bytes=lim.number("max_upload_bytes", int(max_body), minimum=1024, integer=True),
        max_query_bytes=lim.number("max_query_bytes", 64 * 1024, minimum=1024, integer=True),
        max_params=lim.number("max_params", 1000, minimum=16, integer=True),
        request_head_timeout_s=float(lim.number("request_head_timeout_s", 10.0, minimum=0.1)),
        request_body_timeout_s=float(lim.number("request_body_timeout_s", 60.0, minimum=0.1)),
        idle_timeout_s=float(lim.number("idle_timeout_s", 60.0, minimum=0.1)),
        max_connections=lim.number("max_connections", 1000, minimum=1, integer=True),
    )
    if limits.max_body_bytes > limits.max_upload_bytes:
        raise lim.fail("max_body_bytes", "must not exceed max_upload_bytes")
    lim.done()

    cb = top.mapping("callbacks")
    delays = cb._raw("retry_delays_s")
    if delays is None:
        delays = [1, 2, 5, 10, 30, 60, 120, 300, 600]
    if not isinstance(delays, list) or not delays or not all(
        isinstance(d, int | float) and not isinstance(d, bool) and d >= 0 for d in delays
    ):
        raise cb.fail("retry_delays_s", "must be a non-empty list of seconds")
    callbacks = CallbacksConfig(
        allowed_networks=cb.strings("allowed_networks"),
        max_connections=cb.number("max_connections", 32, minimum=1, integer=True),
        max_per_host=cb.number("max_per_host", 4, minimum=1, integer=True),
        timeout_s=float(cb.number("timeout_s", 10.0, minimum=0.1)),
        connect_timeout_s=float(cb.number("connect_timeout_s", 3.0, minimum=0.1)),
        max_response_bytes=cb.number("max_response_bytes", 64 * 1024, minimum=0, integer=True),
    )
    for network in callbacks.allowed_networks:
        try:
            ipaddress.ip_network(network, strict=False)
        except ValueError:
            raise cb.fail("allowed_networks", f"{network!r} is not an IP network (CIDR)") from None
    cb.done()

    ev = top.mapping("events")
    record_events = ev.boolean("enabled", True)
    events_retention_days = float(ev.number("retention_days", 90))  # 0: kept forever
    ev.done()

    cache = top.mapping("cache")
    running_cache_s = float(cache.number("is_meeting_running_s", 1.0))
    get_meetings_cache_s = float(cache.number("get_meetings_s", 2.0))
    cache.done()

    log_level = top.string("log_level", "info") or "info"
    if log_level not in ("debug", "info", "warn", "error"):
        raise top.fail("log_level", "must be debug, info, warn or error")
    instance_id = top.string("instance_id")

    top.done()
    return Config(
        path=source,
        listen_host=listen_host,
        listen_port=int(listen_port),
        public_url=public_url,
        integrations=tuple(integrations),
        servers=tuple(servers),
        store_path=str((base / store_path).resolve()) if not os.path.isabs(store_path) else store_path,
        checksum_algorithms=algorithms,
        backend_timeout_s=backend_timeout,
        backend_connect_timeout_s=connect_timeout,
        max_body_bytes=int(max_body),
        instance_id=instance_id,
        monitor=monitor,
        balancer=balancer,
        geo=geo,
        admin=admin,
        limits=limits,
        log_level=log_level,
        callback_retry_delays_s=tuple(float(d) for d in delays),
        callbacks=callbacks,
        running_cache_s=running_cache_s,
        get_meetings_cache_s=get_meetings_cache_s,
        record_events=record_events,
        events_retention_days=events_retention_days,
    )


def load(path: str | os.PathLike[str]) -> Config:
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else "(syntax)"
        raise ConfigError(f"{source}: {where}: invalid YAML: {getattr(exc, 'problem', exc)}") from None
    return parse(data, source, Path(path).resolve().parent)
