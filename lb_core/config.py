"""The configuration, declared once as typed models: the YAML file and the admin API's JSON bodies.

Why pydantic (v2) rather than msgspec: the configuration is validated once at start and on the rare
admin call, so decoding speed does not matter; what matters is saying exactly which key is wrong.
pydantic gives every error its location, lets a rule live beside its field (bounds, patterns,
cross-field checks in validators, a value read from the validation context for relative paths) and
gives frozen models whose fields are instance attributes: reading one (``config.max_body_bytes`` on the
hot path) takes about 0.1 µs against 0.05 µs for the slotted dataclasses this replaced, a handful of
reads per request, invisible in ``scripts/bench``; nothing is validated or dumped per request. msgspec
reads faster but stops at the first error with a ``$.path`` string and has no validators, so the checks
beyond types would be written by hand again.

The value types, the base model and the phrasing of errors live in ``lb_core.config_types``; this file
is the declaration of every key, its default and its bounds.

Every error names the file and the key (``config.yaml: servers[1].url: ...``); every key not declared
is refused. Any string value written as ``${NAME}`` is read from the environment (an unset variable is
an error naming the key), so secrets need not live in the file; the admin API refuses such values.
"""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    PlainSerializer,
    PlainValidator,
    PrivateAttr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from lb_core.checksum import ALGORITHMS
from lb_core.config_types import (
    AtKey,
    Checksum,
    ConfigError,
    Count,
    Flag,
    KeyProblem,
    Model,
    Name,
    Networks,
    Number,
    Port,
    Real,
    RedisUrl,
    Required,
    Seconds,
    Text,
    Url,
    from_base,
    normalise_server_url,
    one_or_many,
    parse_request,
    resolve_env,
    validate,
)
from lb_core.rules import EMPTY, Rule, RuleError, RuleSet, parse_rules

__all__ = ["ConfigError", "KeyProblem", "Model", "Flag", "parse_request", "validate", "normalise_server_url",
           "DISABLE_STATES", "Config", "ServerConfig", "IntegrationConfig", "load", "parse"]

DISABLE_STATES = {"enabled": 0, "disabled": 1, "auto": 3}
DEFAULT_RETRY_DELAYS_S = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)


def _rules(value: Any) -> RuleSet:
    try:
        return parse_rules(value)
    except RuleError as exc:
        raise KeyProblem(exc.key, exc.message) if exc.key else ValueError(exc.message) from None


# ``rules:`` (top level and per integration): {create|join: {parameter: {operation: value}}}, see lb_core.rules.
Rules = Annotated[RuleSet, PlainValidator(_rules), PlainSerializer(lambda rules: rules.to_doc())]


# --- the models -----------------------------------------------------------------------------------------

class ServerConfig(Model):
    name: Name
    url: Annotated[Url, AfterValidator(normalise_server_url)]  # stored as the base URL ending in /bigbluebutton/
    secret: Required = Field(repr=False)
    checksum: Checksum = "sha256"
    weight: Real(0.01) = 1.0
    max_meetings: Count(1) | None = None
    max_participants: Count(1) | None = None
    state: Literal["enabled", "disabled", "auto"] = "auto"
    simulate: Flag = False

    @cached_property
    def api_url(self) -> str:
        return self.url + "api/"

    @cached_property
    def disable_state(self) -> int:
        return DISABLE_STATES[self.state]


class IntegrationConfig(Model):
    name: Name
    secret: Required = Field(repr=False)
    previous_secret: Text | None = Field(None, repr=False)  # also accepted, for a rotation
    enabled: Flag = True
    can_record: Flag = True
    max_meetings: Count(0) | None = None
    max_participants: Count(0) | None = None  # its meetings' participants, polled plus joins since
    limit_moderators: Flag = True  # false: moderators join past max_participants
    max_duration_minutes: Count(1) | None = None  # a max rule on create's duration
    rules: Rules = EMPTY

    @cached_property
    def secrets(self) -> tuple[str, ...]:
        return tuple(s for s in (self.secret, self.previous_secret) if s)

    @model_validator(mode="after")
    def _one_duration_rule(self) -> IntegrationConfig:
        if self.max_duration_minutes is not None and "duration" in self.rules.create:
            raise KeyProblem("max_duration_minutes", "and rules.create.duration both set duration: keep one")
        return self

    @cached_property
    def own_rules(self) -> RuleSet:
        """Its rules with max_duration_minutes as the max rule on duration it stands for."""
        if self.max_duration_minutes is None:
            return self.rules
        return self.rules.with_rule("create", Rule("duration", "max", self.max_duration_minutes))


class ListenConfig(Model):
    host: Text = "127.0.0.1"
    port: Port = 8090


class StoreConfig(Model):
    """Where the state lives: the embedded TinyDB file (one process) or a Redis shared by several."""

    backend: Literal["tinydb", "redis"] = "tinydb"
    path: Text = "data/lb.json"  # tinydb: relative to the config file's folder
    url: RedisUrl | None = Field(None, repr=False)  # redis: redis://[:password@]host:6379/0, rediss://, unix://
    prefix: Name = "bbb-lb"  # redis: every key starts with it, so several LBs can share one Redis
    timeout_s: Seconds(0.05) | None = None  # redis: per command; default min(2 s, backend.timeout_s)
    max_connections: Count(1) = 64  # redis: per process; a call waits for a free one at most timeout_s

    @field_validator("path")
    @classmethod
    def _absolute(cls, value: str, info: ValidationInfo) -> str:
        return from_base(value, info)

    @model_validator(mode="after")
    def _redis_needs_url(self) -> StoreConfig:
        if self.backend == "redis" and not self.url:
            raise KeyProblem("url", "is required when store.backend is redis")
        return self


class BackendConfig(Model):
    timeout_s: Seconds(0.1) = 10.0
    connect_timeout_s: Seconds(0.1) = 3.0
    max_body_bytes: Count(1024) = 64 * 1024 * 1024


class MonitorConfig(Model):
    interval_s: Seconds(0.05) = 10.0
    timeout_s: Seconds(0.05) = 5.0
    down_after: Count(1) = 2
    up_after: Count(1) = 2
    concurrency: Count(1) = 32


class BalancerConfig(Model):
    meeting_size: Number = 15.0  # participants a new meeting is expected to bring
    warmup_s: Number = 900.0  # how long that expectation lasts before real counts take over
    meeting_cost: Number = 1.0  # load of a meeting itself, beyond its participants
    voice_cost: Number = 0.5
    video_cost: Number = 1.0


class GeoConfig(Model):
    database: Text | None = None
    prefer_nearby: Flag = False
    trusted_proxies: Networks = ()
    nearby_km: Number = 300.0

    @field_validator("database")
    @classmethod
    def _database_exists(cls, value: str | None, info: ValidationInfo) -> str | None:
        if not value:
            return None
        path = from_base(value, info)
        if not os.path.isfile(path):
            raise ValueError(f"no such file: {path}")
        return path

    @model_validator(mode="after")
    def _nearby_needs_database(self) -> GeoConfig:
        if self.prefer_nearby and not self.database:
            raise KeyProblem("prefer_nearby", "needs geo.database")
        return self


class AdminConfig(Model):
    host: Text = "127.0.0.1"
    port: Port | None = None  # the admin listener is off when unset
    token: Annotated[Text, Field(min_length=16)] | None = Field(None, repr=False)
    series_resolution_s: Seconds(0.05) = 10.0  # one point of the dashboard's plots
    series_points: Annotated[Count(2), Field(le=100_000)] = 360  # points kept per series: 360 x 10 s is the last hour

    @model_validator(mode="after")
    def _port_needs_token(self) -> AdminConfig:
        if self.port is not None and not self.token:
            raise KeyProblem("token", "is required when admin.port is set")
        return self


class LimitsConfig(Model):
    """What an anonymous client may cost the LB before its checksum is checked."""

    max_body_bytes: Count(1024) = 64 * 1024  # form bodies of calls that are not uploads
    # calls registered with upload=True (lb_core/handlers); when the file does not say, backend.max_body_bytes
    max_upload_bytes: Count(1024) = 64 * 1024 * 1024
    max_query_bytes: Count(1024) = 64 * 1024
    max_params: Count(16) = 1000
    request_head_timeout_s: Seconds(0.1) = 10.0
    request_body_timeout_s: Seconds(0.1) = 60.0
    idle_timeout_s: Seconds(0.1) = 60.0
    max_connections: Count(1) = 1000

    def body_limit(self, upload: bool) -> int:
        """The largest body a call may carry: uploads get the large limit, every other call the small one."""
        return self.max_upload_bytes if upload else self.max_body_bytes


class CallbacksConfig(Model):
    """Calls to integrations' callback URLs: retries, their own pool and the networks they may reach."""

    retry_delays_s: Annotated[tuple[Seconds(0), ...], Field(min_length=1)] = DEFAULT_RETRY_DELAYS_S
    allowed_networks: Networks = ()  # beyond public addresses, e.g. ["127.0.0.0/8"] for tests
    max_connections: Count(1) = 32
    max_per_host: Count(1) = 4
    timeout_s: Seconds(0.1) = 10.0
    connect_timeout_s: Seconds(0.1) = 3.0
    max_response_bytes: Count(0) = 64 * 1024


class EventsConfig(Model):
    enabled: Flag = True
    retention_days: Number = 90.0  # 0: kept forever


class CacheConfig(Model):
    is_meeting_running_s: Number = 1.0
    get_meetings_s: Number = 2.0


class RecordingServerConfig(Model):
    """The Mconf-LB recording server each BBB server is told about (``meta_mconflb-rec-server*`` on creates)."""

    id: Text
    url: Url
    key: Text = Field(repr=False)


class RecordingsConfig(Model):
    """The recordings index (always on: synced from the servers) and, with ``storage``, the recording server."""

    storage: Text | None = None  # where imported recordings live (local or NFS); uploads are off without it
    public_url: Annotated[Url, AfterValidator(lambda url: url.rstrip("/"))] | None = None  # default: <public_url>/recordings
    server: RecordingServerConfig | None = None
    retention_days: Number = 30.0  # deleted recordings stay listed for state=deleted this long; 0: forever
    max_upload_bytes: Count(1024) = 4 * 1024 ** 3  # an archive, packed and unpacked
    # Bytes/s all uploads together are read at (0: as fast as they come): each byte costs the event loop
    # a socket read and a spool write, so an unthrottled upload on a fast link slows every API call.
    upload_rate_limit: Count(0) = 64 * 1024 * 1024
    sync_interval_s: Seconds(0.05) = 30.0
    spool: Text | None = None  # where uploads are written while they arrive (default: <storage>/.spool)

    @field_validator("storage", "spool")
    @classmethod
    def _absolute(cls, value: str | None, info: ValidationInfo) -> str | None:
        return from_base(value, info) if value else None


class Config(Model):
    """The whole file. Flat names (``max_body_bytes``, ``store_path``...) are the ones the code reads."""

    listen: ListenConfig = ListenConfig()
    public_url: Annotated[Url, AfterValidator(lambda url: url.rstrip("/"))] | None = Field(None, validate_default=True)
    secret: Required = Field(repr=False)  # the "default" integration's secret
    previous_secret: Text | None = Field(None, repr=False)
    checksum_algorithms: Annotated[tuple[Text, ...], BeforeValidator(one_or_many), Field(min_length=1)] = tuple(ALGORITHMS)
    integrations: tuple[IntegrationConfig, ...] = Field((), validate_default=True)  # the default integration comes first, then these
    servers: tuple[ServerConfig, ...] = ()
    store: StoreConfig = Field(default_factory=dict, validate_default=True)  # type: ignore[arg-type]
    backend: BackendConfig = BackendConfig()
    monitor: MonitorConfig = MonitorConfig()
    balancer: BalancerConfig = BalancerConfig()
    geo: GeoConfig = GeoConfig()
    admin: AdminConfig = AdminConfig()
    limits: LimitsConfig = Field(default_factory=dict, validate_default=True)  # type: ignore[arg-type]
    callbacks: CallbacksConfig = CallbacksConfig()
    events: EventsConfig = EventsConfig()
    cache: CacheConfig = CacheConfig()
    rules: Rules = EMPTY  # for every integration; an integration's rule for a parameter replaces these
    recordings: RecordingsConfig = Field(default_factory=dict, validate_default=True)  # type: ignore[arg-type]
    instance_id: Text | None = None  # sent as meta_mconflb-guid (default: generated once, stored)
    workers: Count(1) = 1  # processes serving listen.port (SO_REUSEPORT); above 1 needs store.backend: redis
    log_level: Literal["debug", "info", "warn", "error"] = "info"

    _source: str = PrivateAttr("config.yaml")
    _web_port: int | None = PrivateAttr(None)

    @field_validator("public_url")
    @classmethod
    def _public_url_from_listen(cls, value: str | None, info: ValidationInfo) -> str | None:
        listen = info.data.get("listen")
        if value is None and listen is not None:
            return f"http://{listen.host}:{listen.port}"
        return value

    @field_validator("checksum_algorithms")
    @classmethod
    def _known_algorithms(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for algorithm in value:
            if algorithm not in ALGORITHMS:
                raise ValueError(f"unknown algorithm {algorithm!r}")
        return value

    @field_validator("integrations")
    @classmethod
    def _default_first(cls, value: tuple[IntegrationConfig, ...], info: ValidationInfo) -> Any:
        if "secret" not in info.data:
            return value  # the missing secret is reported on its own
        default = IntegrationConfig(name="default", secret=info.data["secret"],
                                    previous_secret=info.data.get("previous_secret"))
        names: set[str] = set()
        for index, integration in enumerate((default, *value)):
            if integration.name in names:
                raise AtKey(("integrations", index - 1, "name"), f"duplicate integration name {integration.name!r}")
            names.add(integration.name)
        owners: dict[str, str] = {}
        for integration in (default, *value):
            for secret in integration.secrets:
                if owners.setdefault(secret, integration.name) != integration.name:
                    raise ValueError(f"integrations {owners[secret]!r} and {integration.name!r} share a secret")
        return (default, *value)

    @field_validator("limits")
    @classmethod
    def _upload_limit(cls, value: LimitsConfig, info: ValidationInfo) -> LimitsConfig:
        backend = info.data.get("backend")
        if "max_upload_bytes" not in value.model_fields_set and backend is not None:
            value = value.model_copy(update={"max_upload_bytes": backend.max_body_bytes})
        if value.max_body_bytes > value.max_upload_bytes:
            raise KeyProblem("max_body_bytes", "must not exceed max_upload_bytes")
        return value

    @field_validator("servers")
    @classmethod
    def _unique_servers(cls, value: tuple[ServerConfig, ...]) -> tuple[ServerConfig, ...]:
        names: set[str] = set()
        for index, server in enumerate(value):
            if server.name in names:
                raise AtKey(("servers", index, "name"), f"duplicate server name {server.name!r}")
            names.add(server.name)
        return value

    @property
    def path(self) -> str:
        """The file this configuration was read from."""
        return self._source

    @property
    def web_port(self) -> int | None:
        """mitmweb's port under ``run --web``: set by the runner (``with_web_port``), not by the file."""
        return self._web_port

    def with_web_port(self, port: int | None) -> Config:
        config = self._changed({})
        config._web_port = port
        return config

    def with_listen_port(self, port: int) -> Config:
        """The config once ``listen.port: 0`` is bound: a ``public_url`` left to its default carries the port."""
        update: dict[str, Any] = {"listen": self.listen.model_copy(update={"port": port})}
        if self.public_url == f"http://{self.listen.host}:{self.listen.port}":
            update["public_url"] = f"http://{self.listen.host}:{port}"
        return self._changed(update)

    def for_worker(self, listen_port: int | None, admin_port: int | None) -> Config:
        """The config of one ``--workers`` process: the listen port the supervisor holds, its own admin port."""
        config = self.with_listen_port(listen_port) if listen_port is not None else self
        if admin_port is not None and config.admin.port is not None:
            config = config._changed({"admin": config.admin.model_copy(update={"port": admin_port})})
        return config

    def _changed(self, update: dict[str, Any]) -> Config:
        """A copy with some fields replaced (already valid values), its cached flat names recomputed."""
        config = self.model_copy(update=update)
        for name, attribute in type(self).__dict__.items():
            if isinstance(attribute, cached_property):
                config.__dict__.pop(name, None)
        return config

    @property
    def default_integration(self) -> IntegrationConfig:
        return self.integrations[0]

    # The names the rest of lb_core reads; cached, so a hot-path read is one dictionary lookup.
    @cached_property
    def listen_host(self) -> str:
        return self.listen.host

    @cached_property
    def listen_port(self) -> int:
        return self.listen.port

    @cached_property
    def store_path(self) -> str:
        return self.store.path

    @cached_property
    def store_timeout_s(self) -> float:
        """How long one call to a shared store may take: its own timeout_s, else 2 s within backend.timeout_s."""
        if self.store.timeout_s is not None:
            return self.store.timeout_s
        return min(2.0, self.backend.timeout_s)

    @cached_property
    def backend_timeout_s(self) -> float:
        return self.backend.timeout_s

    @cached_property
    def backend_connect_timeout_s(self) -> float:
        return self.backend.connect_timeout_s

    @cached_property
    def max_body_bytes(self) -> int:
        return self.backend.max_body_bytes

    @cached_property
    def callback_retry_delays_s(self) -> tuple[float, ...]:
        return self.callbacks.retry_delays_s

    @cached_property
    def record_events(self) -> bool:
        return self.events.enabled

    @cached_property
    def events_retention_days(self) -> float:
        return self.events.retention_days

    @cached_property
    def recordings_public_url(self) -> str:
        """Where imported recordings are played back: ``recordings.public_url``, else under the LB's own URL."""
        return self.recordings.public_url or f"{self.public_url}/recordings"

    @cached_property
    def running_cache_s(self) -> float:
        return self.cache.is_meeting_running_s

    @cached_property
    def get_meetings_cache_s(self) -> float:
        return self.cache.get_meetings_s


def parse(data: Any, source: str = "config.yaml", base_dir: Path | None = None) -> Config:
    """Validate a parsed YAML document; relative paths are taken from ``base_dir``."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: (top level): must be a mapping of settings")
    data = resolve_env(data, source)
    config = validate(Config, data, prefix=f"{source}: ", context={"base_dir": base_dir or Path.cwd()})
    config._source = source
    return config


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
