"""The building blocks of the configuration models: value types, the base model, and errors that name the key.

Kept apart from ``lb_core.config`` (the declaration of every key) so that file stays the one place to
read what bbb-lb accepts; the machinery that phrases pydantic's errors as ``file: key: message`` and
reads ``${NAME}`` from the environment lives here.
"""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    ValidationError,
    ValidationInfo,
    model_validator,
)

from lb_core.checksum import ALGORITHMS

_ENV_REF = re.compile(r"^\$\{([A-Za-z_][A-Za-z0-9_]*)\}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")


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


def redacted_url(url: str) -> str:
    """``url`` fit for a log line or an error message: a password (userinfo or query) becomes ``***``."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, host = netloc.rsplit("@", 1)
            user, has_password, _ = userinfo.partition(":")
            # user:password@ keeps the user; a lone userinfo may be a password written without its colon
            netloc = f"{user}:***@{host}" if has_password else f"***@{host}"
        query = parts.query
        if query:
            pairs = [(k, "***" if k.lower() == "password" else v) for k, v in parse_qsl(query, keep_blank_values=True)]
            query = urlencode(pairs, safe="*/")
        if (netloc, query) == (parts.netloc, parts.query):
            return url  # nothing to hide (urlunsplit would also shorten unix:///path)
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    except ValueError:
        return "(an unreadable URL)"


REDIS_SCHEMES = ("redis", "rediss", "unix")


def check_redis_url(url: str) -> str:
    """``redis://[[user]:password@]host[:port][/db]``, ``rediss://`` (TLS) or ``unix:///path``; errors hide the password."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError:
        raise ValueError(f"is not a valid URL: {redacted_url(url)}") from None
    if parts.scheme not in REDIS_SCHEMES:
        raise ValueError(f"must be a redis://, rediss:// or unix:// URL, got {redacted_url(url)}")
    if parts.scheme != "unix" and not parts.hostname:
        raise ValueError(f"has no host: {redacted_url(url)}")
    if parts.scheme == "unix" and not parts.path:
        raise ValueError(f"has no socket path: {redacted_url(url)}")
    database = parts.path.strip("/") if parts.scheme != "unix" else ""
    if database and not database.isdigit():
        raise ValueError(f"the database after the host must be a number, got {redacted_url(url)}")
    return url


def normalise_server_url(url: str) -> str:
    """Accept ``https://host``, ``https://host/bigbluebutton/`` or ``.../bigbluebutton/api``."""
    url = url.strip().rstrip("/")
    for suffix in ("/api", "/bigbluebutton"):
        if url.endswith(suffix):
            url = url[: -len(suffix)]
    return url + "/bigbluebutton/"


def one_or_many(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


def _networks(value: tuple[str, ...]) -> tuple[str, ...]:
    for network in value:
        try:
            ipaddress.ip_network(network, strict=False)
        except ValueError:
            raise ValueError(f"{network!r} is not an IP network (CIDR)") from None
    return value


Text = Annotated[str, BeforeValidator(_text), Strict()]
Required = Annotated[Text, AfterValidator(_not_empty)]
Name = Annotated[Text, AfterValidator(_name)]
Url = Annotated[Text, AfterValidator(check_url)]
RedisUrl = Annotated[Text, AfterValidator(check_redis_url)]
Networks = Annotated[tuple[Text, ...], BeforeValidator(one_or_many), AfterValidator(_networks)]  # CIDR
Flag = Annotated[bool, Strict()]
Port = Annotated[int, Strict(), Field(ge=0, le=65535)]
Checksum = Literal["sha1", "sha256", "sha384", "sha512"]
assert set(Checksum.__args__) == set(ALGORITHMS)  # type: ignore[attr-defined]


def Real(minimum: float = 0) -> Any:  # noqa: N802 - reads as a type in the declarations
    """A number (whole or not, never true/false or text) of at least ``minimum``."""
    return Annotated[float, Strict(), Field(ge=minimum)]


Seconds = Real


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



# --- validating: errors that name the key, and the environment ----------------------------------------

class AtKey(Exception):
    """A cross-item problem found by a validator of the whole list, naming the item's key exactly.

    Not a ValueError, so pydantic lets it through instead of reporting it at the list itself.
    """

    def __init__(self, loc: tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.loc = loc
        self.message = message


def from_base(value: str, info: ValidationInfo) -> str:
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
    except AtKey as exc:
        raise ConfigError(f"{prefix}{_where(exc.loc)}: {exc.message}") from None
    except ValidationError as exc:
        lines = []
        for error in exc.errors(include_url=False):
            loc, message = _problem(error)
            lines.append(f"{prefix}{_where(loc)}: {message}")
        raise ConfigError("\n".join(dict.fromkeys(lines))) from None


def resolve_env(data: Any, source: str, loc: tuple[str | int, ...] = ()) -> Any:
    """Every ``${NAME}`` string replaced by the environment variable; an unset one names its key."""
    if isinstance(data, dict):
        return {key: resolve_env(value, source, (*loc, key)) for key, value in data.items()}
    if isinstance(data, list):
        return [resolve_env(value, source, (*loc, index)) for index, value in enumerate(data)]
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
