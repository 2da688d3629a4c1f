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

Three rooms: ``lb_core.config_types`` holds the value types, the base model and the phrasing of errors;
``lb_core.config_sections`` declares each section's keys, defaults and bounds; this file is the whole
file (``Config``): its top-level keys, the checks that span sections, the flat names the code reads,
and reading it from YAML (``load``, ``parse``).

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
from pydantic import AfterValidator, BeforeValidator, Field, PrivateAttr, ValidationInfo, field_validator

from lb_core.checksum import ALGORITHMS
from lb_core.config_sections import (
    AdminConfig,
    BackendConfig,
    BalancerConfig,
    CacheConfig,
    CallbacksConfig,
    EventsConfig,
    GeoConfig,
    IntegrationConfig,
    LimitsConfig,
    ListenConfig,
    MonitorConfig,
    RecordingsConfig,
    Rules,
    ServerConfig,
    StoreConfig,
)
from lb_core.config_types import (
    AtKey,
    ConfigError,
    Count,
    KeyProblem,
    Model,
    Required,
    Text,
    Url,
    one_or_many,
    resolve_env,
    validate,
)
from lb_core.rules import EMPTY

__all__ = ["ConfigError", "Config", "load", "parse"]


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
