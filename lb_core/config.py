"""The configuration, declared once as typed models: the YAML file and the admin API's JSON bodies.

Why pydantic (v2) rather than msgspec: the configuration is validated once at start and on the rare
admin call, so decoding speed does not matter; what matters is saying exactly which key is wrong.
pydantic gives every error its location, lets a rule live beside its field (bounds, patterns,
cross-field checks in validators, a value read from the validation context for relative paths) and
gives frozen models whose fields are plain instance attributes, so ``config.max_body_bytes`` on the hot
path costs a dictionary lookup. msgspec stops at the first error with a ``$.path`` string and has no
validators, so the checks beyond types would be written by hand again.

Every error names the file and the key (``config.yaml: servers[1].url: ...``); every key not declared
is refused. Any string value written as ``${NAME}`` is read from the environment (an unset variable is
an error naming the key), so secrets need not live in the file; the admin API refuses such values.
"""

from __future__ import annotations

import ipaddress
import os
import re
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import urlsplit

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    Strict,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from lb_core.checksum import ALGORITHMS

_ENV_REF = re.compile(r"^\$\{([A-Za-z_][A-Za-z0-9_]*)\}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
DISABLE_STATES = {"enabled": 0, "disabled": 1, "auto": 3}
DEFAULT_RETRY_DELAYS_S = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)


class ConfigError(Exception):
    """A configuration problem, already phrased for the operator (one line per problem)."""


class KeyProblem(ValueError):
    """Raised by a validator about one key of its model (cross-field checks), so the error names that key."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key
        self.message = message


# --- value types: the rules of one value, written once --------------------------------------------------

def _text(value: Any) -> Any:
    """YAML reads ``secret: 1234`` as a number: a number where text is expected is taken as its text."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return value


def _not_empty(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return value


def _name(value: str) -> str:
    if not _NAME.match(value):
        raise ValueError("must be 1-64 letters, digits, '.', '_', ':' or '-'")
    return value


def check_url(url: str) -> str:
    """An absolute http(s) URL with a host and, if any, a valid port."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"must be an http(s) URL, got {url!r}")
    try:
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError:
        raise ValueError(f"has an invalid port: {url!r}") from None
    return url


def normalise_server_url(url: str) -> str:
    """Accept ``https://host``, ``https://host/bigbluebutton/`` or ``.../bigbluebutton/api``."""
    url = url.strip().rstrip("/")
    for suffix in ("/api", "/bigbluebutton"):
        if url.endswith(suffix):
            url = url[: -len(suffix)]
    return url + "/bigbluebutton/"


def _one_or_many(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


def _networks(value: tuple[str, ...]) -> tuple[str, ...]:
    for network in value:
        try:
            ipaddress.ip_network(network, strict=False)
        except ValueError:
            raise ValueError(f"{network!r} is not an IP network") from None
    return value


Text = Annotated[str, BeforeValidator(_text), Strict()]
Required = Annotated[Text, AfterValidator(_not_empty)]
Name = Annotated[Text, AfterValidator(_name)]
Url = Annotated[Text, AfterValidator(check_url)]
Networks = Annotated[tuple[Text, ...], BeforeValidator(_one_or_many), AfterValidator(_networks)]  # CIDR
Flag = Annotated[bool, Strict()]
Port = Annotated[int, Strict(), Field(ge=0, le=65535)]
Checksum = Literal["sha1", "sha256", "sha384", "sha512"]
assert set(Checksum.__args__) == set(ALGORITHMS)  # type: ignore[attr-defined]


def Seconds(minimum: float = 0) -> Any:  # noqa: N802 - reads as a type in the declarations below
    return Annotated[float, Strict(), Field(ge=minimum)]


def Count(minimum: int = 0) -> Any:  # noqa: N802
    return Annotated[int, Strict(), Field(ge=minimum)]


Number = Annotated[float, Strict(), Field(ge=0)]


class Model(BaseModel):
    """Every configuration model: unknown keys refused, frozen, ``key: null`` meaning "the default"."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    @model_validator(mode="before")
    @classmethod
    def _null_is_default(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return {key: value for key, value in data.items() if value is not None}
        return data


# --- the models -----------------------------------------------------------------------------------------

class ServerConfig(Model):
    name: Name
    url: Annotated[Url, AfterValidator(normalise_server_url)]  # stored as the base URL ending in /bigbluebutton/
    secret: Required = Field(repr=False)
    checksum: Checksum = "sha256"
    weight: Annotated[float, Strict(), Field(ge=0.01)] = 1.0
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

    @cached_property
    def secrets(self) -> tuple[str, ...]:
        return tuple(s for s in (self.secret, self.previous_secret) if s)


class ListenConfig(Model):
    host: Text = "127.0.0.1"
    port: Port = 8090


class StoreConfig(Model):
    path: Text = "data/lb.json"  # relative to the config file's folder

    @field_validator("path")
    @classmethod
    def _absolute(cls, value: str, info: ValidationInfo) -> str:
        return _from_base(value, info)


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
        path = _from_base(value, info)
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

    @model_validator(mode="after")
    def _port_needs_token(self) -> AdminConfig:
        if self.port is not None and not self.token:
            raise KeyProblem("token", "is required when admin.port is set")
        return self


class CallbacksConfig(Model):
    retry_delays_s: Annotated[tuple[Seconds(0), ...], Field(min_length=1)] = DEFAULT_RETRY_DELAYS_S


class EventsConfig(Model):
    enabled: Flag = True


class CacheConfig(Model):
    is_meeting_running_s: Number = 1.0
    get_meetings_s: Number = 2.0


class Config(Model):
    """The whole file. Flat names (``max_body_bytes``, ``store_path``...) are the ones the code reads."""

    listen: ListenConfig = ListenConfig()
    public_url: Annotated[Url, AfterValidator(lambda url: url.rstrip("/"))] | None = Field(None, validate_default=True)
    secret: Required = Field(repr=False)  # the "default" integration's secret
    previous_secret: Text | None = Field(None, repr=False)
    checksum_algorithms: Annotated[tuple[Text, ...], BeforeValidator(_one_or_many), Field(min_length=1)] = tuple(ALGORITHMS)
    integrations: tuple[IntegrationConfig, ...] = Field((), validate_default=True)  # the default integration comes first, then these
    servers: tuple[ServerConfig, ...] = ()
    store: StoreConfig = Field(default_factory=dict, validate_default=True)  # type: ignore[arg-type]
    backend: BackendConfig = BackendConfig()
    monitor: MonitorConfig = MonitorConfig()
    balancer: BalancerConfig = BalancerConfig()
    geo: GeoConfig = GeoConfig()
    admin: AdminConfig = AdminConfig()
    callbacks: CallbacksConfig = CallbacksConfig()
    events: EventsConfig = EventsConfig()
    cache: CacheConfig = CacheConfig()
    instance_id: Text | None = None  # sent as meta_mconflb-guid (default: generated once, stored)
    log_level: Literal["debug", "info", "warn", "error"] = "info"

    _source: str = PrivateAttr("config.yaml")

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
                raise _AtKey(("integrations", index - 1, "name"), f"duplicate integration name {integration.name!r}")
            names.add(integration.name)
        owners: dict[str, str] = {}
        for integration in (default, *value):
            for secret in integration.secrets:
                if owners.setdefault(secret, integration.name) != integration.name:
                    raise ValueError(f"integrations {owners[secret]!r} and {integration.name!r} share a secret")
        return (default, *value)

    @field_validator("servers")
    @classmethod
    def _unique_servers(cls, value: tuple[ServerConfig, ...]) -> tuple[ServerConfig, ...]:
        names: set[str] = set()
        for index, server in enumerate(value):
            if server.name in names:
                raise _AtKey(("servers", index, "name"), f"duplicate server name {server.name!r}")
            names.add(server.name)
        return value

    @property
    def path(self) -> str:
        """The file this configuration was read from."""
        return self._source

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
    def running_cache_s(self) -> float:
        return self.cache.is_meeting_running_s

    @cached_property
    def get_meetings_cache_s(self) -> float:
        return self.cache.get_meetings_s


# --- reading: YAML, the environment, and errors that name the key -------------------------------------

class _AtKey(Exception):
    """A cross-item problem found by a validator of the whole list, naming the item's key exactly.

    Not a ValueError, so pydantic lets it through instead of reporting it at the list itself.
    """

    def __init__(self, loc: tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.loc = loc
        self.message = message


def _from_base(value: str, info: ValidationInfo) -> str:
    """A relative path read from the config file is taken from the file's folder."""
    base = (info.context or {}).get("base_dir")
    if base is None or os.path.isabs(value):
        return value
    return str((Path(base) / value).resolve())


def _where(loc: tuple[str | int, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


_MESSAGES = {
    "missing": "is required",
    "extra_forbidden": "unknown key",
    "string_type": "must be a string",
    "bool_type": "must be true or false",
    "int_type": "must be a whole number",
    "float_type": "must be a number",
    "model_type": "must be a mapping",
    "model_attributes_type": "must be a mapping",
    "dict_type": "must be a mapping",
    "tuple_type": "must be a list",
    "list_type": "must be a list",
}


def _number(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _problem(error: Any) -> tuple[tuple[str | int, ...], str]:
    """One pydantic error as (key path, message phrased like the rest of bbb-lb)."""
    loc = tuple(error["loc"])
    kind = error["type"]
    ctx = error.get("ctx") or {}
    if kind == "value_error":
        cause = ctx.get("error")
        if isinstance(cause, KeyProblem):
            return (*loc, cause.key), cause.message
        return loc, str(cause)
    if kind == "int_type" and isinstance(error.get("input"), float | str):
        return loc, "must be a whole number" if isinstance(error["input"], float) else "must be a number"
    if kind in _MESSAGES:
        return loc, _MESSAGES[kind]
    if kind in ("greater_than_equal", "greater_than"):
        return loc, f"must be at least {_number(ctx.get('ge', ctx.get('gt')))}"
    if kind in ("less_than_equal", "less_than"):
        return loc, f"must be at most {_number(ctx.get('le', ctx.get('lt')))}"
    if kind == "literal_error":
        return loc, f"must be {str(ctx.get('expected', '')).replace(chr(39), '')}"
    if kind in ("too_short", "string_too_short"):
        minimum = ctx.get("min_length", 1)
        if isinstance(error.get("input"), str):
            return loc, f"must be at least {minimum} characters"
        return loc, "must not be empty" if minimum == 1 else f"must have at least {minimum} items"
    return loc, str(error.get("msg", kind))


M = TypeVar("M", bound=Model)


def validate(model: type[M], data: Any, *, prefix: str, context: dict[str, Any] | None = None) -> M:
    """``model`` from ``data``, or ConfigError with one ``prefix key: message`` line per problem."""
    try:
        return model.model_validate(data, context=context)
    except _AtKey as exc:
        raise ConfigError(f"{prefix}{_where(exc.loc)}: {exc.message}") from None
    except ValidationError as exc:
        lines = []
        for error in exc.errors(include_url=False):
            loc, message = _problem(error)
            lines.append(f"{prefix}{_where(loc)}: {message}")
        raise ConfigError("\n".join(dict.fromkeys(lines))) from None


def _resolve_env(data: Any, source: str, loc: tuple[str | int, ...] = ()) -> Any:
    """Every ``${NAME}`` string replaced by the environment variable; an unset one names its key."""
    if isinstance(data, dict):
        return {key: _resolve_env(value, source, (*loc, key)) for key, value in data.items()}
    if isinstance(data, list):
        return [_resolve_env(value, source, (*loc, index)) for index, value in enumerate(data)]
    if isinstance(data, str) and (match := _ENV_REF.match(data.strip())):
        value = os.environ.get(match.group(1))
        if value is None:
            raise ConfigError(f"{source}: {_where(loc)}: environment variable {match.group(1)} is not set")
        return value
    return data


def _refuse_env(data: Any, loc: tuple[str | int, ...] = ()) -> None:
    """Through the admin API a ``${NAME}`` would let a caller read the LB's environment."""
    if isinstance(data, dict):
        for key, value in data.items():
            _refuse_env(value, (*loc, key))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            _refuse_env(value, (*loc, index))
    elif isinstance(data, str) and data.strip().startswith("${"):
        raise ConfigError(f"{_where(loc)}: ${{...}} environment references are only read from the config file")


def parse_request(model: type[M], data: Any, defaults: dict[str, Any] | None = None) -> M:
    """An admin API body as ``model``; errors name the field (``url: must be an http(s) URL, got ...``).

    ``defaults`` are the current values a partial body changes (``null`` in the body clears one).
    """
    if not isinstance(data, dict):
        raise ConfigError("the request body must be a JSON object")
    _refuse_env(data)
    return validate(model, {**(defaults or {}), **data}, prefix="")


def parse(data: Any, source: str = "config.yaml", base_dir: Path | None = None) -> Config:
    """Validate a parsed YAML document; relative paths are taken from ``base_dir``."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: (top level): must be a mapping of settings")
    data = _resolve_env(data, source)
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
