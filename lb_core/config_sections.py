"""The sections of config.yaml, one typed model each: every key, its default and its bounds.

``lb_core.config.Config`` is the whole file and checks what spans sections; ``lb_core.config_types``
holds the value types and the phrasing of errors. The admin API validates its bodies with these same
models (a server it adds is a ``ServerConfig``, an integration an ``IntegrationConfig``).
"""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    Field,
    PlainSerializer,
    PlainValidator,
    ValidationInfo,
    field_validator,
    model_validator,
)

from lb_core.config_types import (
    Checksum,
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
)
from lb_core.rules import EMPTY, Rule, RuleError, RuleSet, parse_rules

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

    @property
    def storage_dir(self) -> Path | None:
        """None: no recording server (uploads refused, nothing stored or played back)."""
        return Path(self.storage) if self.storage else None

    @property
    def spool_dir(self) -> Path | None:
        if self.spool:
            return Path(self.spool)
        return self.storage_dir / ".spool" if self.storage_dir is not None else None
